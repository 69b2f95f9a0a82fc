"""Robustness of train.py (issue 7): bad input gets one clear line before training starts, faults
lose nothing, an interrupted run resumed is the same run, and nothing loads untrusted code.

Bad inputs run the real script in subprocesses (several at once); faults are injected in-process
with monkeypatch; signals and SIGKILL hit a real training subprocess.
"""
import ast
import contextlib
import errno
import hashlib
import io
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import traceback
from pathlib import Path
from types import SimpleNamespace

import h5py
import numpy as np
import pytest
import torch

import train
from dataloaders.datasets import H5Dataset
from dataloaders.datasets import LA_SUBDIR
from conftest import train_argv
from networks import ResNet34VNet, VNet
from utils.checkpoint import CheckpointError
from utils.cli import run_cli

REPO = Path(__file__).resolve().parents[1]
ENV = {**os.environ, 'OMP_NUM_THREADS': '1'}
STEPS = 30  # long enough that a signal sent after the first checkpoint lands mid-run


pytestmark = pytest.mark.usefixtures('one_thread')


def args(data, run, *extra, **flags):
    return train_argv(data, run, *extra, **{'max_iterations': STEPS, **flags})


def load(path):
    return torch.load(path, map_location='cpu', weights_only=True)


def assert_same_weights(a, b):
    """Every tensor of the two checkpoints equal: networks, optimiser states, RNG."""
    for key in ('net_a', 'net_b', 'optimizer_a', 'optimizer_b', 'rng'):
        flat_a, flat_b = flatten(a[key]), flatten(b[key])
        assert flat_a.keys() == flat_b.keys(), key
        for k in flat_a:
            assert torch.equal(flat_a[k], flat_b[k]) if isinstance(flat_a[k], torch.Tensor) \
                else flat_a[k] == flat_b[k], (key, k)
    assert a['iteration'] == b['iteration']


def flatten(obj, prefix=''):
    if isinstance(obj, dict):
        return {k2: v2 for k, v in obj.items() for k2, v2 in flatten(v, f'{prefix}/{k}').items()}
    if isinstance(obj, (list, tuple)):
        return {k2: v2 for i, v in enumerate(obj) for k2, v2 in flatten(v, f'{prefix}/{i}').items()}
    return {prefix: obj}


@pytest.fixture(scope='module')
def reference(phantoms, tmp_path_factory):
    """The uninterrupted run every interrupted-and-resumed run must end identical to."""
    run = tmp_path_factory.mktemp('robust_reference') / 'run'
    train.main(args(phantoms, run, save_every=10))
    return run


# ------------------------------------------------------------------------------------ bad input

def copy_dataset(src, dst, ids=None):
    """A training folder with the first `ids` phantom cases (all by default) and its train.list."""
    ids = ids or (Path(src) / 'train.list').read_text().split()
    for i in ids:
        (dst / LA_SUBDIR / i).mkdir(parents=True)
        shutil.copy(Path(src) / LA_SUBDIR / i / 'mri_norm2.h5', dst / LA_SUBDIR / i / 'mri_norm2.h5')
    (dst / 'train.list').write_text('\n'.join(ids) + '\n')
    return dst


def bad_case(image=None, label=None, raw=None, **extra_keys):
    """Data builder: the phantoms with case phantom_002 replaced by the given arrays or bytes."""
    def build(src, dst):
        copy_dataset(src, dst)
        path = dst / LA_SUBDIR / 'phantom_002' / 'mri_norm2.h5'
        if raw is not None:
            path.write_bytes(raw(path.read_bytes()))
            return
        good_image, good_label = np.zeros((32, 32, 32), np.float32), np.zeros((32, 32, 32), np.uint8)
        path.unlink()
        with h5py.File(path, 'w') as f:
            for key, value in (('image', image), ('label', label)):
                if value is not False:
                    f[key] = (good_image if key == 'image' else good_label) if value is None else value
    return build


def nan_image():
    x = np.zeros((32, 32, 32), np.float32)
    x[3, 4, 5] = np.nan
    return x


