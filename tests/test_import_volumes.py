"""import_volumes on MSD / nnU-Net style folders written in the test: pairing, checks, label mapping, crops,
intensities, lists, bad inputs, and the end to end: import, importers.check, train.py, test.py."""
import os
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest

from importers import import_volumes as iv
from utils.cli import run_cli
from importers.volumes import read_scan
from make_volumes import write_nifti, write_nrrd

REPO = Path(__file__).resolve().parents[1]
ENV = {**os.environ, 'OMP_NUM_THREADS': '1'}
SHAPE = (24, 20, 8)   # voxels of 1 x 1 x 2 mm
BODY = (slice(4, 20), slice(3, 17), slice(1, 7))
ORGAN = (slice(8, 14), slice(6, 12), slice(2, 5))


def make_ct_case(images, labels, case_id, seed=0, image_name=None, values=(0, 1, 2), spacing=(1.0, 1.0, 2.0),
                 label_shape=None, writer=write_nifti, suffix='.nii.gz'):
    """Air (-1024) around a body block of about 0 HU, an organ (label values[1]) with a core (values[2])."""
    rng = np.random.default_rng(seed)
    image = np.full(SHAPE, -1024.0, np.float32)
    image[BODY] = rng.normal(0, 20, image[BODY].shape)
    image[ORGAN] = 100 + rng.normal(0, 5, image[ORGAN].shape)
    label = np.full(label_shape or SHAPE, values[0], np.int16)
    label[ORGAN] = values[1]
    label[9:11, 7:9, 3:4] = values[2]
    writer(Path(images) / f'{image_name or case_id}{suffix}', image, spacing=spacing)
    writer(Path(labels) / f'{case_id}{suffix}', label, spacing=spacing)
    return image, label


def make_set(root, count=5, **kw):
    for i in range(count):
        make_ct_case(root / 'imagesTr', root / 'labelsTr', f'case_{i:03d}', seed=i, **kw)
    return root / 'imagesTr', root / 'labelsTr'


def read_h5(path):
    with h5py.File(path, 'r') as f:
        assert sorted(f) == ['image', 'label']
        assert f['image'].dtype == np.float32 and f['label'].dtype == np.uint8
        assert f['image'].compression == 'gzip'
        return f['image'][()], f['label'][()]


def run(*argv):
    return subprocess.run([sys.executable, *argv], cwd=REPO, capture_output=True, text=True, env=ENV, timeout=300)


def test_end_to_end_import_check_train_test(tmp_path):
    """The README's commands on a generated CT set: import, check, 4 training iterations, evaluation."""
    images, labels = make_set(tmp_path)
    out = tmp_path / 'MyTask'
    done = run('-m', 'importers.import_volumes', '--images', str(images), '--labels', str(labels),
               '--out_dir', str(out), '--modality', 'ct', '--spacing', '1,1,1', '--crop', 'nonzero',
               '--min_size', '16,16,16', '--test_fraction', '0.2')
    assert done.returncode == 0, done.stderr
    assert 'wrote 5 cases' in done.stdout and '4 in train.list, 1 in test.list' in done.stdout
    assert 'labels: values 0..2 kept (3 classes)' in done.stdout and 'warning' not in done.stdout
    train_ids, test_ids = (out / 'train.list').read_text().split(), (out / 'test.list').read_text().split()
    assert sorted(train_ids + test_ids) == [f'case_{i:03d}' for i in range(5)] and len(test_ids) == 1
    image, label = read_h5(out / 'case_000.h5')
    # body box x 4..19, y 3..16 (1 mm), z 1..6 at 2 mm -> 2..12 at 1 mm; grown to 16 by the lineage's rule
    assert image.shape == label.shape == (16, 16, 16)
    assert 0 <= image.min() and image.max() <= 1 and set(np.unique(label)) == {0, 1, 2}
    check = run('-m', 'importers.check', '--root_path', str(out), '--pattern', '{id}.h5', '--num_classes', '3')
    assert check.returncode == 0 and '4 cases OK' in check.stdout, check.stdout + check.stderr
    flags = ['--dataset', 'h5', '--root_path', str(out), '--num_classes', '3', '--patch_size', '16,16,16',
             '--n_filters', '2', '--labelnum', '2', '--gpu', '-1', '--snapshot_path', str(tmp_path / 'run')]
    train = run('train.py', *flags, '--max_iterations', '4', '--batch_size', '2', '--labeled_bs', '1',
                '--num_workers', '0')
    assert train.returncode == 0, train.stderr[-2000:]
    test = run('test.py', *flags, '--no_progress')
    assert test.returncode == 0, test.stderr[-2000:]
    assert (tmp_path / 'run' / 'test_summary.json').is_file()


