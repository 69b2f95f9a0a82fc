"""test.py and segment.py end to end: train a tiny pair with train.py on phantoms, evaluate it, segment new
volumes, evaluate published-format state dicts, and report every error in one line naming the file or flag."""
import csv
import importlib.util
import json
import math
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

from conftest import require_extra
from dataloaders.transforms import normalize_intensity
from dataloaders.datasets import LA_SUBDIR
from dataloaders.synthetic import make_synthetic_dataset
from importers.volumes import read_scan
import segment
from networks import ResNet34VNet, VNet
from utils.checkpoint import CheckpointError
from utils.cli import run_cli
from utils.inference import test_single_case
from utils.metrics import calculate_metric_percase

ROOT = Path(__file__).resolve().parents[1]
PATCH = (32, 32, 16)
STRIDE = 16  # the 'h5' preset's stride_xy and stride_z
TEST_IDS = ['phantom_003', 'phantom_004']


def load_script():
    # 'test' would be the standard library's package; load test.py under its own name
    spec = importlib.util.spec_from_file_location('test_script', ROOT / 'test.py')
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


SCRIPT = load_script()


def cli(argv, main=SCRIPT.main):
    """test.py as a shell runs it, in this process: its exit status, with run_cli's error line on stderr."""
    try:
        run_cli(main, argv)
    except SystemExit as e:
        if isinstance(e.code, str):  # what the interpreter would print before exiting with status 1
            print(e.code, file=sys.stderr)
            return 1
        return e.code
    return 0


def segment_cli(argv):
    """segment.py as a shell runs it, in this process."""
    return cli(argv, segment.main)


@pytest.fixture(scope='module')
def phantoms(tmp_path_factory):
    """3 training and 2 test phantoms of 32x32x16 in the LA layout."""
    root = make_synthetic_dataset(tmp_path_factory.mktemp('phantoms') / 'data', num_train=3, num_test=2,
                                  shape=PATCH, num_classes=2, seed=0)
    assert (root / 'test.list').read_text().split() == TEST_IDS
    return root


@pytest.fixture(scope='module')
def trained_run(phantoms, tmp_path_factory):
    """Run folder of a 4-iteration dual training by train.py (n_filters 2). The 'h5' preset with the LA
    pattern reads the phantoms as they are: '--dataset synthetic' would regenerate its default-sized set."""
    run = tmp_path_factory.mktemp('runs') / 'run'
    cmd = [sys.executable, 'train.py', '--dataset', 'h5', '--pattern', '{id}/mri_norm2.h5', '--root_path',
           str(phantoms), '--max_iterations', '4', '--n_filters', '2', '--patch_size', '32,32,16',
           '--batch_size', '2', '--labeled_bs', '1', '--labelnum', '2', '--num_workers', '0', '--gpu', '-1',
           '--snapshot_path', str(run)]
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert (run / 'final.pth').is_file()
    return run


def checkpoint_nets(path):
    """The (VNet, ResNet34VNet) of a train.py checkpoint, in eval mode."""
    ckpt = torch.load(path, weights_only=True)
    nets = []
    for key, cls in (('net_a', VNet), ('net_b', ResNet34VNet)):
        net = cls(n_classes=2, n_filters=2, has_dropout=True)
        net.load_state_dict(ckpt[key])
        nets.append(net.eval())
    return nets


def read_case(root, case_id):
    with h5py.File(root / LA_SUBDIR / case_id / 'mri_norm2.h5', 'r') as f:
        return f['image'][()], f['label'][()]


def read_csv(path):
    with open(path, newline='') as f:
        return list(csv.DictReader(f))


def same_metric(value, want):
    value = float(value)
    return (math.isnan(value) and math.isnan(want)) or value == pytest.approx(want, rel=1e-9, abs=1e-12)


