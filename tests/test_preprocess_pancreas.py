"""preprocess_pancreas on a generated TCIA-style download: DICOM series + NIH label NIfTI, both recipes, the
lineage's lists, the duplicate warning, bad inputs, and train.py/test.py --dataset pancreas on the output."""
import os
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest

from importers import preprocess_pancreas as pp
from importers.volumes import read_recipe
from conftest import one_line_error
from make_volumes import write_ct_series, write_nifti

REPO = Path(__file__).resolve().parents[1]
JPEG_LS = '1.2.840.10008.1.2.4.80'
SHAPE = (160, 160, 10)          # voxels of 1 x 1 x 2.5 mm
ORGAN_HU, BONE_HU, AIR_HU = 40, 300, -1000


def make_case(root, n, shape=SHAPE, slice_mm=2.5, label_shape=None, **series):
    """PANCREAS_<n>/<study>/<series>/*.dcm and label<n>.nii.gz: air, an organ block of 40 HU holding the
    label (x and y 70..89, slices 4..7) and a bone block of 300 HU. Stored values = HU + 1024."""
    hu = np.full(shape, AIR_HU, np.int16)
    label = np.zeros(label_shape or shape, np.uint8)
    if shape[0] > 100:
        hu[60:100, 60:100, 1:shape[2] - 1] = ORGAN_HU
        hu[20:40, 120:140, :] = BONE_HU
        label[70:90, 70:90, 4:8] = 1
    else:
        hu[2:6, 2:6, :] = ORGAN_HU
        label[3:5, 3:5, 1:2] = 1
    write_ct_series(root / 'Pancreas-CT' / f'PANCREAS_{n}' / '11-24-2015-PANCREAS0001-Pancreas-18957' / 'series',
                    hu + 1024, slope=1.0, intercept=-1024.0, pixel_mm=(1.0, 1.0), slice_mm=slice_mm, **series)
    write_nifti(root / 'labels' / f'label{n}.nii.gz', label, spacing=(1.0, 1.0, slice_mm))


def read_h5(path):
    with h5py.File(path, 'r') as f:
        assert sorted(f) == ['image', 'label']
        assert f['image'].dtype == np.float32 and f['label'].dtype == np.uint8
        return f['image'][()], f['label'][()]


@pytest.fixture(scope='module')
def download(tmp_path_factory):
    root = tmp_path_factory.mktemp('tcia')
    for n in ('0001', '0002', '0003', '0070'):
        make_case(root, n)
    return root


@pytest.fixture(scope='module')
def outputs(download):
    """Both recipes on the same download: {recipe: (out_dir, warnings)}."""
    result = {}
    for recipe in ('mcnet', 'coranet'):
        lines = []
        out = download / f'out_{recipe}'
        ids = pp.preprocess_pancreas(out, download / 'labels', dicom_dir=download / 'Pancreas-CT', recipe=recipe,
                                     progress=False, warn=lines.append)
        assert ids == ['0001', '0002', '0003', '0070']
        result[recipe] = out, lines
    return result


def test_coranet_recipe_window_3d_crop_and_padding(outputs):
    out, _ = outputs['coranet']
    image, label = read_h5(out / 'image0001_norm.h5')
    # 1 mm: z 10 x 2.5 = 25 voxels; label slices 4..7 -> z 9..18 (nearest). Box: x, y 70..89 plus 25
    # plus (96 - 19) // 2 = 38 each side -> [7, 152); z [0, 25) clipped; then padded to 96 (35 before)
    assert image.shape == label.shape == (145, 145, 96)
    assert label.sum() == 20 * 20 * 10 and set(np.unique(label)) == {0, 1}
    inside = image[:, :, 35:60]
    assert inside.min() == 0.0 and inside.max() == 1.0            # air and bone clipped by the window
    assert np.allclose(image[label == 1], (ORGAN_HU + 125) / 400)  # 40 HU in [-125, 275] -> 0.4125
    assert (image[:, :, :35] == 0).all() and (image[:, :, 60:] == 0).all()  # padding: the crop's minimum
    xs = np.nonzero(label)[0]
    assert xs.min() == 70 - 7 and xs.max() == 89 - 7