def list_with(extra_id):
    def build(src, dst):
        copy_dataset(src, dst)
        with open(dst / 'train.list', 'a') as f:
            f.write(extra_id + '\n')
    return build


def recipe_of_classes(num_classes):
    """The data folder with an import recipe (dataset.json) that says how many classes the import made."""
    def build(src, dst):
        copy_dataset(src, dst)
        (dst / 'dataset.json').write_text(json.dumps({'format_version': 1, 'num_classes': num_classes,
                                                      'labels': {str(c): c for c in range(num_classes)}}))
    return build


def no_list(src, dst):
    copy_dataset(src, dst)
    (dst / 'train.list').unlink()


def foreign_folder(src, dst):
    dst.mkdir()
    (dst / 'notes.txt').write_text('my own data\n')


def checkpoint_with(change):
    """Data: the phantoms; checkpoint: the reference's latest.pth changed by `change(ckpt)`."""
    def build(src, dst, reference):
        ckpt = load(reference / 'latest.pth')
        change(ckpt)
        torch.save(ckpt, dst / 'given.pth')
    return build


def other_classes(ckpt):
    ckpt['net_a'] = VNet(n_classes=3, n_filters=2).state_dict()


def other_architecture(ckpt):
    ckpt['net_a'] = ResNet34VNet(n_filters=2).state_dict()


def bytes_of(transform):
    def build(src, dst, reference):
        (dst / 'given.pth').write_bytes(transform((reference / 'latest.pth').read_bytes()))
    return build


def plain_state_dict(src, dst, reference):
    torch.save(VNet(n_filters=2).state_dict(), dst / 'given.pth')