def test_ct_values_window_and_label_crop_with_margin(tmp_path):
    images, labels = make_set(tmp_path, count=2)
    lines = []
    iv.import_volumes(images, labels, tmp_path / 'out', 'ct', crop='label', test_fraction=0, warn=lines.append,
                      progress=False, margin=2, min_size=(4, 4, 4), crop_axes='xyz', window=(-100.0, 300.0))
    assert lines.count(iv.LABEL_CROP_WARNING) == 1 and 'told where the target is' in iv.LABEL_CROP_WARNING
    image, label = read_h5(tmp_path / 'out' / 'case_001.h5')
    source, _ = make_ct_case(tmp_path / 'again', tmp_path / 'again', 'x', seed=1)
    # organ x 8..13, y 6..11, z 2..4: 2 voxels of margin each side, no resampling; z's extent 4 - 2 is
    # under the minimum 4: (4 - 2) // 2 = 1 more each side, clipped at 0
    assert image.shape == (6 + 4, 6 + 4, 3 + 4 + 1)
    assert np.allclose(image, (np.clip(source[6:16, 4:14, 0:8], -100, 300) + 100) / 400)
    assert not (tmp_path / 'out' / 'test.list').exists()  # --test_fraction 0
    assert (tmp_path / 'out' / 'train.list').read_text() == 'case_000\ncase_001\n'


def test_mr_zscore_and_nonzero(tmp_path):
    images, labels = make_set(tmp_path, count=2)
    for nonzero in (False, True):
        out = tmp_path / f'out{nonzero}'
        iv.import_volumes(images, labels, out, 'mr', crop='none', test_fraction=0, warn=lambda line: None,
                          progress=False, min_size=(1, 1, 1), nonzero=nonzero)
        image, _ = read_h5(out / 'case_000.h5')
        values = image[image != 0] if nonzero else image
        assert image.shape == SHAPE and abs(values.mean()) < 1e-4 and abs(values.std() - 1) < 1e-4


def test_label_values_are_mapped_and_said(tmp_path):
    images, labels = make_set(tmp_path, count=2, values=(0, 2, 5))
    lines = []
    iv.import_volumes(images, labels, tmp_path / 'out', 'ct', crop='none', test_fraction=0, warn=lines.append,
                      progress=False, min_size=(1, 1, 1))
    assert 'labels: values 0, 2, 5 mapped in order to 0..2 (3 classes; 0 is the background)' in lines[0]
    _, label = read_h5(tmp_path / 'out' / 'case_000.h5')
    assert label[8, 6, 2] == 1 and label[9, 7, 3] == 2 and label[0, 0, 0] == 0


def test_pairs_msd_nnunet_and_nrrd_names(tmp_path):
    images, labels = tmp_path / 'imagesTr', tmp_path / 'labelsTr'
    make_ct_case(images, labels, 'la_003')                             # MSD
    make_ct_case(images, labels, 'la_004', image_name='la_004_0000')   # nnU-Net channel 0
    make_ct_case(images, labels, 'la_005', writer=write_nrrd, suffix='.nrrd')
    (images / '._la_003.nii.gz').write_bytes(b'macOS resource fork')  # beside MSD's files: not a volume
    test_ids = tmp_path / 'test_ids.txt'
    test_ids.write_text('la_005\n')
    assert iv.main(['--images', str(images), '--labels', str(labels), '--out_dir', str(tmp_path / 'out'),
                    '--modality', 'ct', '--test_ids', str(test_ids), '--min_size', '8,8,8']) == 0
    assert (tmp_path / 'out' / 'train.list').read_text() == 'la_003\nla_004\n'
    assert (tmp_path / 'out' / 'test.list').read_text() == 'la_005\n'
    # the NRRD holds the same array in LPS space: the patient's x and y the other way, so RAS cases are mirrored
    nrrd_case = read_h5(tmp_path / 'out' / 'la_005.h5')[0]
    assert np.array_equal(read_h5(tmp_path / 'out' / 'la_003.h5')[0], nrrd_case[::-1, ::-1])