def check_table_csv_json(stdout, out_dir, units='voxels'):
    """The printed table, the CSV and the JSON tell the same numbers. Returns (rows, summary)."""
    rows = read_csv(out_dir / 'test_cases.csv')
    summary = json.loads((out_dir / 'test_summary.json').read_text())
    assert summary['n_cases'] == len(rows)
    assert summary['units']['hd95'] == units
    assert f'| Dice (%) | Jaccard (%) | 95HD ({units}) | ASD ({units}) |' in stdout
    lines = stdout.splitlines()
    table_row = lines[lines.index('|---|---|---|---|---|') + 1]  # the first row after the header
    cells = [c.strip() for c in table_row.strip('|').split('|')][1:]
    assert len(cells) == 4
    for cell, metric in zip(cells, ('dice', 'jaccard', 'hd95', 'asd')):
        values = np.array([float(r[metric]) for r in rows])
        values = values[~np.isnan(values)]
        stat = summary['metrics'][metric]
        assert stat['n'] == len(values)
        scale = 100.0 if metric in ('dice', 'jaccard') else 1.0
        if len(values) == 0:
            assert cell == 'n/a' and stat['mean'] is None
            continue
        assert stat['mean'] == pytest.approx(values.mean(), abs=1e-12)
        assert stat['std'] == pytest.approx(values.std(), abs=1e-12)
        assert cell == f'{stat["mean"] * scale:.2f} ± {stat["std"] * scale:.2f}'
    n_empty = sum(r['empty'] == 'True' for r in rows)
    assert summary['n_empty'] == n_empty
    assert summary['empty_cases'] == [r['case'] for r in rows if r['empty'] == 'True']
    empty_line = f'{n_empty} of {len(rows)} cases empty'
    assert (empty_line in stdout) == (n_empty > 0)
    assert summary['table'] in stdout
    return rows, summary


def check_rows_against_predictions(rows, phantoms, nets, pred_dir, spacing=None, normalize='zscore'):
    """Each saved prediction is the sliding window of `nets`; each CSV row is calculate_metric_percase of it."""
    assert [r['case'] for r in rows] == TEST_IDS
    for row in rows:
        image, label = read_case(phantoms, row['case'])
        with h5py.File(pred_dir / f'{row["case"]}.h5', 'r') as f:
            pred, saved_image, saved_label = f['prediction'][()], f['image'][()], f['label'][()]
        image = normalize_intensity(image, normalize)  # what training fed the networks
        np.testing.assert_array_equal(saved_image, image)
        np.testing.assert_array_equal(saved_label, label)
        want_pred, _ = test_single_case(nets, image, STRIDE, STRIDE, PATCH, 2)
        np.testing.assert_array_equal(pred, want_pred)
        want = calculate_metric_percase(pred, saved_label, spacing=spacing)
        for metric, value in zip(('dice', 'jaccard', 'hd95', 'asd'), want):
            assert same_metric(row[metric], value), (row['case'], metric, row[metric], value)
        assert row['empty'] == str(not pred.any())


def test_end_to_end_after_train(trained_run, phantoms):
    cmd = [sys.executable, 'test.py', '--dataset', 'h5', '--root_path', str(phantoms), '--snapshot_path',
           str(trained_run), '--gpu', '-1', '--save_pred', '--h5']
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert 'test: 100%' in done.stderr  # the tqdm bar
    for name in ('test_cases.csv', 'test_summary.json'):
        assert (trained_run / name).is_file()
    for case_id in TEST_IDS:
        assert (trained_run / 'predictions' / f'{case_id}.h5').is_file()
    rows, summary = check_table_csv_json(done.stdout, trained_run)
    assert summary['checkpoint'] == str(trained_run / 'final.pth') and summary['iteration'] == 4
    settings = summary['settings']
    assert (settings['method'], settings['nets'], settings['n_filters']) == ('dual', ['a', 'b'], 2)
    assert settings['normalize'] == 'zscore'  # the checkpoint's, applied to every volume read
    assert (tuple(settings['patch_size']), settings['stride_xy'], settings['stride_z']) == (PATCH, STRIDE, STRIDE)
    assert summary['wall_seconds'] > 0
    check_rows_against_predictions(rows, phantoms, checkpoint_nets(trained_run / 'final.pth'),
                                   trained_run / 'predictions')