class Trap:
    """Unpickling this runs Path.touch(marker): a stand-in for the code a malicious checkpoint would run."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return Path.touch, (self.marker,)


def booby_trapped(src, dst, reference):
    ckpt = load(reference / 'latest.pth')
    ckpt['net_a'] = Trap(dst / 'code_was_run')
    torch.save(ckpt, dst / 'given.pth')


def existing_run(src, dst, reference):
    (dst / 'run').mkdir()
    shutil.copy(reference / 'latest.pth', dst / 'run' / 'latest.pth')


GIVEN = '{given}'  # stands for the case folder's given.pth in argv
# name: (data builder or None for the plain phantoms, checkpoint builder or None, extra argv, words the error names)
BAD = {
    'root_path_missing': (None, None, ['--root_path', '/no/such/folder'], ['/no/such/folder', 'not found']),
    'root_path_not_given': (None, None, ['--dataset', 'h5', '--root_path', None], ['--root_path']),
    'list_file_missing': (no_list, None, [], ['train.list']),
    'id_without_h5': (list_with('ghost_case'), None, [], ['ghost_case', 'not found']),
    'id_escaping_folder': (list_with('../../etc'), None, [], ['../../etc', 'unsafe']),
    'h5_without_image': (bad_case(image=False), None, [], ['phantom_002', "'image'"]),
    'h5_without_label': (bad_case(label=False), None, [], ['phantom_002', "'label'"]),
    'image_not_3d': (bad_case(image=np.zeros((1, 32, 32, 32), np.float32)), None, [], ['phantom_002', '4-D']),
    'shape_mismatch': (bad_case(label=np.zeros((32, 32, 16), np.uint8)), None, [], ['phantom_002', 'shape']),
    'nan_image': (bad_case(image=nan_image()), None, [], ['phantom_002', 'NaN']),
    'inf_image': (bad_case(image=np.full((32, 32, 32), np.inf, np.float32)), None, [], ['phantom_002', 'Inf']),
    'label_out_of_range': (bad_case(label=np.full((32, 32, 32), 2, np.uint8)), None, [],
                           ['phantom_002', 'outside 0..1']),
    'truncated_h5': (bad_case(raw=lambda b: b[:len(b) // 2]), None, [], ['phantom_002', 'HDF5']),
    'not_hdf5': (bad_case(raw=lambda b: b'just text\n' * 50), None, [], ['phantom_002', 'HDF5']),
    'patch_not_divisible_by_16': (None, None, ['--patch_size', '24,16,16'], ['--patch_size', '24,16,16', '16']),
    'labelnum_above_list': (None, None, ['--labelnum', '99'], ['--labelnum 99', '8']),
    'labelnum_below_labeled_bs': (None, None, ['--labelnum', '1', '--labeled_bs', '2', '--batch_size', '4'],
                                  ['--labelnum 1', '--labeled_bs 2']),
    'labeled_bs_not_below_batch_dual': (None, None, ['--labeled_bs', '2', '--batch_size', '2'],
                                        ['--labeled_bs 2', '--batch_size 2']),
    'labeled_bs_not_below_batch_mt': (None, None, ['--method', 'mt', '--labeled_bs', '3', '--batch_size', '2'],
                                      ['--labeled_bs 3', '--batch_size 2']),
    'semi_without_unlabeled': (None, None, ['--labelnum', '8'], ['--labelnum 8', 'unlabeled']),
    'num_classes_against_the_import': (recipe_of_classes(3), None, ['--num_classes', '2'],
                                       ['--num_classes 2', 'dataset.json', '3 classes']),
    'la_data_not_fetched': (None, None, ['--root_path', '/nonexistent/LA'], ['/nonexistent/LA', 'git clone']),
    # 8 cases, batches of 2 labeled + 2 unlabeled: 2 to 6 labeled volumes fit, and the line says so
    'labelnum_leaves_too_few_unlabeled': (None, None, ['--labelnum', '7', '--labeled_bs', '2', '--batch_size', '4'],
                                          ['--labelnum 7', 'fit --labelnum 2 to 6']),
    'gpu_list_without_torchrun': (None, None, ['--gpu', '0,1'], ['--gpu 0,1', 'torchrun']),
    'synthetic_into_foreign_folder': (foreign_folder, None, ['--dataset', 'synthetic'], ['synthetic.json']),
    'synthetic_four_classes': (None, None, ['--dataset', 'synthetic', '--num_classes', '4', '--root_path', 'new'],
                               ['--num_classes 4']),
    'resume_missing_file': (None, None, ['--resume', '/no/such.pth'], ['/no/such.pth', 'not found']),
    'resume_other_classes': (None, checkpoint_with(other_classes), ['--resume', GIVEN],
                             ['given.pth', 'net_a', 'out_conv.weight']),
    'resume_other_architecture': (None, checkpoint_with(other_architecture), ['--resume', GIVEN],
                                  ['given.pth', 'net_a', 'missing', 'unexpected', 'resnet_encoder']),
    'resume_corrupted': (None, bytes_of(lambda b: bytes(range(256)) * 40), ['--resume', GIVEN],
                         ['given.pth', 'not a readable checkpoint']),
    'resume_truncated': (None, bytes_of(lambda b: b[:len(b) // 2]), ['--resume', GIVEN],
                         ['given.pth', 'not a readable checkpoint']),
    'resume_code_in_checkpoint': (None, booby_trapped, ['--resume', GIVEN],
                                  ['given.pth', 'not a readable checkpoint', 'GLOBAL']),
    'resume_not_a_training_checkpoint': (None, plain_state_dict, ['--resume', GIVEN],
                                         ['given.pth', 'not a training checkpoint']),
    'resume_other_settings': (None, checkpoint_with(lambda c: None), ['--resume', GIVEN, '--base_lr', '0.02'],
                              ['given.pth', 'base_lr', '0.01', '0.02']),
    'resume_other_filter': (None, checkpoint_with(lambda c: None), ['--resume', GIVEN, '--cps_filter', 'classwise'],
                            ['given.pth', 'filter', 'global', 'classwise']),
    'resume_other_lambda_cps': (None, checkpoint_with(lambda c: None), ['--resume', GIVEN, '--lambda_cps', '0.5'],
                                ['given.pth', 'lambda_cps', '1.0', '0.5']),
    'resume_other_amp': (None, checkpoint_with(lambda c: c['config'].update(amp=True)), ['--resume', GIVEN],
                         ['given.pth', 'amp true, now false']),
    'resume_other_memory_format': (None, checkpoint_with(lambda c: None), ['--resume', GIVEN, '--channels_last', '0'],
                                   ['given.pth', 'channels_last true, now false']),
    'run_folder_holds_checkpoints': (None, existing_run, [], ['already holds checkpoints', '--resume auto']),
}


def run_in_process(argv):
    """train.py's command line run in this process, as `python train.py argv` would end: (returncode, stderr).
    Much faster than a process per case (no interpreter and torch to start); an exception that run_cli lets
    through lands in stderr as the traceback Python would print."""
    err = io.StringIO()
    code = 0
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        try:
            run_cli(train.main, argv)
        except SystemExit as e:
            code = e.code if isinstance(e.code, int) else 1
            if isinstance(e.code, str):  # sys.exit('error: ...') prints its message, as the interpreter would
                print(e.code, file=err)
        except BaseException:
            traceback.print_exc(file=err)
            code = 1
    return SimpleNamespace(returncode=code, stderr=err.getvalue())


@pytest.fixture(scope='module')
def bad_runs(phantoms, reference, tmp_path_factory):
    """Every bad case (and one with --debug) run as train.py's command line, in this process."""
    jobs = {}
    for name, (data, ckpt, extra, _) in BAD.items():
        case = tmp_path_factory.mktemp(name)
        root = phantoms
        if data is not None:
            root = case / 'data'
            data(phantoms, root)
        if ckpt is not None:
            ckpt(phantoms, case, reference)
        argv = args(root, case / 'run')
        for i in range(0, len(extra), 2):  # extra flags replace the base ones (None: drop the flag)
            flag, value = extra[i], extra[i + 1]
            if value == GIVEN:
                value = str(case / 'given.pth')
            elif flag == '--root_path' and value == 'new':
                value = str(case / 'new')
            if flag in argv:
                j = argv.index(flag)
                del argv[j:j + 2]
            if value is not None:
                argv += [flag, value]
        jobs[name] = (argv, case / 'run')
    jobs['debug'] = (jobs['id_without_h5'][0] + ['--debug'], None)
    return {name: (run_in_process(argv), run) for name, (argv, run) in jobs.items()}


