"""What the importers refuse before any work, and the unusual inputs they must keep taking (volumes/checks.py):
a label on its image's grid in world space, label values, finite voxels and header geometry, numeric flags,
volume sizes, and an output folder replaced whole. Every volume is made in the test."""
import importlib

import h5py
import numpy as np
import pytest

from conftest import one_line_error, require_extra
from importers import import_volumes as iv
from importers import preprocess_la as la
from importers import preprocess_pancreas as pp
from importers.volumes import (MIN_AXIS, VolumeError, align_label, label_value_problem, make_recipe, scan_problem,
                                 size_problem)
from make_volumes import write_nifti, write_nrrd

SHAPE = (20, 18, 16)
ORGAN = (slice(6, 12), slice(5, 10), slice(4, 9))
AFFINE = np.diag([1.0, 1.0, 2.0, 1.0])


def ct_pair(seed=0):
    """(HU float32, label int16 0/1/2): air around a soft-tissue body holding an organ with a core."""
    image = np.full(SHAPE, -1000.0, np.float32)
    image[2:18, 2:16, 1:15] = np.random.default_rng(seed).normal(0, 20, (16, 14, 14))
    image[ORGAN] = 120.0
    label = np.zeros(SHAPE, np.int16)
    label[ORGAN] = 1
    label[8:10, 6:8, 5:7] = 2
    return image, label


def flipped(array, affine, axis):
    """The same volume stored with `axis` reversed: the array flipped and the affine's axis negated, its
    origin moved to the other end, so that every voxel keeps its world position."""
    out = affine.copy()
    out[:3, 3] += affine[:3, axis] * (array.shape[axis] - 1)
    out[:3, axis] = -affine[:3, axis]
    return np.flip(array, axis), out


def transposed(array, affine, order):
    out = affine.copy()
    out[:3, :3] = affine[:3, list(order)]
    return np.transpose(array, order), out


def write_set(root, count=2, label_edit=None, image_edit=None):
    """imagesTr/labelsTr of `count` cases; the edits take and return (array, affine) of case 0."""
    for i in range(count):
        image, label = ct_pair(i)
        image_affine, label_affine = AFFINE, AFFINE
        if i == 0 and image_edit:
            image, image_affine = image_edit(image, AFFINE)
        if i == 0 and label_edit:
            label, label_affine = label_edit(label, AFFINE)
        write_nifti(root / 'imagesTr' / f'c{i}.nii.gz', image, affine=image_affine)
        write_nifti(root / 'labelsTr' / f'c{i}.nii.gz', label, affine=label_affine)
    return ['--images', str(root / 'imagesTr'), '--labels', str(root / 'labelsTr'), '--modality', 'ct',
            '--crop', 'none', '--min_size', '4,4,4', '--test_fraction', '0']


def shifted(affine, mm):
    out = affine.copy()
    out[0, 3] += mm
    return out


def h5_label(path):
    with h5py.File(path, 'r') as f:
        return f['label'][()]


def bad_header(path, shape, row):
    """A NIfTI whose sform's x row is `row` (NaN or zero: nibabel refuses to write such an affine itself)."""
    nib = require_extra('nibabel')
    header = nib.Nifti1Header()
    header.set_data_shape(shape)
    header.set_data_dtype(np.int16)
    header['qform_code'], header['sform_code'] = 0, 1
    header['srow_x'], header['srow_y'], header['srow_z'] = row, [0, 1, 0, 0], [0, 0, 2, 0]
    nib.save(nib.Nifti1Image(np.zeros(shape, np.int16), None, header), str(path))


# ----------------------------------------------------------------------------- geometry

def test_a_label_stored_flipped_and_transposed_lands_on_the_organ():
    image, label = ct_pair()
    other, other_affine = flipped(*transposed(*flipped(label, AFFINE, 0), (2, 0, 1)), 1)
    assert other.shape != label.shape
    back = align_label(other, other_affine, image.shape, AFFINE, 'l.nii.gz', 'i.nii.gz')
    np.testing.assert_array_equal(back, label)
    # and onto an image itself stored flipped: the label follows the image's voxel order
    image_flipped, image_affine = flipped(image, AFFINE, 2)
    np.testing.assert_array_equal(align_label(label, AFFINE, image_flipped.shape, image_affine, 'l', 'i'),
                                  np.flip(label, 2))


