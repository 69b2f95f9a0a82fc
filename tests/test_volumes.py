"""The import pipeline's steps (importers/volumes) on tiny volumes written in the test."""
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest

from importers.volumes import (StagingDir, VolumeError, body_mask, bounding_box, ct_window, label_box, pad_to,
                                 read_ct_scan, read_ct_series, read_with_spacing, resample, write_case_h5, write_list, zscore)
from importers.volumes.orient import to_xyz
from conftest import require_extra
from make_volumes import write_ct_series, write_nifti, write_nrrd

REPO = Path(__file__).resolve().parents[1]
JPEG_LS = '1.2.840.10008.1.2.4.80'  # a compressed syntax pydicom cannot decode without pylibjpeg or gdcm


# ----------------------------------------------------------------------------- read

def test_dicom_hu_from_slope_and_intercept_sorted_by_instance_number(tmp_path):
    stored = np.arange(4 * 3 * 5, dtype=np.int16).reshape(4, 3, 5) * 10
    # files named in the reverse of InstanceNumber order: reading must sort by InstanceNumber
    write_ct_series(tmp_path / 'series', stored, slope=2.0, intercept=-1000.0, pixel_mm=(0.6, 0.8), slice_mm=2.5)
    hu, spacing = read_ct_series(tmp_path)  # any depth below the folder
    assert hu.dtype == np.float32 and hu.shape == (4, 3, 5)
    assert np.array_equal(hu, stored * 2.0 - 1000.0)
    assert hu[1, 2, 3] == (1 * 15 + 2 * 5 + 3) * 10 * 2 - 1000  # x = column, y = row, z = InstanceNumber - 1
    assert spacing == pytest.approx((0.6, 0.8, 2.5))


def test_dicom_keeps_only_ct_slices(tmp_path):
    stored = np.zeros((3, 3, 3), np.int16)
    write_ct_series(tmp_path / 'ct', stored + 5, intercept=0.0)
    write_ct_series(tmp_path / 'sr', stored, modality='SR')  # another modality in the same folder tree
    (tmp_path / 'README.txt').write_text('not a DICOM file')
    hu, _ = read_ct_series(tmp_path)
    assert hu.shape == (3, 3, 3) and (hu == 5).all()


@pytest.mark.parametrize('make, message', [
    (lambda d: write_ct_series(d, np.zeros((3, 3, 3), np.int16), modality='MR'), 'no CT slice'),
    (lambda d: write_ct_series(d, np.zeros((3, 3, 3), np.int16), syntax=JPEG_LS), 'compressed (JPEG-LS'),
    (lambda d: d.mkdir(), 'no DICOM file'),
])
def test_dicom_bad_series_is_one_line(tmp_path, make, message):
    require_extra('pydicom')  # an empty folder too: read_ct_series asks for pydicom first
    make(tmp_path / 'case')
    with pytest.raises(VolumeError) as info:
        read_ct_series(tmp_path / 'case')
    text = str(info.value)
    assert message in text and str(tmp_path / 'case') in text and '\n' not in text
    if 'compressed' in message:
        assert 'pip install pylibjpeg' in text and text.split(':')[0].endswith('.dcm')  # names the file


def refused(folder, *words, series=None):
    """The one-line VolumeError of reading the series in folder; it names folder (or a file in it)."""
    with pytest.raises(VolumeError) as info:
        read_ct_series(folder, series)
    text = str(info.value)
    assert '\n' not in text and text.startswith(str(folder)), text
    for word in words:
        assert word in text, text
    return text


def ramp(depth=5):
    """(4, 3, depth) stored values, each voxel its own: which slice went where shows in the result."""
    return np.arange(4 * 3 * depth, dtype=np.int16).reshape(4, 3, depth)