@pytest.mark.parametrize('name', list(BAD))
def test_bad_input_gives_one_clear_line_before_training(bad_runs, name):
    proc, run = bad_runs[name]
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert proc.returncode not in (0, None) and proc.returncode > 0, (proc.returncode, proc.stderr)
    assert 'Traceback' not in proc.stderr
    assert len(lines) == 1, proc.stderr
    for word in BAD[name][3]:
        assert word in lines[0], (word, lines[0])
    assert 'weights_only` set to `False' not in lines[0]  # never advise running a stranger's code
    # caught before training: no iteration logged, no checkpoint written (but the planted one)
    if run.exists():
        assert not (run / 'iterations.csv').exists()
        assert [p.name for p in run.glob('*.pth')] == (['latest.pth'] if name == 'run_folder_holds_checkpoints'
                                                         else [])


def test_code_in_a_checkpoint_is_never_run(bad_runs):
    _, run = bad_runs['resume_code_in_checkpoint']
    assert (run.parent / 'given.pth').exists() and not (run.parent / 'code_was_run').exists()


def test_debug_flag_shows_the_traceback(bad_runs):
    proc, _ = bad_runs['debug']
    assert proc.returncode != 0 and 'Traceback' in proc.stderr and 'DatasetError' in proc.stderr


# ----------------------------------------------------------------------------------------- faults