@pytest.mark.parametrize('edit, words', [
    (lambda a: shifted(a, 3.0), ['origin lies 3 mm', 'tolerance 0.1 mm']),
    (lambda a: a @ np.array([[np.cos(0.1), -np.sin(0.1), 0, 0], [np.sin(0.1), np.cos(0.1), 0, 0],
                             [0, 0, 1, 0], [0, 0, 0, 1]]), ['5.73 degrees']),
    (lambda a: a @ np.diag([1.0, 1.0, 1.01, 1.0]), ['spacing 1x1x2.02 mm', 'has 1x1x2 mm']),
])
def test_a_label_off_its_image_is_refused_naming_both_files_and_the_difference(edit, words):
    _, label = ct_pair()
    affine = edit(AFFINE)
    with pytest.raises(VolumeError) as info:
        align_label(label, affine, SHAPE, AFFINE, 'lab.nii.gz', 'img.nii.gz')
    text = str(info.value)
    assert text.startswith('lab.nii.gz: ') and 'img.nii.gz' in text and '\n' not in text
    for word in words:
        assert word in text, text


def test_import_puts_a_flipped_label_on_the_organ_and_keeps_a_negative_determinant(tmp_path):
    """A label exported flipped along y, and a radiological image (x reversed, determinant < 0) with its
    label: the h5 labels equal those of the plain set."""
    plain = write_set(tmp_path / 'plain')
    assert iv.main(plain + ['--out_dir', str(tmp_path / 'a')]) == 0
    assert iv.main(write_set(tmp_path / 'flip', label_edit=lambda a, m: flipped(a, m, 1))
                   + ['--out_dir', str(tmp_path / 'b')]) == 0
    both = write_set(tmp_path / 'radio', label_edit=lambda a, m: flipped(a, m, 0),
                     image_edit=lambda a, m: flipped(a, m, 0))
    assert iv.main(both + ['--out_dir', str(tmp_path / 'c')]) == 0
    expected = h5_label(tmp_path / 'a' / 'c0.h5')
    assert (expected == 1).sum() > 0
    np.testing.assert_array_equal(h5_label(tmp_path / 'b' / 'c0.h5'), expected)
    # the radiological case is the same anatomy stored with x reversed: brought to the recipe's orientation,
    # flips included, it gives the plain set's arrays
    np.testing.assert_array_equal(h5_label(tmp_path / 'c' / 'c0.h5'), expected)


# ----------------------------------------------------------------------------- label values

def test_label_values():
    assert label_value_problem(np.array([0.0, 1.0], np.float32), 'l') is None
    assert 'value -1 is negative' in label_value_problem(np.array([-1, 0, 1]), 'l')
    assert 'not all integers (e.g. 0.5)' in label_value_problem(np.array([0, 0.5]), 'l')
    assert 'not all integers (e.g. nan)' in label_value_problem(np.array([0, np.nan]), 'l')
    assert 'value 2 is not among --label_values 0,3' in label_value_problem(np.array([0, 2]), 'l', (0, 3))
    assert label_value_problem(np.array([0, 3]), 'l', (0, 3)) is None


def test_float_labels_import_and_label_values_fix_the_classes(tmp_path, capsys):
    argv = write_set(tmp_path, label_edit=lambda a, m: ((a == 1).astype(np.float32), m))
    out = tmp_path / 'out'
    assert iv.main(argv + ['--out_dir', str(out), '--label_values', '0,1,2,3']) == 0
    assert 'values 0..3 kept (4 classes)' in capsys.readouterr().out
    assert set(np.unique(h5_label(out / 'c0.h5'))) == {0, 1}
    assert '"3": 3' in (out / 'dataset.json').read_text()