def test_channels_last_and_amp_evaluate_like_float32(trained_run, phantoms, tmp_path, capsys):
    flags = ['--dataset', 'h5', '--root_path', str(phantoms), '--checkpoint', str(trained_run / 'final.pth'),
             '--gpu', '-1', '--no_progress']
    assert cli(flags + ['--out_dir', str(tmp_path / 'f32'), '--channels_last', '0']) == 0
    assert cli(flags + ['--out_dir', str(tmp_path / 'fast'), '--channels_last', '--amp', '--tf32', '1',
                        '--deterministic', '1']) == 0, capsys.readouterr().err
    assert torch.backends.cudnn.conv.fp32_precision == 'tf32' and torch.backends.cudnn.deterministic
    assert cli(flags + ['--out_dir', str(tmp_path / 'default')]) == 0
    # true float32 and cuDNN's benchmark mode for the fixed window unless asked otherwise, and both recorded
    assert torch.backends.cuda.matmul.fp32_precision == torch.backends.cudnn.conv.fp32_precision == 'ieee'
    assert torch.backends.cudnn.benchmark and not torch.backends.cudnn.deterministic
    f32, fast, default = (json.loads((tmp_path / d / 'test_summary.json').read_text())
                          for d in ('f32', 'fast', 'default'))
    assert (fast['settings']['channels_last'], fast['settings']['amp']) == (True, True)
    assert (f32['settings']['channels_last'], f32['settings']['amp']) == (False, False)
    assert (default['settings']['channels_last'], default['settings']['amp']) == (True, False)  # on the CPU
    assert (fast['settings']['tf32'], fast['settings']['deterministic']) == (1, 1)
    assert (default['settings']['tf32'], default['settings']['deterministic']) == (0, 0)
    assert fast['metrics']['dice']['mean'] == pytest.approx(f32['metrics']['dice']['mean'], abs=0.02)
    assert default['metrics']['dice']['mean'] == pytest.approx(f32['metrics']['dice']['mean'], abs=1e-6)


def calibrated(net, image):
    """Shift the class-1 bias of a freshly initialised net so that about half the volume is foreground:
    random weights otherwise predict all or nothing, and the distances would go untested."""
    with torch.no_grad():
        logits = net(torch.from_numpy(image)[None, None])[0]
        net.out_conv.bias[1] -= float((logits[0, 1] - logits[0, 0]).median())
    return net


def published_nets(phantoms, seed=1):
    torch.manual_seed(seed)
    image, _ = read_case(phantoms, TEST_IDS[0])
    return (calibrated(VNet(n_classes=2, n_filters=2).eval(), image),
            calibrated(ResNet34VNet(n_classes=2, n_filters=2).eval(), image))


def data_flags(phantoms):
    return ['--dataset', 'h5', '--root_path', str(phantoms), '--pattern', '{id}/mri_norm2.h5', '--gpu', '-1',
            '--no_progress']


def test_published_state_dicts_evaluate(phantoms, tmp_path, capsys):
    vnet, resnet = published_nets(phantoms)
    torch.save(vnet.state_dict(), tmp_path / 'vnet.pth')
    torch.save(resnet.state_dict(), tmp_path / 'resnet.pth')
    out = tmp_path / 'out'
    rc = cli(data_flags(phantoms) + [
        '--vnet_ckpt', str(tmp_path / 'vnet.pth'), '--resnet_ckpt', str(tmp_path / 'resnet.pth'),
        '--n_filters', '2', '--patch_size', '32,32,16', '--out_dir', str(out), '--save_pred', '--h5',
        '--spacing', '1,1,2'])
    stdout = capsys.readouterr().out
    assert rc == 0
    rows, summary = check_table_csv_json(stdout, out, units='mm')
    assert summary['settings']['nets'] == ['a', 'b']
    assert summary['metrics']['hd95']['n'] > 0  # the distances were really compared
    check_rows_against_predictions(rows, phantoms, [vnet, resnet], out / 'predictions', spacing=(1, 1, 2),
                                   normalize='none')


def one_line_error(capsys):
    err = capsys.readouterr().err.strip()
    assert '\n' not in err and 'Traceback' not in err, err
    assert err.startswith('error: ')
    return err


def test_mismatching_state_dict_names_the_keys(phantoms, tmp_path, capsys):
    torch.save(VNet(n_classes=3, n_filters=2).state_dict(), tmp_path / 'three_classes.pth')
    rc = cli(data_flags(phantoms) + ['--vnet_ckpt', str(tmp_path / 'three_classes.pth'), '--n_filters', '2',
                                            '--patch_size', '32,32,16', '--out_dir', str(tmp_path / 'out')])
    assert rc == 1
    err = one_line_error(capsys)
    assert str(tmp_path / 'three_classes.pth') in err and 'out_conv.weight' in err and 'out_conv.bias' in err
    assert not (tmp_path / 'out' / 'test_cases.csv').exists()


def test_dataset_problem_is_one_line_naming_the_file(phantoms, tmp_path, capsys):
    torch.save(VNet(n_classes=2, n_filters=2).state_dict(), tmp_path / 'vnet.pth')
    missing = tmp_path / 'missing.list'
    rc = cli(data_flags(phantoms) + ['--vnet_ckpt', str(tmp_path / 'vnet.pth'), '--n_filters', '2',
                                            '--list_file', str(missing), '--out_dir', str(tmp_path / 'out')])
    assert rc == 1
    assert str(missing) in one_line_error(capsys)