@pytest.mark.parametrize('function,term', [('urps_loss', 'urps'), ('cosine_consistency_loss', 'reg')])
def test_non_finite_loss_stops_naming_term_and_iteration(phantoms, tmp_path, monkeypatch, function, term):
    real, calls = getattr(train, function), []

    def poisoned(*a, **k):
        calls.append(None)
        value = real(*a, **k)
        return value * float('nan') if len(calls) == 6 else value  # iteration 5
    monkeypatch.setattr(train, function, poisoned)
    run = tmp_path / 'run'
    with pytest.raises(SystemExit) as e:
        run_cli(train.main, args(phantoms, run, max_iterations=10, save_every=2))
    message = str(e.value.code)
    assert f'non-finite loss term {term} at iteration 5' in message and '\n' not in message
    ckpt = load(run / 'latest.pth')  # the last good checkpoint, untouched
    assert ckpt['iteration'] == 4 and not (run / 'final.pth').exists()
    assert all(torch.isfinite(v).all() for v in ckpt['net_a'].values() if v.is_floating_point())


@pytest.mark.parametrize('target', ['torch.save', 'os.replace'])
def test_failed_write_keeps_previous_checkpoint(phantoms, tmp_path, monkeypatch, target):
    module, name = (torch, 'save') if target == 'torch.save' else (os, 'replace')
    real, calls = getattr(module, name), []

    def disk_full(*a, **k):
        calls.append(None)
        if len(calls) == 2:  # the second checkpoint
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real(*a, **k)
    monkeypatch.setattr(module, name, disk_full)
    run = tmp_path / 'run'
    with pytest.raises(CheckpointError):
        train.main(args(phantoms, run, max_iterations=6, save_every=2))
    calls.clear()
    with pytest.raises(SystemExit) as e:  # the same through the command line: one clear line
        run_cli(train.main, args(phantoms, tmp_path / 'run2', max_iterations=6, save_every=2))
    message = str(e.value.code)
    assert message.startswith('error: ') and 'latest.pth' in message and 'No space left' in message
    assert '\n' not in message
    for folder in (run, tmp_path / 'run2'):
        assert load(folder / 'latest.pth')['iteration'] == 2  # the previous checkpoint, intact
        assert sorted(p.name for p in folder.iterdir() if 'pth' in p.name) == ['latest.pth']  # no temp file


def test_file_vanishing_during_training_gives_one_line_from_a_worker(phantoms, tmp_path, monkeypatch):
    data = copy_dataset(phantoms, tmp_path / 'data')
    monkeypatch.setattr(H5Dataset, 'validate', lambda self, num_classes=None: None)  # as if it vanished later
    victim = data / LA_SUBDIR / 'phantom_000' / 'mri_norm2.h5'
    victim.unlink()
    with pytest.raises(SystemExit) as e:
        run_cli(train.main, args(data, tmp_path / 'run', max_iterations=8, num_workers=1))
    message = str(e.value.code)
    assert message.startswith('error: ') and str(victim) in message and 'not found' in message
    assert '\n' not in message and 'Traceback' not in message


def snapshot(folder):
    """Every file's hash and mtime, every folder's mtime (a file created inside would change it)."""
    return {str(p.relative_to(folder)): (p.is_file() and hashlib.sha256(p.read_bytes()).hexdigest(),
                                         p.stat().st_mtime_ns)
            for p in [Path(folder), *sorted(Path(folder).rglob('*'))]}


def test_dataset_files_are_never_modified(phantoms, tmp_path, monkeypatch):
    before = snapshot(phantoms)
    modes = []
    real_file = h5py.File

    def spy(name, mode='r', *a, **k):
        modes.append(mode)
        return real_file(name, mode, *a, **k)
    monkeypatch.setattr(h5py, 'File', spy)
    train.main(args(phantoms, tmp_path / 'run', '--val_list', str(phantoms / 'test.list'), max_iterations=1,
                    val_every=1))
    assert snapshot(phantoms) == before
    assert modes and set(modes) == {'r'}
    assert (tmp_path / 'run' / 'best.pth').exists()  # validation did read the test list


# ----------------------------------------------------------------------------- signals and kills

def start_training(run, phantoms, **flags):
    # a session of its own, as a batch job has: os.killpg reaches the run and its DataLoader workers only
    return subprocess.Popen([sys.executable, 'train.py', *args(phantoms, run, save_every=1, **flags)], cwd=REPO,
                            env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)