def test_scl_slope_and_inter_are_applied(tmp_path):
    """An int16 image stored as (HU + 1024) / 2 with scl_slope 2, scl_inter -1024: read back as HU."""
    nib = require_extra('nibabel')
    image, label = ct_pair()
    img = nib.Nifti1Image(((image + 1024) / 2).astype(np.int16), AFFINE)
    img.header.set_slope_inter(2.0, -1024.0)
    (tmp_path / 'imagesTr').mkdir()
    nib.save(img, str(tmp_path / 'imagesTr' / 'c0.nii.gz'))
    write_nifti(tmp_path / 'labelsTr' / 'c0.nii.gz', label, affine=AFFINE)
    read, _, _ = iv.read_pair(tmp_path / 'imagesTr' / 'c0.nii.gz', tmp_path / 'labelsTr' / 'c0.nii.gz')
    np.testing.assert_allclose(read[ORGAN], 120.0)
    assert read.min() == -1000.0


# ----------------------------------------------------------------------------- one line, nothing written

def run_main(argv, capsys):
    """Every problem's line (the last one is the exit message) joined by newlines."""
    last = one_line_error(iv.main, argv)
    err = capsys.readouterr().err
    assert 'Traceback' not in err
    return '\n'.join([line for line in err.splitlines() if line.startswith('error: ')] + [last])


@pytest.mark.parametrize('case, flags, words', [
    ('origin', [], ['c0.nii.gz: its origin lies 2 mm', 'imagesTr/c0.nii.gz']),
    ('negative', [], ['labelsTr/c0.nii.gz: label value -1 is negative']),
    ('other value', ['--label_values', '0,1'], ['labelsTr/c0.nii.gz: label value 2 is not among --label_values 0,1']),
    ('nan voxel', [], ['imagesTr/c0.nii.gz: 1 voxels are NaN or infinite']),
    ('nan header', [], ['imagesTr/c0.nii.gz: the header\'s geometry (affine) holds NaN']),
    ('singular header', [], ['imagesTr/c0.nii.gz: the header\'s geometry (affine) is singular']),
    ('tiny', [], ['imagesTr/c0.nii.gz: 3x3x2 voxels', f'minimum of {MIN_AXIS}']),
    ('ok', ['--spacing', '0,1,1'], ['--spacing 0,1,1: every value must be above 0']),
    ('ok', ['--spacing=-1,1,1'], ['--spacing -1,1,1: every value must be above 0']),
    ('ok', ['--spacing', 'nan,1,1'], ['--spacing nan,1,1: every value must be a finite number']),
    ('ok', ['--spacing', '1e-4,1e-4,1e-4'], ['c0.nii.gz: 200000x180000x320000 voxels at --spacing 0.0001',
                                             'more than the maximum']),
    ('ok', ['--spacing', '10,10,10'], ['c0.nii.gz: 2x1x3 voxels at --spacing 10,10,10', 'minimum of 4']),
    ('ok', ['--window', '300,-100'], ['--window 300,-100: LO must be below HI']),
    ('ok', ['--min_size', '100000,100000,100000'], ['--min_size 100000,100000,100000: more than']),
    ('ok', ['--seed', '-1'], ['--seed -1: every value must be at least 0']),
    ('ok', ['--label_values', '0,-3'], ['--label_values: value -3 is negative']),
    ('ok', ['--test_fraction', 'nan'], ['--test_fraction nan: must be in [0, 1)']),
])
def test_what_import_volumes_refuses_is_one_line_and_writes_nothing(tmp_path, capsys, case, flags, words):
    label_edit = image_edit = None
    if case == 'origin':
        label_edit = lambda a, m: (a, shifted(m, 2.0))  # noqa: E731
    elif case == 'negative':
        label_edit = lambda a, m: (np.where(a == 0, -1, a), m)  # noqa: E731
    elif case == 'nan voxel':
        image_edit = lambda a, m: (np.where(np.arange(a.size).reshape(a.shape) == 5, np.nan, a), m)  # noqa: E731
    argv = write_set(tmp_path, label_edit=label_edit, image_edit=image_edit)
    image_path = tmp_path / 'imagesTr' / 'c0.nii.gz'
    if case in ('nan header', 'singular header'):
        bad_header(image_path, SHAPE, [np.nan, 0, 0, 0] if case == 'nan header' else [0, 0, 0, 0])
    elif case == 'tiny':
        write_nifti(image_path, np.zeros((3, 3, 2), np.int16))
        write_nifti(tmp_path / 'labelsTr' / 'c0.nii.gz', np.ones((3, 3, 2), np.int16))
    out = tmp_path / 'out'
    message = run_main(argv + flags + ['--out_dir', str(out)], capsys)
    for word in words:
        assert word in message, message
    assert not out.exists()


