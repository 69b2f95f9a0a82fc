"""The README cannot rot: every command in it parses, and the benchmark scripts run end to end on phantoms.

Long commands (full LA training, the benchmarks) are exercised here as smoke runs or --help; the quick
start runs as written in .ci/run.
"""
import argparse
import csv
import importlib
import json
import math
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import importlib.util
import os

import pytest

import segment
import train
from utils.cli import UsageError

REPO = Path(__file__).resolve().parents[1]
# test.py shares its name with Python's own `test` package: load it from its path.
_spec = importlib.util.spec_from_file_location('test_script', REPO / 'test.py')
test_script = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(test_script)
ENV_THREADS = {'OMP_NUM_THREADS': '1'}


def readme_commands(pages=('README.md',)):
    """Indented command lines of the pages' code blocks (those that start with pip, python or torchrun)."""
    commands = []
    for line in (line for page in pages for line in (REPO / page).read_text().splitlines()):
        text = line.strip()
        if line.startswith('    ') and text.split(' ')[0] in ('pip', 'python', 'torchrun'):
            for part in text.split('&&'):
                commands.append(part.strip())
    return commands


def run(argv, **kw):
    return subprocess.run(argv, cwd=REPO, capture_output=True, text=True, env={**os.environ, **ENV_THREADS}, **kw)


def test_readme_has_the_two_first_screen_commands():
    commands = readme_commands()
    assert 'python train.py --dataset synthetic --gpu -1' in commands
    assert 'python test.py --dataset synthetic --gpu -1' in commands
    assert 'python -m pytest -q tests' in commands
    first_screen = '\n'.join((REPO / 'README.md').read_text().splitlines()[:25])
    for command in ('python train.py --dataset synthetic --gpu -1', 'python -m pytest -q tests'):
        assert command in first_screen, command
    ci = (REPO / '.ci' / 'run').read_text()
    assert 'python -m pytest -q tests' in ci  # CI runs the README's test command


def optional_packages():
    """The optional extras that .ci/run installs (so that their code paths are tested)."""
    line = next(l for l in (REPO / '.ci' / 'run').read_text().splitlines() if 'pip install -q tensorboard' in l)
    return set(line.split('-q', 1)[1].split())


class Parsed(BaseException):
    """Raised in place of returning from ArgumentParser.parse_args: the whole command line parsed, and
    nothing of the script runs after it. A BaseException, so no `except Exception` of a script swallows it."""


real_parse_args = argparse.ArgumentParser.parse_args


class BadCommand(AssertionError):
    """A README command that does not parse as written."""


def check_command(command, monkeypatch):
    """Parse one README command with every argument it names, without running it; raise BadCommand if it
    does not parse.

    train.py, test.py and segment.py go through their own parse_args (flags, presets and their checks). A `python -m X`
    module runs X.main(argv) with argparse's parse_args replaced by one that parses for real and then raises
    Parsed, so a misspelt flag, a missing required one or a bad value ends in argparse's SystemExit instead.
    Every parser runs with allow_abbrev off: a README command spells each flag in full."""
    words = shlex.split(command)
    if words[0] == 'pip':
        if not (words[1:] == ['install', '-r', 'requirements.txt'] or words[1:3] == ['install', 'torch==2.13.0']
                or words[1] == 'install' and set(words[2:]) <= optional_packages()):
            raise BadCommand(f'unexpected pip command: {command}')
        return
    if words[0] == 'torchrun':
        words = ['python'] + words[words.index('train.py'):]
    if words[1] == '-m':
        module, argv = words[2], [w for w in words[3:] if w != '...']
        if module == 'pytest':
            return
        if importlib.util.find_spec(module.split('.')[0]) is None or importlib.util.find_spec(module) is None:
            raise BadCommand(f'module {module} does not exist in this checkout: {command}')
        main = importlib.import_module(module).main

        def parse_then_stop(self, args=None, namespace=None):
            self.allow_abbrev = False
            real_parse_args(self, args, namespace)
            raise Parsed()
        monkeypatch.setattr(argparse.ArgumentParser, 'parse_args', parse_then_stop)
        monkeypatch.setattr(sys, 'argv', [module] + argv)
        try:
            main(argv)
        except Parsed:
            return
        except SystemExit as e:
            raise BadCommand(f'{command}: argparse exit {e.code}') from None
        finally:
            monkeypatch.undo()
        raise BadCommand(f'{module}.main returned without parsing its arguments: {command}')
    script, argv = words[1], [w for w in words[2:] if w != '...']
    parse = {'train.py': train.parse_args, 'test.py': test_script.parse_args,
             'segment.py': segment.parse_args}.get(script)
    if parse is None:
        raise BadCommand(f'{script}: not a script this test knows how to parse: {command}')

    def parse_in_full(self, args=None, namespace=None):
        self.allow_abbrev = False
        return real_parse_args(self, args, namespace)
    monkeypatch.setattr(argparse.ArgumentParser, 'parse_args', parse_in_full)
    try:
        parse(argv)
    except SystemExit as e:
        raise BadCommand(f'{command}: exit {e.code}') from None
    except UsageError as e:
        raise BadCommand(f'{command}: {e}') from None
    finally:
        monkeypatch.undo()


