"""The import pipeline's steps (dataloaders/volumes) on tiny volumes written in the test."""
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest

from dataloaders.volumes import (StagingDir, VolumeError, body_mask, bounding_box, ct_window, label_box, pad_to,
                                 read_ct_series, read_volume, resample, write_case_h5, write_list, zscore)
from dataloaders.volumes.orient import to_xyz
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
    stored = np.zeros((3, 3, 2), np.int16)
    write_ct_series(tmp_path / 'ct', stored + 5, intercept=0.0)
    write_ct_series(tmp_path / 'sr', stored, modality='SR')  # another modality in the same folder tree
    (tmp_path / 'README.txt').write_text('not a DICOM file')
    hu, _ = read_ct_series(tmp_path)
    assert hu.shape == (3, 3, 2) and (hu == 5).all()


@pytest.mark.parametrize('make, message', [
    (lambda d: write_ct_series(d, np.zeros((3, 3, 2), np.int16), modality='MR'), 'no CT slice'),
    (lambda d: write_ct_series(d, np.zeros((3, 3, 2), np.int16), syntax=JPEG_LS), 'compressed (JPEG-LS'),
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


def test_nifti_and_nrrd_read_as_xyz_with_spacing(tmp_path):
    array = np.arange(2 * 3 * 4, dtype=np.int16).reshape(2, 3, 4)
    write_nifti(tmp_path / 'a.nii.gz', array, spacing=(0.5, 0.75, 3.0))
    write_nrrd(tmp_path / 'a.nrrd', array, spacing=(0.5, 0.75, 3.0))
    for name in ('a.nii.gz', 'a.nrrd'):
        back, spacing = read_volume(tmp_path / name)
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
    back, spacing = read_volume(tmp_path / 'zxy.nii.gz')
    assert np.array_equal(back, out) and spacing == pytest.approx((0.5, 0.75, 2.5))


def test_missing_extra_is_one_line_naming_file_and_pip(tmp_path, monkeypatch):
    for module in ('nibabel', 'nrrd', 'pydicom'):
        monkeypatch.setitem(sys.modules, module, None)  # import raises ImportError
    for path, package in ((tmp_path / 'a.nii.gz', 'nibabel'), (tmp_path / 'a.nrrd', 'pynrrd')):
        with pytest.raises(VolumeError, match=f'{path}: reading .* needs the optional package {package}: '
                                              f'pip install {package}$'):
            read_volume(path)
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


def test_dataloaders_imports_nothing_outside_itself():
    """dataloaders/ is copied alone into other projects: no utils, networks, losses or scripts."""
    code = ('import sys, dataloaders.volumes, dataloaders.import_volumes, dataloaders.preprocess_pancreas, '
            'dataloaders.preprocess_la; bad = [m for m in sys.modules if m.split(".")[0] in '
            '("utils", "networks", "losses", "train", "test")]; print(bad); sys.exit(bool(bad))')
    result = subprocess.run([sys.executable, '-c', code], cwd=REPO, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