def wait_for_checkpoint(proc, path, timeout=120):
    end = time.time() + timeout
    while not path.exists():
        assert proc.poll() is None, proc.communicate()[1][-2000:]
        assert time.time() < end, 'no checkpoint appeared'
        time.sleep(0.005)


@pytest.mark.parametrize('signum', [signal.SIGINT, signal.SIGTERM, signal.SIGKILL], ids=lambda s: s.name)
def test_interrupted_run_resumes_to_the_same_weights(phantoms, reference, tmp_path, signum):
    run = tmp_path / 'run'
    proc = start_training(run, phantoms)
    try:
        wait_for_checkpoint(proc, run / 'latest.pth')
        os.kill(proc.pid, signum)
        _, stderr = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    if signum == signal.SIGKILL:
        assert proc.returncode == -signal.SIGKILL
    else:  # a clean stop: checkpoint written, status 128 + signal number, no traceback
        assert proc.returncode == 128 + signum, stderr[-2000:]
        assert 'Traceback' not in stderr
        assert f'stopped by signal {int(signum)}' in (run / 'log.txt').read_text()
    stopped_at = load(run / 'latest.pth')['iteration']  # the newest complete checkpoint loads
    assert 0 < stopped_at < STEPS and not (run / 'final.pth').exists()

    train.main(args(phantoms, run, '--resume', 'auto'))
    assert f'resumed from {run / "latest.pth"} at iteration {stopped_at}' in (run / 'log.txt').read_text()
    assert_same_weights(load(reference / 'final.pth'), load(run / 'final.pth'))
    # the per-iteration record reads as one uninterrupted run
    assert (run / 'iterations.csv').read_text() == (reference / 'iterations.csv').read_text()


@pytest.mark.parametrize('signum', [signal.SIGINT, signal.SIGTERM], ids=lambda s: s.name)
def test_signal_to_the_whole_job_with_workers_stops_cleanly_and_resumes_exactly(phantoms, reference, tmp_path,
                                                                                 signum):
    """timeout, Ctrl-C and schedulers signal every process of the job: the DataLoader workers too."""
    run = tmp_path / 'run'
    proc = start_training(run, phantoms, num_workers=2)
    try:
        wait_for_checkpoint(proc, run / 'latest.pth')
        os.killpg(proc.pid, signum)
        _, stderr = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == 128 + signum, stderr[-2000:]
    assert 'Traceback' not in stderr and 'DataLoader worker' not in stderr
    assert f'stopped by signal {int(signum)}' in (run / 'log.txt').read_text()
    end = time.time() + 30  # the workers went with the main process (the watchdog's period is 5 s)
    while time.time() < end:
        try:
            os.killpg(proc.pid, 0)
        except ProcessLookupError:
            break
        time.sleep(0.1)
    else:
        raise AssertionError('a DataLoader worker outlived its run')
    stopped_at = load(run / 'latest.pth')['iteration']
    assert 0 < stopped_at < STEPS and not (run / 'final.pth').exists()

    train.main(args(phantoms, run, '--resume', 'auto', num_workers=2))
    assert_same_weights(load(reference / 'final.pth'), load(run / 'final.pth'))
    assert (run / 'iterations.csv').read_text() == (reference / 'iterations.csv').read_text()


# ------------------------------------------------------------------------------------------ security

def python_files():
    skip = {'.git', '.venv', 'venv', '__pycache__', 'node_modules'}
    return [p for p in REPO.rglob('*.py') if not skip & set(p.relative_to(REPO).parts)]