@pytest.mark.parametrize('command', readme_commands(('README.md', 'docs/training.md', 'docs/benchmarks.md',
                                                     'docs/data.md')))
def test_every_readme_command_parses(command, monkeypatch):
    """Every command of the README, docs/training.md, docs/benchmarks.md and docs/data.md (docs/results.md keeps the commands as
    they were run, with the module names of their date, and is not checked)."""
    check_command(command, monkeypatch)


@pytest.mark.parametrize('command', [
    'python train.py --dataset synthetic --gpu -1 --iteratons 400',
    'python test.py --dataset synthetic --gpu -1 --strid_xy 16',
    'python test.py --checkpoint final.pth --input scan.nii.gz',  # new scans are segment.py's
    'python segment.py --checkpoint final.pth --input scan.nii.gz --seires 1.2',
    'python segment.py --checkpoint final.pth',  # --input is required
    'python -m benchmarks.speed --la_root data/LA --repeatz 2',
    'python -m importers.check --root_path data/LA --stat',  # argparse alone would take it for --stats
    'python -m utils.plot',  # its run folder is a required argument
    'python -m benchmarks.no_such_module --la_root data/LA',
])
def test_the_readme_command_check_rejects_a_misspelt_command(command, monkeypatch):
    """The check above is not vacuous: a misspelt flag, a missing argument or a module that does not exist
    fails it (a check that ran `--help` only, as this test once did, passes all but the last)."""
    with pytest.raises(BadCommand):
        check_command(command, monkeypatch)


def section(text, heading):
    """The Markdown section under `heading` (e.g. '## Training'), up to the next heading of its level or above."""
    start = text.index('\n' + heading + '\n')
    level = heading.split(' ')[0]
    ends = [m.start() for m in re.finditer(r'\n#{1,%d} ' % len(level), text[start + 1:])]
    return text[start:start + 1 + ends[0]] if ends else text[start:]


def test_flag_table_names_every_train_py_flag():
    """docs/training.md's table lists every flag of train.py's parser, and no flag train.py lacks; the README's
    Training section points to it and quotes no flag train.py lacks."""
    table = section((REPO / 'docs' / 'training.md').read_text(), '## Every flag')
    rows = '\n'.join(line for line in table.splitlines() if line.startswith('|'))
    in_table = {flag for code in re.findall(r'`([^`]*)`', rows) for flag in re.findall(r'--[a-z_][a-z0-9_]*', code)}
    flags = {o for a in train.build_parser()._actions for o in a.option_strings if o.startswith('--')} - {'--help'}
    assert not flags - in_table, f'train.py flags missing from the table: {sorted(flags - in_table)}'
    assert not in_table - flags, f'the table names flags train.py does not have: {sorted(in_table - flags)}'
    training = section((REPO / 'README.md').read_text(), '## Training')
    assert 'docs/training.md' in training
    quoted = {flag for code in re.findall(r'`([^`]*)`', training) for flag in re.findall(r'--[a-z_][a-z0-9_]*', code)}
    assert quoted and not quoted - flags, f'README Training quotes flags train.py lacks: {sorted(quoted - flags)}'