def run_main(argv, capsys):
    with pytest.raises(SystemExit) as info:
        run_cli(iv.main, argv)
    last = str(info.value.code)
    err = capsys.readouterr().err  # the progress bar's lines, and every problem but the last
    assert 'Traceback' not in err and last.startswith('error: ') and '\n' not in last
    return [line for line in err.splitlines() if line.startswith('error: ')] + [last]


@pytest.mark.parametrize('case, message', [
    ('no_label', 'case_009.nii.gz: image without a label (no case_009'),
    ('no_image', 'case_009.nii.gz: label without an image (no case_009 or case_009_0000'),
    ('shape', 'labelsTr/case_009.nii.gz: shape 24x20x9 but its image'),
    ('spacing', 'labelsTr/case_009.nii.gz: spacing 1x1x2 mm but its image'),
    ('fractional', 'labelsTr/case_009.nii.gz: label values are not all integers (e.g. 0.5)'),
    ('nan', 'imagesTr/case_009.nii.gz: 1 voxels are NaN or infinite'),
    ('channel', 'case_009_0001.nii.gz: channel 0001 of case case_009'),
    ('empty', 'imagesTr: no volume files (.nii.gz, .nii, .nrrd) in the folder'),
])
def test_bad_inputs_one_line_each_nothing_written(tmp_path, capsys, case, message):
    images, labels = make_set(tmp_path, count=2)
    bad_image, bad_label = images / 'case_009.nii.gz', labels / 'case_009.nii.gz'
    if case != 'empty':
        make_ct_case(images, labels, 'case_009')
    if case == 'no_label':
        bad_label.unlink()
    elif case == 'no_image':
        bad_image.unlink()
    elif case == 'shape':
        make_ct_case(images, labels, 'case_009', label_shape=(24, 20, 9))
    elif case == 'spacing':
        write_nifti(bad_image, read_scan(bad_image)[0], spacing=(1.0, 1.0, 2.5))
    elif case == 'fractional':
        write_nifti(bad_label, np.full(SHAPE, 0.5, np.float32), spacing=(1.0, 1.0, 2.0))
    elif case == 'nan':
        array = read_scan(bad_image)[0].astype(np.float32)
        array[0, 0, 0] = np.nan
        write_nifti(bad_image, array, spacing=(1.0, 1.0, 2.0))
    elif case == 'channel':
        bad_image.rename(images / 'case_009_0000.nii.gz')
        make_ct_case(images, tmp_path / 'ignored', 'x', image_name='case_009_0001')
    else:
        for path in list(images.iterdir()):
            path.unlink()
    out = tmp_path / 'out'
    lines = run_main(['--images', str(images), '--labels', str(labels), '--out_dir', str(out), '--modality', 'ct'],
                     capsys)
    assert len(lines) == 1 and message in lines[0], lines
    assert not out.exists()


def test_every_problem_is_reported_once(tmp_path, capsys):
    images, labels = make_set(tmp_path, count=3)
    (labels / 'case_000.nii.gz').unlink()
    make_ct_case(images, labels, 'case_002', label_shape=(24, 20, 9))
    lines = run_main(['--images', str(images), '--labels', str(labels), '--out_dir', str(tmp_path / 'out'),
                      '--modality', 'ct', '--crop', 'label'], capsys)
    assert len(lines) == 2 and 'case_000.nii.gz: image without a label' in lines[0]
    assert 'case_002.nii.gz: shape 24x20x9' in lines[1] and not (tmp_path / 'out').exists()


def test_nonzero_crop_is_the_body_box(tmp_path):
    images, labels = make_set(tmp_path, count=2)
    iv.import_volumes(images, labels, tmp_path / 'out', 'ct', crop='nonzero', test_fraction=0,
                      warn=lambda line: None, progress=False, min_size=(1, 1, 1), crop_axes='xy')
    image, label = read_h5(tmp_path / 'out' / 'case_000.h5')
    assert image.shape == (16, 14, 8)  # BODY's x 4..19 and y 3..16, every voxel of it; z whole ('xy')
    assert (label > 0).sum() == 6 * 6 * 3 and (label == 2).sum() == 2 * 2 * 1  # the organ and its core are inside