def test_dicom_two_ct_series_are_refused_listing_them_and_series_chooses_one(tmp_path):
    write_ct_series(tmp_path / 'a', ramp(5), intercept=0.0, series_uid='1.2.3.1', description='ABDOMEN 2.5mm')
    write_ct_series(tmp_path / 'b', ramp(4)[:2, :2] + 100, intercept=0.0, series_uid='1.2.3.2',
                    description='SCOUT')
    refused(tmp_path, '2 CT series', '--series UID', '1.2.3.1 (CT, 4x3x5 voxels, "ABDOMEN 2.5mm")',
            '1.2.3.2 (CT, 2x2x4 voxels, "SCOUT")')
    hu, _ = read_ct_series(tmp_path, '1.2.3.2')
    assert np.array_equal(hu, ramp(4)[:2, :2] + 100)
    refused(tmp_path, 'no series 9.9 (--series)', '1.2.3.1 (CT', series='9.9')
    # a collection (preprocess_pancreas's repeated --series): the one of them in the folder
    assert np.array_equal(read_ct_series(tmp_path, ['7.7', '1.2.3.1'])[0], ramp(5))


def test_dicom_ct_beside_mr_reads_the_ct_series(tmp_path):
    write_ct_series(tmp_path, ramp(3), intercept=0.0, series_uid='1.2.3.1')
    write_ct_series(tmp_path / 'mr', ramp(4) * 0, modality='MR', series_uid='1.2.3.2')
    assert np.array_equal(read_ct_series(tmp_path)[0], ramp(3))
    refused(tmp_path, '--series 1.2.3.2 is 1.2.3.2 (MR, 4x3x4 voxels', 'only CT', series='1.2.3.2')


def test_dicom_slices_are_sorted_by_position_not_instance_number(tmp_path):
    """InstanceNumbers shuffled against the positions: the stack follows the positions. Numbered against
    the normal (the lineage's stack order): the stack runs that way and the affine says so."""
    shuffled = {0: 3, 1: 1, 2: 5, 3: 2, 4: 4}
    write_ct_series(tmp_path / 'a', ramp(), intercept=0.0, edit=lambda z, ds: setattr(ds, 'InstanceNumber',
                                                                                       shuffled[z]))
    assert np.array_equal(read_ct_series(tmp_path / 'a')[0], ramp())
    write_ct_series(tmp_path / 'b', ramp(), intercept=0.0, slice_mm=2.0,
                    edit=lambda z, ds: setattr(ds, 'InstanceNumber', 5 - z))
    hu, spacing, affine = read_ct_scan(tmp_path / 'b')
    assert np.array_equal(hu, ramp()[:, :, ::-1]) and spacing == pytest.approx((0.7, 0.7, 2.0))
    # voxel (i, j, k) lies where its slice says: ImagePositionPatient (LPS) + i x 0.7 mm along x, in RAS
    for k in range(5):
        z = 4 - k
        np.testing.assert_allclose(affine @ [1, 2, k, 1], [-(1 * 0.7), -(2 * 0.7), z * 2.0, 1])


def shift(key, value, at=2):
    """edit for write_ct_series: slice z == at gets ds.key = value."""
    return lambda z, ds: setattr(ds, key, value) if z == at else None


@pytest.mark.parametrize('case, write, words', [
    ('gap', dict(order=[0, 1, 3, 4]), ['slice001.dcm and slice002.dcm are 5 mm apart', 'spacing is 2.5 mm',
                                       'missing slice']),
    ('duplicate', dict(edit=shift('ImagePositionPatient', [0.0, 0.0, 2.5])), ['two slices at one position (2.5 mm']),
    ('one slice', dict(order=[0]), ['has 1 slice;', 'at least 3']),
    ('two slices', dict(order=[0, 1]), ['has 2 slices;', 'at least 3']),
    ('orientation', dict(edit=shift('ImageOrientationPatient', [1.0, 0.0, 0.0, 0.0, 0.8, 0.6])),
     ['slices of different orientations', '1\\0\\0\\0\\0.8\\0.6']),
    ('pixel spacing', dict(edit=shift('PixelSpacing', [0.7, 0.8])), ['slices of different PixelSpacing', '0.7\\0.8']),
    ('size', dict(edit=shift('Rows', 2)), ['slices of different sizes']),
    ('zero spacing', dict(edit=shift('PixelSpacing', [0.0, 0.7])), ['PixelSpacing 0\\0.7 mm is not positive']),
    ('degenerate orientation', dict(edit=shift('ImageOrientationPatient', [1.0, 0.0, 0.0, 1.0, 0.0, 0.0])),
     ['is not two orthogonal unit vectors']),
    ('no position', dict(edit=lambda z, ds: delattr(ds, 'ImagePositionPatient') if z == 2 else None),
     ['ImagePositionPatient is missing', 'cannot place the slice']),
    ('tilt', dict(edit=lambda z, ds: setattr(ds, 'ImagePositionPatient', [0.0, z * 0.5, z * 2.5])),
     ['gantry-tilted']),
])
def test_dicom_bad_geometry_is_refused_in_one_line(tmp_path, case, write, words):
    write_ct_series(tmp_path / 'case', ramp(), **write)
    refused(tmp_path / 'case', *words)