def test_readme_evaluation_names_only_flags_that_test_py_and_segment_py_have():
    """Every flag the Evaluation section quotes is one of test.py's; every one of "Segment a new scan", one of
    segment.py's."""
    readme = (REPO / 'README.md').read_text()
    evaluation = readme[readme.index('\n## Evaluation'):readme.index('\n### Segment a new scan')]
    segmenting = section(readme, '### Segment a new scan')
    for text, script, name in ((evaluation, test_script, 'test.py'), (segmenting, segment, 'segment.py')):
        quoted = {flag for code in re.findall(r'`([^`]*)`', text) for flag in re.findall(r'--[a-z_][a-z0-9_]*', code)}
        flags = {o for a in script.build_parser()._actions for o in a.option_strings}
        assert len(quoted) > 8  # the section does quote its flags
        assert not quoted - flags, f'README quotes flags {name} does not have: {sorted(quoted - flags)}'


NUMBER = re.compile(r'(?<![\w.\-])[-+]?\d+(?:\.\d+)?')


def prose_numbers(text):
    """The numbers of a Markdown text, outside code blocks, inline code and link targets, with their sign
    (2026-11-27 gives 2026 only; la_cpu_800 and x0.1 give none)."""
    text = '\n'.join(l for l in text.splitlines() if not l.startswith('    '))
    text = re.sub(r'`[^`]*`', ' ', text)
    text = re.sub(r'\]\([^)]*\)', '] ', text)
    return set(NUMBER.findall(text))


def test_readme_results_numbers_are_in_the_record():
    """Every number of the README's Results in brief appears in docs/results.md, so the brief table cannot
    drift from the record of the study it comes from."""
    readme = (REPO / 'README.md').read_text()
    brief = readme[readme.index('\n## Results in brief'):readme.index('\n## Layout')]
    record = prose_numbers((REPO / 'docs' / 'results.md').read_text())
    numbers = prose_numbers(brief)
    assert len(numbers) > 30  # the table is there
    assert not numbers - record, f'not in docs/results.md: {sorted(numbers - record)}'


def la_study(*argv, timeout=600):
    return run([sys.executable, '-m', 'benchmarks.la_study', *map(str, argv)], timeout=timeout)