def test_mcnet_recipe_is_the_zscored_xy_crop(outputs):
    image, label = read_h5(outputs['mcnet'][0] / 'image0001_norm.h5')
    window, window_label = read_h5(outputs['coranet'][0] / 'image0001_norm.h5')
    # on this case the x/y boxes agree and z is whole in both, so MC-Net's is CoraNet's crop z-scored
    assert image.shape == (145, 145, 96) and np.array_equal(label, window_label)
    inside, crop = image[:, :, 35:60], window[:, :, 35:60].astype(np.float64)
    assert abs(inside.mean()) < 1e-4 and abs(inside.std() - 1) < 1e-4
    assert np.allclose(inside, (crop - crop.mean()) / crop.std(), atol=1e-5)
    assert (image[:, :, :35] == inside.min()).all()


def test_each_recipe_is_written_as_it_ran(outputs):
    for recipe, axes, steps in (('mcnet', 'xy', ['window', 'zscore']), ('coranet', 'xyz', ['window'])):
        written = read_recipe(outputs[recipe][0])
        assert [(s['step'], s['on']) for s in written['intensity']] == list(zip(steps, ('volume', 'crop')))
        assert written['intensity'][0]['window'] == [-125.0, 275.0] and written['crop_axes'] == axes
        assert written['crop'] == 'label' and written['spacing'] == [1.0, 1.0, 1.0] and written['orientation'] == 'RAS'
        assert written['labels'] == {'0': 0, '1': 1} and written['min_size'] == [96, 96, 96]


def test_lists_as_the_lineage_ships_them_and_the_duplicate_warning(outputs):
    out, warnings = outputs['mcnet']
    # MC-Net's train.list order: ... 0070 (11th), ... 0002 (53rd), ... 0003 (62nd); 0001 is a test case
    assert (out / 'train.list').read_text() == 'image0070\nimage0002\nimage0003\n'
    assert (out / 'test.list').read_text() == 'image0001\n'
    assert (out / 'mcnet_train.list').read_text() == (out / 'train.list').read_text()
    assert (out / 'coranet_train.list').read_text() == 'image0001\nimage0002\nimage0003\n'  # 0070 dropped
    assert not (out / 'coranet_test.list').exists()  # none of 0064..0082 but 0070 was imported
    assert any('case 0070 is a duplicate scan' in w for w in warnings)
    assert any('coranet_test.list not written' in w for w in warnings)
    coranet_out = outputs['coranet'][0]
    assert (coranet_out / 'train.list').read_text() == 'image0001\nimage0002\nimage0003\n'
    assert sorted(p.name for p in out.iterdir() if p.suffix == '.h5') == [
        'image0001_norm.h5', 'image0002_norm.h5', 'image0003_norm.h5', 'image0070_norm.h5']


def test_published_lists():
    from importers.pancreas_lists import CORANET_LABELED, CORANET_TEST, CORANET_UNLABELED, MCNET_TEST, MCNET_TRAIN
    assert len(MCNET_TRAIN) == 62 and len(MCNET_TEST) == 20
    assert sorted(MCNET_TRAIN + MCNET_TEST) == [f'{n:04d}' for n in range(1, 83)]
    assert MCNET_TEST[:3] == ('0050', '0059', '0037') and MCNET_TRAIN[:3] == ('0057', '0018', '0062')
    assert (len(CORANET_LABELED), len(CORANET_UNLABELED), len(CORANET_TEST)) == (12, 50, 18)
    assert '0025' not in CORANET_UNLABELED and '0070' not in CORANET_TEST and CORANET_TEST[-1] == '0082'


def test_nifti_dir_gives_the_same_files(tmp_path, download, outputs):
    """--nifti_dir: the series converted to image{NNNN}.nii.gz (MC-Net's first notebook cell)."""
    from importers.volumes import read_ct_series
    hu, _ = read_ct_series(download / 'Pancreas-CT' / 'PANCREAS_0002')
    write_nifti(tmp_path / 'images' / 'image0002.nii.gz', hu, spacing=(1.0, 1.0, 2.5))
    (tmp_path / 'labels').mkdir()
    (tmp_path / 'labels' / 'label0002.nii.gz').write_bytes((download / 'labels' / 'label0002.nii.gz').read_bytes())
    pp.preprocess_pancreas(tmp_path / 'out', tmp_path / 'labels', nifti_dir=tmp_path / 'images', progress=False,
                           warn=lambda line: None)
    assert np.array_equal(read_h5(tmp_path / 'out' / 'image0002_norm.h5')[0],
                          read_h5(outputs['mcnet'][0] / 'image0002_norm.h5')[0])