def test_missing_checkpoint_names_the_run_folder(tmp_path, capsys):
    run = tmp_path / 'never_trained'
    flags = ['--dataset', 'h5', '--root_path', str(tmp_path), '--snapshot_path', str(run), '--gpu', '-1']
    assert cli(flags) == 1
    err = one_line_error(capsys)
    assert f'run folder {run}' in err and 'train.py writes final.pth' in err
    with pytest.raises(CheckpointError):  # --debug shows the traceback instead
        cli(flags + ['--debug'])


def test_unset_flags_are_as_trained_and_a_contradicting_architecture_flag_is_ignored(trained_run, tmp_path,
                                                                                     capsys):
    """Nothing but --checkpoint: dataset, folder, pattern, patch, strides and normalisation are the run's. A given
    --stride_xy wins; a given --n_filters or --method that the weights contradict is ignored with a note."""
    final = trained_run / 'final.pth'
    rc = cli(['--checkpoint', str(final), '--gpu', '-1', '--no_progress', '--out_dir', str(tmp_path),
              '--stride_xy', '8', '--n_filters', '4', '--method', 'mt'])
    err = capsys.readouterr().err
    assert rc == 0, err
    assert f'note: --n_filters 4 ignored: {final} was trained with n_filters 2' in err
    assert f'note: --method mt ignored: {final} is a dual checkpoint' in err
    settings = json.loads((tmp_path / 'test_summary.json').read_text())['settings']
    assert (settings['dataset'], settings['pattern'], settings['normalize']) == ('h5', '{id}/mri_norm2.h5', 'zscore')
    assert (settings['method'], settings['n_filters'], tuple(settings['patch_size'])) == ('dual', 2, PATCH)
    assert (settings['stride_xy'], settings['stride_z']) == (8, STRIDE)


def test_test_py_points_new_scans_to_segment_py(tmp_path, capsys):
    assert cli(['--input', str(tmp_path / 'scan.nii.gz'), '--out_dir', str(tmp_path / 'out')]) == 1
    assert capsys.readouterr().err == ('error: test.py evaluates a list; segment new scans with python segment.py '
                                       '--checkpoint ... --input ...\n')
    assert not (tmp_path / 'out').exists()


def test_input_folder_writes_one_label_map_per_volume(trained_run, tmp_path, capsys):
    rng = np.random.default_rng(0)
    folder = tmp_path / 'scans'
    folder.mkdir()
    volumes = {'a': rng.normal(size=(40, 28, 16)).astype(np.float32),  # wider and narrower than the patch
               'b': rng.normal(size=(32, 32, 20)).astype(np.float32)}
    with h5py.File(folder / 'a.h5', 'w') as f:
        f['image'] = volumes['a']
    np.save(folder / 'b.npy', volumes['b'])
    (folder / 'notes.txt').write_text('not a volume')
    out = tmp_path / 'out'
    rc = segment_cli(['--checkpoint', str(trained_run / 'final.pth'), '--input', str(folder), '--out_dir', str(out),
                      '--gpu', '-1', '--no_progress', '--nets', 'b'])
    assert rc == 0, capsys.readouterr().err
    written = out / 'predictions_input'
    assert sorted(p.name for p in written.iterdir()) == ['a_pred.h5', 'b_pred.npy']
    with h5py.File(written / 'a_pred.h5', 'r') as f:
        maps = {'a': f['label'][()]}
    maps['b'] = np.load(written / 'b_pred.npy')
    _, resnet = checkpoint_nets(trained_run / 'final.pth')
    for name, image in volumes.items():  # normalised as in training and as test.py's own evaluation
        want, _ = test_single_case(resnet, normalize_intensity(image, 'zscore'), STRIDE, STRIDE, PATCH, 2)
        np.testing.assert_array_equal(maps[name], want)
    assert not (out / 'test_cases.csv').exists()  # no metrics without labels


@pytest.mark.skipif(importlib.util.find_spec('nibabel') is not None, reason='nibabel is installed')
def test_nifti_without_nibabel_says_how_to_install(tmp_path, capsys):
    rc = cli(['--dataset', 'h5', '--root_path', str(tmp_path), '--snapshot_path', str(tmp_path), '--gpu',
                     '-1', '--nifti'])
    assert rc == 1
    assert 'pip install nibabel' in one_line_error(capsys)