def test_la_study_full_protocol_at_tiny_size_reuses_only_runs_of_the_same_settings(phantoms, tmp_path):
    """The GPU protocol's command (--standard --scale 1 --n_filters --patch_size --iterations --stride_xy
    --stride_z --gpu --seeds) end to end at tiny size on the phantoms: the four methods trained and tested,
    then run again. Bugs caught: a finished run retrained, or reused although it was trained under other
    settings (a default changed since, or another --iterations), which would report the old setting's Dice
    under the new name."""
    out = tmp_path / 'runs'
    protocol = ['--la_root', phantoms, '--standard', '--scale', 1, '--n_filters', 2, '--patch_size', '16,16,16',
                '--iterations', 2, '--stride_xy', 16, '--stride_z', 16, '--gpu', -1, '--seeds', 1337]
    tiny = ['--labelnum', 4, '--num_workers', 0, '--jobs', 2, '--cache', tmp_path / 'cache', '--out', out]
    done = la_study(*protocol, *tiny)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    for row in ('| sup |', '| pairsup |', '| mt |', '| dual |', '| dual | pairsup |', '| dual (A) | sup |'):
        assert row in done.stdout, row
    summary = json.loads((out / 'summary.json').read_text())['results']
    assert set(summary) == {'sup', 'pairsup', 'mt', 'dual', 'pairsup (A)', 'dual (A)'}
    assert 0 <= summary['dual']['dice'][0] <= 100
    low, high = summary['dual']['minus_pairsup']['ci95']
    assert low <= summary['dual']['minus_pairsup']['mean'] <= high
    dual = json.loads((out / 'dual_seed1337' / 'config.json').read_text())
    assert (dual['method'], dual['cps_filter'], dual['ramp_unsup'], dual['lambda_urps']) == ('dual', 'global', 0, 1.0)
    pairsup = json.loads((out / 'pairsup_seed1337' / 'config.json').read_text())
    assert [pairsup[k] for k in ('alpha_mc', 'lambda_reg', 'lambda_urps', 'lambda_cps', 'lambda_con')] == [0] * 5
    assert (out / 'dual_seed1337' / 'nets_a' / 'test_cases.csv').is_file()

    # the same command again reuses every run: nothing is retrained or re-evaluated
    final = out / 'dual_seed1337' / 'final.pth'
    stamp = final.stat().st_mtime_ns
    again = la_study(*protocol, *tiny)
    assert again.returncode == 0, again.stderr[-2000:]
    assert final.stat().st_mtime_ns == stamp
    tables = 'LA at scale'  # the first line of the tables; the progress lines before them differ
    assert tables in done.stdout and again.stdout.split(tables, 1)[1] == done.stdout.split(tables, 1)[1]

    # a run trained before a default changed (here the filter) is refused in one line, not reused
    config = out / 'dual_seed1337' / 'config.json'
    config.write_text(json.dumps({**dual, 'cps_filter': 'classwise'}))
    stale = la_study(*protocol, *tiny)
    assert stale.returncode != 0 and stale.stderr.count('\n') == 1, stale.stderr
    assert 'dual_seed1337' in stale.stderr and 'cps_filter "classwise", now "global"' in stale.stderr
    assert final.stat().st_mtime_ns == stamp
    config.write_text(json.dumps(dual))
    # and so is every run for another budget, before anything is trained
    sup_stamp = (out / 'sup_seed1337' / 'final.pth').stat().st_mtime_ns
    longer = la_study(*protocol, *tiny, '--iterations', 3)
    assert longer.returncode != 0 and longer.stderr.count('\n') == 1, longer.stderr
    assert 'sup_seed1337' in longer.stderr and 'max_iterations 2, now 3' in longer.stderr
    assert (out / 'sup_seed1337' / 'final.pth').stat().st_mtime_ns == sup_stamp

    # --versus pairs each run with its twin in another folder: there, dual's Dice is 1 point lower everywhere
    other = tmp_path / 'other'
    shutil.copytree(out, other)
    for csv_path in (other / 'dual_seed1337').rglob('test_cases.csv'):
        rows = list(csv.DictReader(open(csv_path, newline='')))
        for r in rows:
            r['dice'] = str(float(r['dice']) - 0.01)
        with open(csv_path, 'w', newline='') as f:
            writer = csv.DictWriter(f, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)
    pair = ['--methods', 'pairsup,dual']
    done = la_study(*protocol, *tiny, *pair, '--versus', other, '--baselines', 'mt')
    assert done.returncode == 0, done.stderr[-2000:]
    results = json.loads((out / 'summary.json').read_text())['results']
    assert 'minus_pairsup' not in results['dual']  # pairsup is not among --baselines this time
    versus = {m: r['minus_versus'] for m, r in results.items()}
    assert versus['dual']['mean'] == pytest.approx(1.0) and versus['dual (A)']['mean'] == pytest.approx(1.0)
    assert versus['dual']['wins'] == versus['dual']['pairs'] and versus['pairsup']['mean'] == 0
    shutil.rmtree(other / 'pairsup_seed1337')
    missing = la_study(*protocol, *tiny, *pair, '--versus', other)
    assert missing.returncode != 0 and missing.stderr.count('\n') == 1 and 'pairsup_seed1337' in missing.stderr

    # the pseudo-label audit reads the dual run; percentages and volume ratios are in range
    audit = run([sys.executable, '-m', 'benchmarks.pseudo_labels',
                 '--checkpoint', str(out / 'dual_seed1337' / 'final.pth'),
                 '--root_path', str(tmp_path / 'cache' / 'scale1-float16'), '--batches', '2'], timeout=600)
    assert audit.returncode == 0, audit.stderr[-2000:]
    shares = [float(w.rstrip('%,')) for w in audit.stdout.split() if w.replace('.', '').rstrip('%,').isdigit()]
    assert len(shares) >= 10 and all(0 <= v <= 100 for v in shares[:10])
    refused = run([sys.executable, '-m', 'benchmarks.pseudo_labels', '--checkpoint',
                   str(out / 'pairsup_seed1337' / 'config.json'), '--root_path', str(phantoms)])
    assert refused.returncode != 0 and refused.stderr.count('\n') == 1 and 'config.json' in refused.stderr