def test_dicom_increments_within_the_tolerance_are_one_series(tmp_path):
    """Positions rounded to 0.01 mm (as scanners write them) are no gap: 0.8333 mm steps written 0.83 / 0.84;
    half a slice more is one."""
    write_ct_series(tmp_path, ramp(), slice_mm=0.8333,
                    edit=lambda z, ds: setattr(ds, 'ImagePositionPatient', [0.0, 0.0, round(z * 0.8333, 2)]))
    _, spacing = read_ct_series(tmp_path)
    assert spacing[2] == pytest.approx(0.8333, abs=2e-3)
    write_ct_series(tmp_path / 'b', ramp(), slice_mm=0.8333, order=range(5), edit=lambda z, ds: setattr(
        ds, 'ImagePositionPatient', [0.0, 0.0, round(z * 0.8333 + (0.4 if z > 2 else 0), 2)]))
    refused(tmp_path / 'b', 'slice002.dcm and slice003.dcm are 1.23 mm apart', 'may differ by 0.02 mm')


@pytest.mark.parametrize('damage', ['header cut', 'pixels cut', 'not DICOM', 'empty'])
def test_dicom_damaged_file_is_named_not_skipped(tmp_path, damage):
    folder = write_ct_series(tmp_path / 'case', ramp())
    victim = folder / 'slice002.dcm'
    data = victim.read_bytes()
    victim.write_bytes({'header cut': data[:300], 'pixels cut': data[:-10], 'not DICOM': b'\x00' * 500,
                        'empty': b''}[damage])
    text = refused(folder, f'{victim}: damaged DICOM file')
    assert text.startswith(str(victim))


def test_nifti_and_nrrd_read_as_xyz_with_spacing(tmp_path):
    array = np.arange(2 * 3 * 4, dtype=np.int16).reshape(2, 3, 4)
    write_nifti(tmp_path / 'a.nii.gz', array, spacing=(0.5, 0.75, 3.0))
    write_nrrd(tmp_path / 'a.nrrd', array, spacing=(0.5, 0.75, 3.0))
    for name in ('a.nii.gz', 'a.nrrd'):
        back, spacing = read_with_spacing(tmp_path / name)
        assert np.array_equal(back, array) and spacing == pytest.approx((0.5, 0.75, 3.0)), name


def test_reorient_permutes_axes_and_keeps_spacing(tmp_path):
    """A volume stored (z, x, y): its array axis 0 points along world z."""
    array = np.arange(4 * 2 * 3).reshape(4, 2, 3)
    directions = np.array([[0, 0, -2.5], [0.5, 0, 0], [0, 0.75, 0]])  # row a: world vector of array axis a
    out, spacing = to_xyz(array, directions)
    assert out.shape == (2, 3, 4) and spacing == pytest.approx((0.5, 0.75, 2.5))
    assert out[1, 2, 3] == array[3, 1, 2]  # axes moved, never flipped
    affine = np.zeros((4, 4))
    affine[:3, :3] = directions.T
    affine[3, 3] = 1
    write_nifti(tmp_path / 'zxy.nii.gz', array.astype(np.int16), affine=affine)
    back, spacing = read_with_spacing(tmp_path / 'zxy.nii.gz')
    assert np.array_equal(back, out) and spacing == pytest.approx((0.5, 0.75, 2.5))