def test_no_unsafe_deserialisation_or_eval():
    problems = []
    for path in python_files():
        tree = ast.parse(path.read_text(), filename=str(path))
        for node in ast.walk(tree):
            where = f'{path.relative_to(REPO)}:{getattr(node, "lineno", "?")}'
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                names = [a.name for a in node.names] + ([node.module] if isinstance(node, ast.ImportFrom) else [])
                if {'pickle', 'cPickle', 'dill', 'marshal', 'shelve', 'joblib'} & {str(n).split('.')[0]
                                                                                   for n in names}:
                    problems.append(f'{where}: imports an unpickler')
            if not isinstance(node, ast.Call):
                continue
            func = node.func
            name = func.id if isinstance(func, ast.Name) else func.attr if isinstance(func, ast.Attribute) else ''
            owner = func.value.id if isinstance(func, ast.Attribute) and isinstance(func.value, ast.Name) else ''
            keywords = {k.arg: k.value for k in node.keywords}
            if isinstance(func, ast.Name) and name in ('eval', 'exec'):
                problems.append(f'{where}: {name}()')
            if owner == 'torch' and name == 'load':
                flag = keywords.get('weights_only')
                if not (isinstance(flag, ast.Constant) and flag.value is True):
                    problems.append(f'{where}: torch.load without weights_only=True')
            if owner in ('np', 'numpy') and name == 'load':
                flag = keywords.get('allow_pickle')
                if flag is not None and not (isinstance(flag, ast.Constant) and flag.value is False):
                    problems.append(f'{where}: np.load with allow_pickle')
    assert len(python_files()) > 20  # the scan did see the repository
    assert not problems, problems



# ------------------------------------------------------------------------------------------ layering

def test_folders_import_neither_each_other_nor_a_script():
    """networks/, losses/, dataloaders/ are copied into forks one by one: none imports another of them, utils/,
    importers/ or a script; importers/ may import dataloaders/ and utils/, utils/ may import importers.volumes
    (test.py's readers), which imports no utils; nothing imports a script (train, test, segment, benchmarks)."""
    scripts = {'train', 'test', 'segment', 'benchmarks', 'tests'}
    allowed = {'networks': set(), 'losses': set(), 'dataloaders': set(),
               'utils': {'networks', 'losses', 'dataloaders', 'importers'},
               'importers': {'dataloaders', 'utils'}, 'importers/volumes': {'dataloaders'}}
    problems = []
    for folder, may in allowed.items():
        forbidden = (scripts | {f.split('/')[0] for f in allowed}) - may - {folder.split('/')[0]}
        for path in (REPO / folder).rglob('*.py'):
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, ast.ImportFrom) and not node.level:
                    names = [node.module]
                elif isinstance(node, ast.Import):
                    names = [a.name for a in node.names]
                else:
                    continue
                problems += [f'{path.relative_to(REPO)}:{node.lineno} imports {n}' for n in names
                             if n.split('.')[0] in forbidden]
    assert not problems, problems
    for script in ('train', 'test', 'segment'):  # and no script imports another
        tree = ast.parse((REPO / f'{script}.py').read_text())
        imported = {n.split('.')[0] for node in ast.walk(tree) for n in
                    ([node.module] if isinstance(node, ast.ImportFrom) else
                     [a.name for a in node.names] if isinstance(node, ast.Import) else [])}
        assert not imported & ({'train', 'test', 'segment'} - {script}), (script, imported)


def test_one_public_name_one_definition():
    """Two top-level functions or classes of one public name with different code in the product (two
    read_volume, two crop_box) make a reader, or a fork copying one module, call the wrong one. The entry
    points of the scripts alone share their names."""
    entry_points = {'main', 'build_parser', 'parse_args'}
    files = [p for folder in ('networks', 'losses', 'dataloaders', 'importers', 'utils')
             for p in sorted((REPO / folder).rglob('*.py'))]
    files += [REPO / f'{name}.py' for name in ('train', 'test', 'segment') if (REPO / f'{name}.py').exists()]
    definitions = {}
    for path in files:
        for node in ast.parse(path.read_text()).body:
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)) \
                    and not node.name.startswith('_') and node.name not in entry_points:
                definitions.setdefault(node.name, {}).setdefault(ast.dump(node), []).append(
                    str(path.relative_to(REPO)))
    duplicates = {name: sorted(p for paths in codes.values() for p in paths)
                  for name, codes in definitions.items() if len(codes) > 1}
    assert not duplicates, duplicates