def test_an_older_import_is_refused_without_overwrite_and_replaced_whole_with_it(tmp_path, capsys):
    out = tmp_path / 'out'
    argv = write_set(tmp_path / 'old', count=3) + ['--test_fraction', '0.4', '--out_dir', str(out)]
    assert iv.main(argv) == 0
    assert (out / 'test.list').exists() and (out / 'c2.h5').exists()
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    new = write_set(tmp_path / 'new', count=2) + ['--out_dir', str(out)]
    message = run_main(new, capsys)
    assert f'--out_dir {out}: the folder holds files' in message and '--overwrite' in message
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    assert iv.main(new + ['--overwrite']) == 0
    # the new import alone: no old case, no old test.list, no staging folder left beside it
    assert sorted(p.name for p in out.iterdir()) == ['c0.h5', 'c1.h5', 'dataset.json', 'train.list']
    assert (out / 'train.list').read_text() == 'c0\nc1\n'
    assert sorted(p.name for p in tmp_path.iterdir()) == ['new', 'old', 'out']


# ----------------------------------------------------------------------------- Pancreas and LA importers

def pancreas_case(root, hu_edit=None):
    hu = np.full((24, 24, 8), -1000, np.int16).astype(np.float32)
    hu[4:20, 4:20, 1:7] = 40
    label = np.zeros(hu.shape, np.uint8)
    label[8:14, 8:14, 2:5] = 1
    write_nifti(root / 'images' / 'image0001.nii.gz', hu if hu_edit is None else hu_edit(hu))
    write_nifti(root / 'labels' / 'label0001.nii.gz', label)
    return ['--nifti_dir', str(root / 'images'), '--label_dir', str(root / 'labels')]


@pytest.mark.parametrize('case, flags, words', [
    ('nan', [], ['image0001.nii.gz: 1 voxels are NaN or infinite']),
    ('ok', ['--spacing', '0,1,1'], ['--spacing 0,1,1: every value must be above 0']),
    ('ok', ['--spacing', '1e-4,1e-4,1e-4'], ['label0001.nii.gz: 240000x240000x80000 voxels', 'more than']),
    ('ok', ['--spacing', '9,9,9'], ['label0001.nii.gz: 2x2x0 voxels at --spacing 9,9,9', 'minimum of 4']),
    ('old', [], ['the folder holds files', '--overwrite']),
])
def test_what_preprocess_pancreas_refuses_is_one_line(tmp_path, case, flags, words):
    argv = pancreas_case(tmp_path, (lambda hu: np.where(np.arange(hu.size).reshape(hu.shape) == 100, np.nan, hu))
                         if case == 'nan' else None)
    out = tmp_path / 'out'
    if case == 'old':
        out.mkdir()
        (out / 'test.list').write_text('image0099\n')
    message = one_line_error(pp.main, argv + flags + ['--out_dir', str(out)])
    for word in words:
        assert word in message, message
    assert (case == 'old') == out.exists()
    if case == 'old':
        assert [p.name for p in out.iterdir()] == ['test.list']


def test_preprocess_pancreas_overwrite_replaces_the_folder(tmp_path):
    out = tmp_path / 'out'
    out.mkdir()
    (out / 'image0099_norm.h5').write_text('an older case')
    assert pp.main(pancreas_case(tmp_path) + ['--out_dir', str(out), '--overwrite']) == 0
    assert not (out / 'image0099_norm.h5').exists() and (out / 'image0001_norm.h5').exists()