def test_missing_extra_is_one_line_naming_file_and_pip(tmp_path, monkeypatch):
    for module in ('nibabel', 'nrrd', 'pydicom'):
        monkeypatch.setitem(sys.modules, module, None)  # import raises ImportError
    for path, package in ((tmp_path / 'a.nii.gz', 'nibabel'), (tmp_path / 'a.nrrd', 'pynrrd')):
        with pytest.raises(VolumeError, match=f'{path}: reading .* needs the optional package {package}: '
                                              f'pip install {package}$'):
            read_with_spacing(path)
    with pytest.raises(VolumeError, match='pip install pydicom$'):
        read_ct_series(tmp_path)


# ----------------------------------------------------------------------------- resample, intensity, crop

def test_resample_anisotropic_volume_to_1mm():
    """8 x 8 x 4 voxels of 0.5 x 0.5 x 2 mm = 4 x 4 x 8 mm -> 4 x 4 x 8 voxels of 1 mm; a linear ramp stays
    the ramp of world position (voxel i at i x spacing mm), a label keeps its values."""
    x, y, z = np.meshgrid(np.arange(8) * 0.5, np.arange(8) * 0.5, np.arange(4) * 2.0, indexing='ij')
    image = (x + 10 * y + 100 * z).astype(np.float32)
    out, spacing = resample(image, (0.5, 0.5, 2.0), (1.0, 1.0, 1.0))
    assert out.shape == (4, 4, 8) and spacing == (1.0, 1.0, 1.0) and out.dtype == np.float32
    i, j, k = np.meshgrid(np.arange(4), np.arange(4), np.arange(7), indexing='ij')  # z = 7 mm is past the data
    assert np.allclose(out[:, :, :7], i + 10 * j + 100 * k, atol=1e-3)
    label = (image > 300).astype(np.uint8) * 3
    out_label, _ = resample(label, (0.5, 0.5, 2.0), (1.0, 1.0, 1.0), order=0)
    assert out_label.dtype == np.uint8 and set(np.unique(out_label)) == {0, 3}
    # floor(size x spacing / target), as the lineage's SimpleITK code
    assert resample(np.zeros((10, 10, 7), np.float32), (0.7, 0.7, 2.5), (1, 1, 1))[0].shape == (7, 7, 17)


def test_ct_window():
    hu = np.array([-1000, -125, 75, 275, 3000], dtype=np.float32)
    assert ct_window(hu, -125, 275).tolist() == [0.0, 0.0, 0.5, 1.0, 1.0]
    with pytest.raises(VolumeError, match='upper bound'):
        ct_window(hu, 10, 10)


def test_zscore_statistics():
    rng = np.random.default_rng(0)
    image = rng.normal(50, 7, (10, 10, 10)).astype(np.float32)
    out = zscore(image)
    assert out.dtype == np.float32 and abs(out.mean()) < 1e-5 and abs(out.std() - 1) < 1e-5
    image[:5] = 0  # background
    out = zscore(image, nonzero=True)
    assert (out[:5] == 0).all() and abs(out[5:].mean()) < 1e-5 and abs(out[5:].std() - 1) < 1e-5
    with pytest.raises(VolumeError, match='case7: is constant'):
        zscore(np.ones((2, 2, 2)), name='case7')