def printed_ratio_agrees(ratio, numerator, denominator, step):
    """Whether a ratio printed to 3 decimals can be numerator / denominator, both printed to `step` (0.01 for
    two decimals): the interval the roundings leave, not an exact quotient."""
    low = (numerator - step / 2) / (denominator + step / 2) - 5e-4
    high = (numerator + step / 2) / max(denominator - step / 2, 1e-12) + 5e-4
    return low <= ratio <= high


def test_speed_benchmark_ratios_are_the_printed_times_divided(phantoms):
    """Every ratio in the closing table is positive and is the quotient of the times (or rates, peaks) its
    section printed, with the right reference. Bugs caught: a ratio inverted (reference over setting), taken
    against the wrong reference (say amp over channels_last), or a section timing nothing (0 s, inf)."""
    done = run([sys.executable, '-m', 'benchmarks.speed', '--la_root', str(phantoms), '--patch_size', '16,16,16',
                '--n_filters', '2', '--stride_xy', '16', '--stride_z', '16', '--repeats', '1', '--data_batches', '2',
                '--num_workers', '0', '--labelnum', '4'], timeout=600)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    out = done.stdout
    ratios = dict(re.findall(r'^\| ([a-z][^|]*?) \| ([0-9.]+) \| [^|]+ \|$', out, re.M))
    ratios = {k: float(v) for k, v in ratios.items()}
    assert len(ratios) == 12 and all(0 < v < math.inf for v in ratios.values()), ratios

    full, pair = map(float, re.search(r'step: full dual ([0-9.]+) s, supervised-only pair ([0-9.]+) s', out).groups())
    assert printed_ratio_agrees(ratios['step: full dual / supervised-only pair'], full, pair, 1e-3)
    windows, ours, naive, released, forward = map(float, re.search(
        r'with (\d+) windows .* test_single_case ([0-9.]+) s, naive no_grad ([0-9.]+) s, released ([0-9.]+) s, '
        r'one forward ([0-9.]+) s', out).groups())
    assert printed_ratio_agrees(ratios['inference: test_single_case / naive no_grad'], ours, naive, 1e-2)
    assert printed_ratio_agrees(ratios['inference: test_single_case / released loop'], ours, released, 1e-2)
    assert printed_ratio_agrees(ratios['inference: test_single_case / (windows x forward)'], ours,
                                windows * forward, windows * 1e-3 + 1e-2)
    delivered, consumed = map(float, re.search(r'data: .* ([0-9.]+) samples/s, a step consumes ([0-9.]+)',
                                               out).groups())
    assert printed_ratio_agrees(ratios['data: loader samples/s / step samples/s'], delivered, consumed, 0.1)
    with_con, without = map(float, re.search(r'memory: with contrastive (\d+), without contrastive (\d+)',
                                             out).groups())
    assert printed_ratio_agrees(ratios['memory: with / without contrastive'], with_con, without, 1)

    # the side-by-side table: each setting's ratio is its time over float32's, and the closing table repeats it
    table = {m[0]: [float(v) for v in m[1:]] for m in re.findall(
        r'^\| (float32|amp|channels_last|amp \+ channels_last) \| ([0-9.]+) \| ([0-9.]+) \| ([0-9.]+) \| '
        r'([0-9.]+) \| ([0-9.]+) \|$', out, re.M)}
    assert list(table) == ['float32', 'amp', 'channels_last', 'amp + channels_last']
    assert table['float32'][1] == table['float32'][3] == 1 and table['float32'][4] == 1  # labels equal to its own
    for name, (step_s, step_ratio, infer_s, infer_ratio, agree) in table.items():
        assert printed_ratio_agrees(step_ratio, step_s, table['float32'][0], 1e-3), name
        assert printed_ratio_agrees(infer_ratio, infer_s, table['float32'][2], 1e-2), name
        assert 0.9 < agree <= 1, name  # bfloat16 changes a few labels of untrained networks, not most
        if name != 'float32':
            assert ratios[f'precision: dual step, {name} / float32'] == step_ratio
            assert ratios[f'precision: inference, {name} / float32'] == infer_ratio