@pytest.mark.parametrize('case, flags, words', [
    ('nan', [], ['case A: lgemri.nrrd: 1 voxels are NaN or infinite']),
    ('ok', ['--seed', '-1'], ['--seed -1: every value must be at least 0']),
    ('old', [], ['the folder holds files', '--overwrite']),
])
def test_what_preprocess_la_refuses_is_one_line(tmp_path, case, flags, words):
    require_extra('nrrd')
    image = np.random.default_rng(0).normal(100, 10, (30, 30, 6)).astype(np.float32)
    if case == 'nan':
        image[1, 2, 3] = np.nan
    laendo = np.zeros(image.shape, np.uint8)
    laendo[10:20, 10:20, 2:4] = 255
    write_nrrd(tmp_path / 'raw' / 'A' / 'lgemri.nrrd', image)
    write_nrrd(tmp_path / 'raw' / 'A' / 'laendo.nrrd', laendo)
    out = tmp_path / 'out'
    if case == 'old':
        out.mkdir()
        (out / 'train.list').write_text('OLD\n')
    message = one_line_error(la.main, ['--raw_dir', str(tmp_path / 'raw'), '--out_dir', str(out)] + flags)
    for word in words:
        assert word in message, message
    assert (case == 'old') == out.exists()


def write_la_nrrd(path, array, directions, origin):
    nrrd = require_extra('nrrd')
    path.parent.mkdir(parents=True, exist_ok=True)
    nrrd.write(str(path), array, header={'encoding': 'gzip', 'space': 'left-posterior-superior',
                                         'space directions': np.asarray(directions, float).tolist(),
                                         'space origin': np.asarray(origin, float).tolist()})


def la_raw(root, label_edit=None):
    """One raw LA case whose laendo.nrrd is edited: label_edit(array, directions, origin) -> the same three."""
    image = np.random.default_rng(0).normal(100, 10, (30, 28, 6)).astype(np.float32)
    laendo = np.zeros(image.shape, np.uint8)
    laendo[10:20, 8:14, 2:4] = 255
    directions, origin = np.diag([0.625, 0.625, 2.5]), np.array([-10.0, 20.0, 5.0])
    write_la_nrrd(root / 'A' / 'lgemri.nrrd', image, directions, origin)
    write_la_nrrd(root / 'A' / 'laendo.nrrd', *(label_edit or (lambda *a: a))(laendo, directions, origin))
    return root


def nrrd_flipped(array, directions, origin, axis=0):
    """The same mask stored with `axis` reversed: every voxel keeps its world position."""
    directions, origin = directions.copy(), origin + directions[axis] * (array.shape[axis] - 1)
    directions[axis] = -directions[axis]
    return np.flip(array, axis), directions, origin


def test_preprocess_la_puts_a_flipped_laendo_on_its_image_and_refuses_one_off_it(tmp_path):
    require_extra('nrrd')
    outputs = []
    for name, edit in (('same', None), ('flipped', nrrd_flipped)):
        la.preprocess_la(la_raw(tmp_path / name), tmp_path / f'out_{name}', progress=False)
        with h5py.File(tmp_path / f'out_{name}' / la.LA_SUBDIR / 'A' / 'mri_norm2.h5', 'r') as f:
            outputs.append((f['image'][()], f['label'][()]))
    assert outputs[1][1].any()
    for same, flipped_case in zip(*outputs):
        np.testing.assert_array_equal(same, flipped_case)
    raw = la_raw(tmp_path / 'shifted', lambda a, d, o: (a, d, o + [0.0, 0.0, 5.0]))
    message = one_line_error(la.main, ['--raw_dir', str(raw), '--out_dir', str(tmp_path / 'out')])
    assert 'A/laendo.nrrd' in message and 'A/lgemri.nrrd' in message and '5 mm' in message, message
    assert not (tmp_path / 'out').exists()