def test_label_box_margins_minimum_size_and_axes():
    mask = np.zeros((250, 150, 40), np.uint8)
    mask[100:121, 60:101, 10:20] = 1  # x 100..120 (extent 20), y 60..100 (extent 40), z 10..19
    assert bounding_box(mask) == [(100, 120), (60, 100), (10, 19)]
    # no minimum: lo - m_lo .. hi + m_hi (exclusive), the lineage's box
    assert label_box(mask, [(25, 25)] * 2, (0, 0), (0, 1)) == (slice(75, 145), slice(35, 125), slice(0, 40))
    # minimum 96: pad = (96 - extent) // 2 more on each side; z untouched along 'xy'
    assert label_box(mask, [(25, 25)] * 2, (96, 96), (0, 1)) == (slice(100 - 25 - 38, 120 + 25 + 38),
                                                                  slice(60 - 25 - 28, 150), slice(0, 40))
    # 'xyz' crops z too; the box is clipped to the volume (z: 10 - 25 - 43 < 0, 19 + 25 + 43 > 40)
    box = label_box(mask, [(25, 25)] * 3, (96, 96, 96), (0, 1, 2))
    assert box == (slice(37, 183), slice(7, 150), slice(0, 40))
    assert label_box(mask, [(3, 4)] * 3, (0, 0, 0), (0, 1, 2))[2] == slice(7, 23)


def test_pad_to_and_body_mask():
    array = np.ones((4, 10, 3), np.float32)
    out = pad_to(array, (7, 8, 6), value=-1)
    assert out.shape == (7, 10, 6) and (out[1:5, :, 1:4] == 1).all()
    assert out[:, 0, 0].tolist() == [-1] * 7 and out[0, 0, 1:4].tolist() == [-1] * 3  # 1 before, 2 after
    assert pad_to(array, (2, 2, 2), 0) is array
    ct = np.full((10, 10, 10), -1024.0)
    ct[2:5, 3:8, 4:6] = 40.0
    assert bounding_box(body_mask(ct)) == [(2, 4), (3, 7), (4, 5)]


# ----------------------------------------------------------------------------- write

def test_h5_keys_dtypes_gzip_and_lists(tmp_path):
    write_case_h5(tmp_path / 'a' / 'c.h5', np.arange(8, dtype=np.float64).reshape(2, 2, 2), np.ones((2, 2, 2), int))
    with h5py.File(tmp_path / 'a' / 'c.h5', 'r') as f:
        assert sorted(f) == ['image', 'label']
        assert f['image'].dtype == np.float32 and f['label'].dtype == np.uint8
        assert f['image'].compression == 'gzip' and f['label'].compression == 'gzip'
        assert f['image'][1, 1, 1] == 7
    write_list(tmp_path / 'train.list', ['b', 'a'])
    assert (tmp_path / 'train.list').read_text() == 'b\na\n'
    assert sorted(p.name for p in tmp_path.iterdir()) == ['a', 'train.list']  # no temporary file left


def test_staging_leaves_nothing_after_a_failure(tmp_path):
    out = tmp_path / 'new'
    with pytest.raises(RuntimeError):
        with StagingDir(out) as stage:
            write_case_h5(stage.path / 'c.h5', np.zeros((2, 2, 2)), np.zeros((2, 2, 2)))
            raise RuntimeError('the second case fails')
    assert not out.exists()
    (tmp_path / 'old').mkdir()
    (tmp_path / 'old' / 'keep.txt').write_text('x')
    with StagingDir(tmp_path / 'old') as stage:
        write_list(stage.path / 'sub' / 'train.list', ['a'])
        stage.commit()
    assert sorted(str(p.relative_to(tmp_path / 'old')) for p in (tmp_path / 'old').rglob('*')) == [
        'keep.txt', 'sub', 'sub/train.list']


def test_importers_import_neither_networks_losses_nor_a_script():
    """importers/ reads scans with numpy alone: importing it pulls in no network, loss or script, and its
    steps (importers.volumes) no utils (utils/volume_io.py imports them)."""
    code = ('import sys, importers.volumes; steps = [m for m in sys.modules if m.split(".")[0] == "utils"]; '
            'import importers.import_volumes, importers.preprocess_pancreas, importers.preprocess_la; '
            'bad = steps + [m for m in sys.modules if m.split(".")[0] in '
            '("networks", "losses", "train", "test", "segment")]; print(bad); sys.exit(bool(bad))')
    result = subprocess.run([sys.executable, '-c', code], cwd=REPO, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
