"""utils.config.cpu_cost_warning: a full-size run that --gpu sent to the CPU says how much more work it is than a
run sized for a CPU, and that run's flags; the flags it gives make a run it no longer warns about."""
import math
import shlex
from pathlib import Path

import pytest
import torch

import train
from utils.config import CPU_RUN, cpu_cost_warning

CPU = torch.device('cpu')


def warning_for(*argv, device=CPU):
    return cpu_cost_warning(train.parse_args(list(argv)), train.PRESETS, device)


@pytest.mark.parametrize('argv, patch', [(['--gpu', '0'], (112, 112, 80)),
                                         (['--dataset', 'pancreas', '--gpu', '1'], (96, 96, 96)),
                                         (['--dataset', 'h5', '--root_path', 'data/Heart', '--gpu', '0'], (96, 96, 96))])
def test_a_full_size_preset_on_the_cpu_says_its_work_and_the_cpu_flags_in_two_lines(argv, patch):
    text = warning_for(*argv)
    lines = text.splitlines()
    assert len(lines) == 2 and all(line.startswith('warning: ') for line in lines)
    # 6000 iterations x 4 volumes x patch voxels x 16^2 against the CPU-sized run, independently
    work = 6000 / 800 * math.prod(patch) / (64 * 64 * 32) * (16 / 4) ** 2
    assert f'{work:.0f}x the work of a run sized for a CPU' in lines[0]
    assert f'6000 iterations of {"x".join(map(str, patch))} patches at n_filters 16' in lines[0]
    flags = shlex.split(lines[1].split('add ')[1].split(';')[0])
    sized = train.parse_args(argv + flags)
    assert (sized['patch_size'], sized['n_filters'], sized['max_iterations'], sized['lr_step']) == \
        ((64, 64, 32), 4, 800, 333)
    assert cpu_cost_warning(sized, train.PRESETS, CPU) is None  # following the advice silences it


@pytest.mark.parametrize('argv', [['--gpu', '-1'], ['--gpu', 'cpu'], ['--gpu', '0', '--patch_size', '64,64,32'],
                                  ['--gpu', '0', '--n_filters', '8'], ['--dataset', 'synthetic', '--gpu', '0']])
def test_no_warning_for_the_cpu_asked_for_or_a_run_sized_by_the_user(argv):
    assert warning_for(*argv) is None


def test_no_warning_on_cuda():
    assert warning_for('--gpu', '0', device=torch.device('cuda', 0)) is None


def test_the_cpu_sized_run_is_the_one_docs_results_md_times():
    """docs/results.md's 800-iteration CPU-scale study, which the warning points to, ran these settings."""
    text = (Path(__file__).resolve().parents[1] / 'docs' / 'results.md').read_text()
    section = text.split('## 2026-11-27: LA at CPU scale, 800 iterations')[1].split('\n## ')[0]
    assert f'--iterations {CPU_RUN["max_iterations"]} --n_filters {CPU_RUN["n_filters"]}' in section
    assert f'every {CPU_RUN["lr_step"]})' in ' '.join(section.split())  # lines wrap in the Markdown
    assert 'patch 64x64x32' in text and CPU_RUN['patch_size'] == (64, 64, 32)