def test_preprocess_pancreas_refuses_a_label_of_another_voxel_size(tmp_path):
    argv = pancreas_case(tmp_path)
    label = np.zeros((24, 24, 8), np.uint8)
    label[8:14, 8:14, 2:5] = 1
    write_nifti(tmp_path / 'labels' / 'label0001.nii.gz', label, spacing=(1.0, 1.0, 2.5))
    message = one_line_error(pp.main, argv + ['--out_dir', str(tmp_path / 'out')])
    assert 'label0001.nii.gz: spacing 1x1x2.5 mm but its image' in message and 'image0001.nii.gz' in message
    assert '1x1x1 mm' in message and not (tmp_path / 'out').exists()


# ----------------------------------------------------------------------------- segment.py's scan checks

def test_scan_problem_refuses_a_tiny_scan_and_a_singular_header():
    require_extra('nibabel')  # the recipe's orientation step reorients with nibabel
    recipe = make_recipe('ct', 'RAS', (1.0, 1.0, 1.0), 1, [], 'nonzero', 'xyz', 0, (16, 16, 16), (0, 1), '')
    scan = np.full((3, 3, 3), -1000.0, np.float32)
    assert f'3x3x3 voxels at the recipe\'s spacing 1,1,1, fewer than the minimum of {MIN_AXIS}' in \
        scan_problem(scan, recipe, np.eye(4))
    assert 'singular' in scan_problem(np.full((8, 8, 8), -1000.0), recipe, np.diag([1.0, 0.0, 1.0, 1.0]))
    assert 'NaN or infinite' in scan_problem(np.full((8, 8, 8), -1000.0), recipe, np.diag([1.0, np.nan, 1.0, 1.0]))
    air = np.full((8, 8, 8), -1000.0)
    air[2:6, 2:6, 2:6] = 40.0  # a body in air
    assert scan_problem(air, recipe, np.eye(4)) is None
    assert 'blank: every voxel is -1000' in scan_problem(np.full((8, 8, 8), -1000.0), recipe, np.eye(4))
    assert size_problem((8, 8, 8), 'x') is None


# ----------------------------------------------------------------------------- one-line flag errors

@pytest.mark.parametrize('module, argv, words', [
    ('import_volumes', ['--images', 'i', '--labels', 'l', '--out_dir', 'o', '--modality', 'ct', '--spacing',
                        '-1,1,1'], 'argument --spacing: expected one argument'),
    ('import_volumes', ['--images', 'i', '--labels', 'l', '--out_dir', 'o', '--modality', 'ct', '--spacing=abc'],
     "argument --spacing: 'abc': expected 3 comma-separated numbers"),
    ('preprocess_pancreas', ['--nifti_dir', 'i', '--label_dir', 'l', '--spacing', '-1,1,1'],
     'argument --spacing: expected one argument'),
    ('preprocess_pancreas', ['--nifti_dir', 'i', '--label_dir', 'l', '--spacing=abc'],
     "argument --spacing: 'abc': expected 3 comma-separated numbers"),
    ('preprocess_la', ['--raw_dir', 'r', '--out_dir', 'o', '--seed', '-x'], 'argument --seed: expected one argument'),
    ('preprocess_la', ['--raw_dir', 'r', '--out_dir', 'o', '--seed=abc'], "argument --seed: invalid int value: 'abc'"),
    ('check', ['--root_path', 'r', '--num_classes=abc'], "argument --num_classes: invalid int value: 'abc'"),
    ('check', ['--root_path', 'r', '--num_classes', '0'], '--num_classes must be >= 1, got 0'),
])
def test_a_bad_flag_is_one_line_naming_it_without_the_usage_block(module, argv, words, capsys):
    from utils.cli import run_cli
    script = importlib.import_module(f'importers.{module}')
    with pytest.raises(SystemExit) as info:
        run_cli(script.main, argv)
    assert info.value.code == 2
    captured = capsys.readouterr()
    assert captured.out == '' and captured.err == f'python -m importers.{module}: error: {words} (see --help)\n'