def user_facing_files():
    """Every text file a user of a clone reads: the README, docs, scripts and the code folders (not tests/,
    .ci/ or what runs leave behind)."""
    skip = {'tests', '.ci', '.git', 'data', 'model', 'cache', '__pycache__', '.pytest_cache', '.venv'}
    for path in sorted(REPO.rglob('*')):
        parts = set(path.relative_to(REPO).parts)
        if path.is_file() and path.suffix in ('.py', '.md', '.txt', '.cff') and not parts & skip:
            yield path


def test_user_facing_files_point_only_at_what_the_repository_holds():
    for path in user_facing_files():
        text = path.read_text()
        for absent in ('../shared', 'METHOD.md'):
            assert absent not in text, f'{path.relative_to(REPO)} names {absent}'
        if path.suffix == '.md':  # relative links resolve to files of the repository
            for target in re.findall(r'\]\(([^)#\s]+)(?:#[^)]*)?\)', text):
                if '://' not in target:
                    assert (path.parent / target).exists(), f'{path.relative_to(REPO)} links to {target}'


def test_benchmarks_run_as_modules_without_path_edits():
    for path in sorted((REPO / 'benchmarks').glob('*.py')):
        assert 'sys.path' not in path.read_text(), path.name
        if path.stem not in ('__init__', 'lineage', 'common'):  # modules the scripts import
            done = run([sys.executable, '-m', f'benchmarks.{path.stem}', '--help'])
            assert done.returncode == 0 and 'usage' in done.stdout, (path.name, done.stderr[-1000:])


def test_gpu_check_quick_runs_every_step_on_the_cpu(tmp_path):
    """Every step at tiny size on the CPU. The inference check compares test_single_case with the lineage's
    per-window loop, so a sliding window that goes wrong on the CPU too (say one that averages network A only)
    fails it here, not only on a GPU."""
    out = tmp_path / 'gpu_check.json'
    done = run([sys.executable, '-m', 'benchmarks.gpu_check', '--quick', '--gpu', '-1', '--out', str(out)], timeout=600)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    result = json.loads(out.read_text())
    assert result['ok'] and result['quick'] and result['table'] in done.stdout
    assert result['tests']['ok'] and result['tests']['failed'] == 0  # pytest -m cuda ran (and skipped here)
    assert result['tests']['skipped'] + result['tests']['passed'] > 0
    train_rows = result['train']
    assert list(train_rows) == ['float32', 'float32 benchmark', 'tf32', 'amp', 'channels_last',
                                'amp + channels_last', 'mt', 'sup', 'pair-sup']
    # the first row is train.py's default command; every method is timed
    assert (train_rows['float32']['deterministic'], train_rows['float32']['tf32']) == (1, 0)
    assert train_rows['tf32']['tf32'] == 1 and train_rows['float32 benchmark']['deterministic'] == 0
    assert [train_rows[n]['method'] for n in ('float32', 'mt', 'sup')] == ['dual', 'mt', 'sup']
    assert {'consistency', 'sup'} <= set(train_rows['mt']['last_terms'])
    for row in train_rows.values():
        assert row['finite'] and row['seconds_per_iteration'] > 0 and row['projected_hours'] > 0
        assert all(math.isfinite(v) for v in row['last_terms'].values())
    for name in ('float32', 'amp', 'amp + channels_last'):
        assert train_rows[name]['contrastive_steps'] > 0, name  # L_con was computed, not skipped
    resume = result['resume']  # train.py and test.py as processes: the resume and the label maps agree
    assert resume['ok'] and resume['repeat_equal'] and resume['resume_equal'] and resume['test_cases'] == 2
    assert resume['test_agreement_with_cpu'] == 1.0
    assert result['overhead_ratio'] > 0
    rows = result['inference']['rows']
    assert set(rows) == {'float32', 'amp + channels_last', 'cpu float32'}
    assert rows['float32']['agreement_with_cpu'] >= 0.999 and rows['amp + channels_last']['agreement_with_cpu'] > 0.9


def test_gpu_check_without_a_gpu_says_so_in_one_line():
    done = run([sys.executable, '-m', 'benchmarks.gpu_check', '--gpu', '-1'])
    assert done.returncode != 0 and done.stderr.count('\n') == 1 and '--quick' in done.stderr