def run_main(argv):
    return one_line_error(pp.main, argv)


@pytest.mark.parametrize('case, message', [
    ('image_without_label', 'PANCREAS_0009: image without a label (no label0009.nii.gz'),
    ('label_without_image', 'label0009.nii.gz: label without an image (no DICOM folder PANCREAS_0009'),
    ('not_ct', 'PANCREAS_0009: no CT slice among its 3 DICOM files (Modality MR)'),
    ('compressed', 'pixel data are compressed (JPEG-LS Lossless'),
    ('shape', 'PANCREAS_0009: image is 8x8x3 voxels but its label'),
    ('blank', 'PANCREAS_0009: the image is blank: every voxel is -1024'),
])
def test_bad_inputs_are_one_line_and_write_nothing(tmp_path, case, message):
    make_case(tmp_path, '0001', shape=(8, 8, 3))  # a good case, processed before the bad one
    if case == 'image_without_label':
        make_case(tmp_path, '0009', shape=(8, 8, 3))
        (tmp_path / 'labels' / 'label0009.nii.gz').unlink()
    elif case == 'label_without_image':
        write_nifti(tmp_path / 'labels' / 'label0009.nii.gz', np.ones((8, 8, 3), np.uint8))
    elif case == 'not_ct':
        make_case(tmp_path, '0009', shape=(8, 8, 3), modality='MR')
    elif case == 'compressed':
        make_case(tmp_path, '0009', shape=(8, 8, 3), syntax=JPEG_LS)
    elif case == 'blank':  # a series of one value: an empty export
        write_ct_series(tmp_path / 'Pancreas-CT' / 'PANCREAS_0009' / 'series', np.zeros((8, 8, 3), np.int16),
                        pixel_mm=(1.0, 1.0), slice_mm=2.5)
        write_nifti(tmp_path / 'labels' / 'label0009.nii.gz', np.ones((8, 8, 3), np.uint8), spacing=(1.0, 1.0, 2.5))
    else:
        make_case(tmp_path, '0009', shape=(8, 8, 3), label_shape=(8, 8, 4))
    out = tmp_path / 'out'
    text = run_main(['--dicom_dir', str(tmp_path / 'Pancreas-CT'), '--label_dir', str(tmp_path / 'labels'),
                     '--out_dir', str(out)])
    assert message in text, text
    assert not out.exists()  # not even the good case


def slice_edit(at, key, value):
    return lambda z, ds: setattr(ds, key, value) if z == at else None


@pytest.mark.parametrize('case, message', [
    ('two series', ['PANCREAS_0009: holds 2 CT series, choose one with --series UID',
                    '1.2.9.1 (CT, 8x8x3 voxels, "PANCREAS")', '1.2.9.2 (CT, 8x8x4 voxels, "LOCALIZER")']),
    ('gap', ['PANCREAS_0009', 'are 5 mm apart but the series\' spacing is 2.5 mm (a missing slice?)']),
    ('duplicate', ['PANCREAS_0009', 'two slices at one position (0 mm along the normal)']),
    ('too few', ['PANCREAS_0009', 'the CT series has 2 slices; at least 3']),
    ('orientation', ['PANCREAS_0009', 'slices of different orientations']),
    ('damaged', ['PANCREAS_0009', 'slice001.dcm: damaged DICOM file']),
])
def test_bad_series_are_one_line_and_write_nothing(tmp_path, case, message):
    make_case(tmp_path, '0001', shape=(8, 8, 3))
    series = {'series_uid': '1.2.9.1', 'description': 'PANCREAS'}
    if case == 'gap':
        series['order'] = [0, 2, 3]
    elif case == 'duplicate':
        series['edit'] = slice_edit(1, 'ImagePositionPatient', [0.0, 0.0, 0.0])
    elif case == 'too few':
        series['order'] = [0, 1]
    elif case == 'orientation':
        series['edit'] = slice_edit(1, 'ImageOrientationPatient', [0.0, 1.0, 0.0, 1.0, 0.0, 0.0])
    make_case(tmp_path, '0009', shape=(8, 8, 4 if case == 'gap' else 3), **series)
    folder = tmp_path / 'Pancreas-CT' / 'PANCREAS_0009'
    if case == 'two series':
        write_ct_series(folder / 'localizer', np.zeros((8, 8, 4), np.int16), series_uid='1.2.9.2',
                        description='LOCALIZER')
    elif case == 'damaged':
        victim = next(folder.rglob('slice001.dcm'))
        victim.write_bytes(victim.read_bytes()[:300])
    if case == 'gap':  # the label of the 3 slices written
        write_nifti(tmp_path / 'labels' / 'label0009.nii.gz', np.ones((8, 8, 3), np.uint8), spacing=(1.0, 1.0, 2.5))
    out = tmp_path / 'out'
    text = run_main(['--dicom_dir', str(tmp_path / 'Pancreas-CT'), '--label_dir', str(tmp_path / 'labels'),
                     '--out_dir', str(out)])
    for words in message:
        assert words in text, text
    assert not out.exists()  # not even the good case