def test_nifti_input_and_predictions_when_nibabel_is_installed(phantoms, tmp_path, capsys):
    nib = require_extra('nibabel')
    vnet, _ = published_nets(phantoms)
    torch.save(vnet.state_dict(), tmp_path / 'vnet.pth')
    flags = data_flags(phantoms) + ['--vnet_ckpt', str(tmp_path / 'vnet.pth'), '--n_filters', '2', '--patch_size',
                                    '32,32,16', '--out_dir', str(tmp_path / 'out')]
    image = np.random.default_rng(1).normal(size=(36, 32, 16)).astype(np.float32)
    affine = np.diag([0.625, 0.625, 1.25, 1.0])
    (tmp_path / 'scans').mkdir()
    nib.save(nib.Nifti1Image(image, affine), str(tmp_path / 'scans' / 'scan.nii.gz'))
    assert segment_cli(flags + ['--input', str(tmp_path / 'scans')]) == 0
    out, out_affine = read_scan(tmp_path / 'out' / 'predictions_input' / 'scan_pred.nii.gz')
    np.testing.assert_array_equal(out_affine, affine)
    want, _ = test_single_case([vnet], image, STRIDE, STRIDE, PATCH, 2)
    np.testing.assert_array_equal(out, want)

    assert cli(flags + ['--save_pred']) == 0  # NIfTI is the default format with nibabel
    for case_id in TEST_IDS:
        image, label = read_case(phantoms, case_id)
        saved = {s: read_scan(tmp_path / 'out' / 'predictions' / f'{case_id}_{s}.nii.gz')[0]
                 for s in ('pred', 'img', 'gt')}
        np.testing.assert_array_equal(saved['img'], image)
        np.testing.assert_array_equal(saved['gt'], label)
        np.testing.assert_array_equal(saved['pred'], test_single_case([vnet], image, STRIDE, STRIDE, PATCH, 2)[0])


def test_save_png_writes_one_picture_per_case_also_for_an_empty_prediction(phantoms, tmp_path):
    plt_image = require_extra('matplotlib.image')
    vnet, _ = published_nets(phantoms)
    with torch.no_grad():
        vnet.out_conv.bias[1] = -100.0  # background everywhere: every prediction is empty
    torch.save(vnet.state_dict(), tmp_path / 'vnet.pth')
    out = tmp_path / 'out'
    flags = data_flags(phantoms) + ['--vnet_ckpt', str(tmp_path / 'vnet.pth'), '--n_filters', '2', '--patch_size',
                                    '32,32,16', '--out_dir', str(out), '--save_png']
    assert cli(flags) == 0
    assert [r['empty'] for r in read_csv(out / 'test_cases.csv')] == ['True', 'True']
    pictures = sorted((out / 'pictures').iterdir())
    assert [p.name for p in pictures] == [f'{case_id}.png' for case_id in TEST_IDS]
    for path in pictures:
        assert plt_image.imread(path).shape == (440, 1200, 4)

    (tmp_path / 'scans').mkdir()
    np.save(tmp_path / 'scans' / 'scan.npy', read_case(phantoms, TEST_IDS[0])[0])
    assert segment_cli(flags + ['--input', str(tmp_path / 'scans')]) == 0
    assert [p.name for p in (out / 'pictures_input').iterdir()] == ['scan.png']


def test_save_png_without_matplotlib_is_one_line(phantoms, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, 'matplotlib.figure', None)  # as if matplotlib were not installed
    with pytest.raises(SystemExit) as stop:
        run_cli(SCRIPT.main, data_flags(phantoms) + ['--snapshot_path', str(tmp_path), '--save_png'])
    assert stop.value.code == 'error: --save_png needs the package matplotlib: pip install matplotlib'


def test_picture_slices_go_through_the_label_then_the_prediction_then_the_middle():
    from dataloaders.pictures import slice_centre
    label, pred = np.zeros((20, 10, 8), np.uint8), np.zeros((20, 10, 8), np.uint8)
    assert slice_centre(label.shape, label, pred) == (10, 5, 4)  # both empty: the middle of the volume
    pred[2:5, 1:4, 6] = 1
    assert slice_centre(label.shape, label, pred) == (3, 2, 6)
    label[14:17, 6:9, 1:4] = 2
    assert slice_centre(label.shape, label, pred) == (15, 7, 2)
    assert slice_centre(label.shape, None, pred) == (3, 2, 6)  # --input: no label