def test_la_study_names_the_four_methods_and_takes_other_settings_as_variants():
    """Bugs caught: a method that is not what its name says (pairsup with an unsupervised term left on, dual
    other than train.py's defaults), a variant's flags dropped or overriding the study's seed or budget."""
    from benchmarks.la_study import METHODS, owned_dests, parse_variant, train_argv
    from utils.cli import UsageError
    assert list(METHODS) == ['sup', 'pairsup', 'mt', 'dual']
    study = argparse.Namespace(patch_size='16,16,16', n_filters=2, gpu='-1', labelnum=4, iterations=12, lr_step=5,
                               num_workers=0, channels_last=None, amp=False)

    def resolved(flags):
        return train.parse_args(train_argv(flags, 7, '/data', study, Path('/runs/x')))
    dual = resolved(METHODS['dual'])
    assert dual == resolved([])  # nothing on top of train.py's defaults
    assert (dual['seed'], dual['max_iterations'], dual['lr_step'], dual['root_path']) == (7, 12, 5, '/data')
    unsup = ('alpha_mc', 'lambda_reg', 'lambda_urps', 'lambda_cps', 'lambda_con')
    pairsup = resolved(METHODS['pairsup'])
    assert all(pairsup[k] == 0 for k in unsup) and all(dual[k] > 0 for k in unsup)
    assert {k for k in dual if dual[k] != pairsup[k]} == set(unsup)
    assert resolved(METHODS['sup'])['method'] == 'sup' and resolved(METHODS['mt'])['method'] == 'mt'

    owned = owned_dests(study)
    name, flags = parse_variant("dual-ramp=--method dual --ramp_unsup 1 --cps_filter 'classwise'", owned)
    assert name == 'dual-ramp' and {k for k in dual if resolved(flags)[k] != dual[k]} == {'ramp_unsup', 'cps_filter'}
    for text, says in (('dual=--ramp_unsup 1', 'four methods'), ('x=--seed 3', '--seed'),
                       ('x=--max_iter 10', '--max_iterations'), ('x=--amp', '--amp'), ('x=--no_such 1', 'no_such'),
                       ('x --ramp_unsup 1', 'NAME='), ('a/b=--amp', '"/"')):
        with pytest.raises(UsageError, match=re.escape(says)) as error:
            parse_variant(text, owned)
        assert '\n' not in str(error.value)


def test_la_study_evaluates_again_at_other_strides_or_precision(tmp_path):
    """Bug caught: a test_summary.json of another --stride_xy, --stride_z or --amp reported as this study's."""
    from benchmarks.la_study import evaluated
    study = argparse.Namespace(stride_xy=16, stride_z=8, amp=False)
    assert not evaluated(tmp_path, study)  # nothing evaluated yet
    for settings, same in ((dict(stride_xy=16, stride_z=8, amp=False), True),
                           (dict(stride_xy=18, stride_z=8, amp=False), False),
                           (dict(stride_xy=16, stride_z=4, amp=False), False),
                           (dict(stride_xy=16, stride_z=8, amp=True), False)):
        (tmp_path / 'test_summary.json').write_text(json.dumps({'settings': {**settings, 'nets': ['a', 'b']}}))
        assert evaluated(tmp_path, study) == same, settings


def test_paired_difference_intervals_over_cases_and_over_seeds():
    from benchmarks.la_study import paired_difference
    cases = [f'c{i}' for i in range(20)]

    def runs(per_seed):  # one {case: metrics} per seed, Dice = the given fraction plus a case term
        return [{c: {'dice': d + 0.001 * i} for i, c in enumerate(cases)} for d in per_seed]
    # every case of every seed 2 points better: both intervals are exactly +2
    d = paired_difference(runs([0.52, 0.52, 0.52]), runs([0.50, 0.50, 0.50]))
    assert d['mean'] == pytest.approx(2) and d['wins'] == d['pairs'] == 60
    assert d['ci95'] == pytest.approx([2, 2]) and d['ci95_seeds'] == pytest.approx([2, 2])
    # seeds disagree (+5, -5, 0 points on every case): resampling cases sees no spread, resampling seeds does
    d = paired_difference(runs([0.55, 0.45, 0.50]), runs([0.50, 0.50, 0.50]))
    assert d['mean'] == pytest.approx(0, abs=1e-9) and d['ci95'] == pytest.approx([0, 0], abs=1e-9)
    assert d['ci95_seeds'][0] == pytest.approx(-5) and d['ci95_seeds'][1] == pytest.approx(5)