def test_series_chooses_the_series_of_a_case_that_holds_two(tmp_path):
    """--series names the series of the one case that needs it; the other cases hold one series each."""
    make_case(tmp_path, '0001', shape=(8, 8, 3))
    make_case(tmp_path, '0002', shape=(8, 8, 3), series_uid='1.2.9.1')
    write_ct_series(tmp_path / 'Pancreas-CT' / 'PANCREAS_0002' / 'localizer', np.zeros((8, 8, 4), np.int16),
                    series_uid='1.2.9.2')
    out = tmp_path / 'out'
    assert pp.main(['--dicom_dir', str(tmp_path / 'Pancreas-CT'), '--label_dir', str(tmp_path / 'labels'),
                    '--out_dir', str(out), '--series', '1.2.9.1', '--series', '7.7']) == 0
    assert sorted(p.name for p in out.glob('*.h5')) == ['image0001_norm.h5', 'image0002_norm.h5']


def test_empty_folders(tmp_path):
    (tmp_path / 'dicom').mkdir()
    make_case(tmp_path, '0001', shape=(8, 8, 3))
    text = run_main(['--dicom_dir', str(tmp_path / 'dicom'), '--label_dir', str(tmp_path / 'labels'),
                     '--out_dir', str(tmp_path / 'out')])
    assert f'{tmp_path / "dicom"}: no DICOM folder PANCREAS_{{NNNN}} in the folder' in text
    (tmp_path / 'nolabels').mkdir()
    text = run_main(['--dicom_dir', str(tmp_path / 'Pancreas-CT'), '--label_dir', str(tmp_path / 'nolabels'),
                     '--out_dir', str(tmp_path / 'out')])
    assert 'nolabels: no label files label{NNNN}.nii.gz' in text and not (tmp_path / 'out').exists()


def test_train_and_test_dataset_pancreas_read_the_output(outputs, tmp_path):
    """The README's commands, shrunk: --dataset pancreas reads image{NNNN}_norm.h5 through train.list/test.list."""
    out = str(outputs['mcnet'][0])
    env = {**os.environ, 'OMP_NUM_THREADS': '1'}
    small = ['--root_path', out, '--gpu', '-1', '--n_filters', '2', '--patch_size', '32,32,32',
             '--snapshot_path', str(tmp_path / 'run')]
    train = subprocess.run([sys.executable, 'train.py', '--dataset', 'pancreas', '--labelnum', '2', '--max_iterations',
                            '2', '--batch_size', '2', '--labeled_bs', '1', '--num_workers', '0'] + small,
                           cwd=REPO, capture_output=True, text=True, env=env, timeout=300)
    assert train.returncode == 0, train.stderr[-2000:]
    test = subprocess.run([sys.executable, 'test.py', '--dataset', 'pancreas', '--labelnum', '2', '--no_progress',
                           '--stride_xy', '32', '--stride_z', '32'] + small,
                          cwd=REPO, capture_output=True, text=True, env=env, timeout=300)
    assert test.returncode == 0, test.stderr[-2000:]
    assert '1 cases' in test.stdout and (tmp_path / 'run' / 'test_summary.json').is_file()
