"""The dataset checker CLI: one plain line per problem and exit 1; a summary and exit 0 on a good folder."""
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest

from conftest import require_extra
from dataloaders.datasets import LA_SUBDIR
from utils.cli import run_cli

REPO = Path(__file__).resolve().parents[1]


def run_check(*args):
    proc = subprocess.run([sys.executable, '-m', 'importers.check', *map(str, args)], cwd=REPO,
                          capture_output=True, text=True, timeout=120)
    return proc.returncode, (proc.stdout + proc.stderr).strip().splitlines()


def write_case(folder, case_id, image=None, label=None):
    rng = np.random.default_rng(len(case_id))
    image = rng.standard_normal((8, 8, 8)).astype(np.float32) if image is None else image
    label = (image > 0).astype(np.uint8) if label is None else label
    path = folder / LA_SUBDIR / case_id / 'mri_norm2.h5'
    path.parent.mkdir(parents=True)
    with h5py.File(path, 'w') as f:
        for key, value in (('image', image), ('label', label)):
            if value is not False:
                f.create_dataset(key, data=value)


@pytest.fixture
def good_folder(tmp_path):
    ids = ['good1', 'good2', 'good3']
    for case_id in ids:
        write_case(tmp_path, case_id)
    (tmp_path / 'train.list').write_text('\n'.join(ids) + '\n')
    return tmp_path


def test_good_folder_passes(good_folder):
    code, lines = run_check('--root_path', good_folder, '--num_classes', 2)
    assert code == 0, lines
    assert len(lines) == 1 and lines[0].startswith('3 cases OK')


def test_broken_folder_one_line_per_problem(good_folder):
    write_case(good_folder, 'nolabel', label=False)
    four_d = np.zeros((2, 8, 8, 8), np.float32)
    write_case(good_folder, 'fourd', image=four_d, label=four_d.astype(np.uint8))
    write_case(good_folder, 'three', label=np.full((8, 8, 8), 3, np.uint8))
    ids = ['good1', 'missing', 'nolabel', 'good2', 'fourd', 'three']
    (good_folder / 'train.list').write_text('\n'.join(ids) + '\n')
    code, lines = run_check('--root_path', good_folder, '--num_classes', 2)
    assert code == 1
    assert not any('Traceback' in line for line in lines)
    problems = [line for line in lines if line.startswith('case ')]
    assert len(problems) == 4, lines
    expected = {'missing': 'file not found', 'nolabel': "missing dataset 'label'", 'fourd': '4-D',
                'three': 'label has value 3, outside 0..1'}
    for line, (case_id, words) in zip(problems, expected.items()):
        assert line.startswith(f'case {case_id}: ') and words in line and 'mri_norm2.h5' in line
    assert lines[-1] == f'4 of 6 cases in {good_folder / "train.list"} have problems'


def test_missing_root_and_list_are_one_line(tmp_path, good_folder, capsys):
    # In-process (the subprocess path is covered above): main() returns the exit code.
    from importers.check import main

    def lines_of(*args):
        code = main([str(a) for a in args])
        out = capsys.readouterr()
        return code, (out.out + out.err).strip().splitlines()

    code, lines = lines_of('--root_path', tmp_path / 'nope')
    assert code == 1 and len(lines) == 1 and 'dataset folder not found' in lines[0]
    code, lines = lines_of('--root_path', good_folder, '--split', 'test')
    assert code == 1 and len(lines) == 1 and 'no test.list' in lines[0]
    code, lines = lines_of('--root_path', good_folder, '--list_file', good_folder / 'x.list')
    assert code == 1 and len(lines) == 1 and 'list file not found' in lines[0]
    (good_folder / 'train.list').write_text('good1\n../../etc/passwd\n')
    code, lines = lines_of('--root_path', good_folder)
    assert code == 1 and len(lines) == 1 and 'unsafe case id' in lines[0]
    (good_folder / 'train.list').write_text('good1\ngood2\n')
    code, lines = lines_of('--root_path', good_folder)
    assert code == 0 and lines[0].startswith('2 cases OK')


def test_stats_flag_the_case_scaled_down_4x_and_png_writes_one_picture_per_case(tmp_path, capsys):
    plt_image = require_extra('matplotlib.image')
    from importers.check import main
    base = np.random.default_rng(0).standard_normal((8, 8, 8)).astype(np.float32)
    # scales within 2x of the median case's (1.0) pass; the one 4x smaller is flagged
    scales = {'a1': 1.0, 'a2': 0.7, 'a3': 1.1, 'a4': 1.8, 'quiet': 0.25}
    ids = list(scales)
    for case_id, scale in scales.items():
        write_case(tmp_path, case_id, base * scale, (base > 0).astype(np.uint8))
    (tmp_path / 'train.list').write_text('\n'.join(ids) + '\n')
    code = main(['--root_path', str(tmp_path), '--stats', '--png', str(tmp_path / 'pictures')])
    lines = capsys.readouterr().out.strip().splitlines()
    assert code == 0
    warnings = [line for line in lines if line.startswith('warning:')]
    assert len(warnings) == 1 and warnings[0].startswith('warning: case quiet: ') and '4.0x smaller' in warnings[0]
    table = {line.split()[0]: line.split()[1:] for line in lines[1:len(ids) + 1]}
    assert lines[0].split() == ['case', 'mean', 'std', 'p1', 'p50', 'p99', 'scale'] and list(table) == ids
    assert float(table['quiet'][1]) == pytest.approx(0.25 * float(table['a1'][1]), abs=2e-3)  # std
    pictures = sorted((tmp_path / 'pictures').iterdir())
    assert [p.name for p in pictures] == sorted(f'{i}.png' for i in ids)
    for path in pictures:
        assert plt_image.imread(path).shape == (440, 1200, 4)


def test_png_without_matplotlib_is_one_line(good_folder, monkeypatch, capsys):
    from importers.check import main
    monkeypatch.setitem(sys.modules, 'matplotlib.figure', None)  # as if matplotlib were not installed
    with pytest.raises(SystemExit) as stop:
        run_cli(main, ['--root_path', str(good_folder), '--png', str(good_folder / 'pictures')])
    assert stop.value.code == 'error: --png needs the package matplotlib: pip install matplotlib'
    assert not (good_folder / 'pictures').exists()