def test_the_reading_guide_names_real_files_and_its_counting_commands_find_the_step_and_the_loop():
    """docs/reading.md sends a reader to files by path and counts lines with commands: a renamed file or a step
    that grew past the size the guide promises (about 80 lines for dual_step, 25 for the loop) fails here."""
    text = (REPO / 'docs' / 'reading.md').read_text()
    named = set(re.findall(r'`((?:[\w.-]+/)*[\w.-]+\.py|[\w-]+/)`', text))
    named |= {p for block in re.findall(r'    wc -l ((?:.|\n)*?)\n    awk', text)
              for p in block.replace('\\', ' ').split()}
    reading_path = ['train.py', 'dataloaders/samplers.py', 'dataloaders/datasets.py', 'dataloaders/transforms.py',
                    'networks/vnet.py', 'networks/resnet_vnet.py', 'losses/terms.py', 'utils/ramps.py',
                    'utils/inference.py', 'utils/metrics.py', 'utils/evaluation.py', 'test.py']
    machinery = ['utils/processes.py', 'utils/resume.py', 'utils/run_log.py', 'utils/checkpoint.py']
    assert set(reading_path + machinery) | {'importers/', 'benchmarks/'} <= named
    path = section(text, '## The reading path')
    places = [path.index(f'`{name}`') for name in reading_path]
    assert places == sorted(places), 'the reading path is not in the order of one iteration, then evaluation'
    copyable = section(text, '## Copy one file into your project')  # the modules tests/test_copyable.py copies
    for name in ('networks/vnet.py', 'losses/terms.py', 'losses/mean_teacher.py', 'dataloaders/datasets.py',
                 'dataloaders/transforms.py', 'dataloaders/samplers.py', 'utils/ramps.py', 'utils/metrics.py',
                 'utils/inference.py'):
        assert f'`{name}`' in copyable, name
    assert 'python -m benchmarks.core_size' in text
    folders = {'dataloaders', 'losses', 'networks', 'utils', 'importers', 'benchmarks'}
    missing = [p for p in named if not (REPO / p).exists()
               and not any((REPO / f / p).exists() for f in folders)]
    assert not missing, missing
    lengths = []
    for command in re.findall(r"^    (awk .*)$", text, flags=re.M):
        out = subprocess.run(shlex.split(command), cwd=REPO, capture_output=True, text=True, check=True).stdout
        lengths.append(int(out))
    step, loop = lengths
    assert 40 <= step <= 90 and 5 <= loop <= 25, lengths


def test_the_terms_are_numbered_alike_in_train_py_and_the_docs():
    """Terms 1 to 7 and the total: train.dual_step's comments, docs/method.md's headings, the README's table and
    the reading guide use the same numbers, and no page counts an eighth term."""
    source = (REPO / 'train.py').read_text()
    step = source[source.index('def dual_step'):source.index('def mt_step')]
    assert re.findall(r'^        # (\d)\. ', step, flags=re.M) == [str(i) for i in range(1, 8)]
    assert '# the total' in step
    method = (REPO / 'docs' / 'method.md').read_text()
    assert re.findall(r'^### (\d)\. ', method, flags=re.M) == [str(i) for i in range(1, 8)]
    assert '\n### Total\n' in method
    readme = (REPO / 'README.md').read_text()
    how = section(readme, '## How it works')
    assert readme[:readme.index('\n## How it works')].count('\n') < 120  # on the first screens
    assert re.findall(r'^\| (\d) \| ', how, flags=re.M) == [str(i) for i in range(1, 8)]
    assert 'terms 1 to 7' in how and 'The total' in how
    assert 'terms 1 to 7' in (REPO / 'docs' / 'reading.md').read_text()
    for page in ['README.md', 'train.py'] + [f'docs/{p.name}' for p in (REPO / 'docs').glob('*.md')]:
        text = ' '.join((REPO / page).read_text().split())
        assert not re.search(r'terms 1 to 8|eight (numbered )?terms|term 8\b', text), page
