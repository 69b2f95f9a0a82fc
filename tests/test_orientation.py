"""A scan is a scan however it is stored (issue #34): one orientation for the networks, the same map for the
same scan, no refusal on a guess, blank scans refused, pictures in one orientation, rare label values named.

Everything is made here: a CT-like volume with an asymmetric structure fixed in the world (RAS), saved as
LAS, RAS, LPS and PIR; a checkpoint of randomly initialised tiny networks (no training: the maps must agree
whatever the weights are).
"""
import json

import h5py
import numpy as np
import pytest
import torch

from conftest import one_line_error, require_extra
from importers import import_volumes as iv
from importers.volumes import (legacy_warning, make_recipe, modality_problem,
                               read_recipe, read_scan, recipe_problems, scan_problem)
from importers.volumes.orient import axis_codes, orientation_problem
from make_volumes import write_nifti, write_nrrd
from test_test_script import segment_cli
from networks import build_net

nib = require_extra('nibabel')
from nibabel import orientations as nio  # noqa: E402 -- after the skip when nibabel is missing

STORED = ('LAS', 'RAS', 'LPS', 'PIR')
SHAPE = (22, 18, 14)                    # voxels along R, A, S
SPACING = (1.0, 1.25, 1.5)              # anisotropic: a wrong axis order changes the grid
ORIGIN = (-11.0, 7.0, 30.0)
PATCH = '16,16,16'


def world_scan(seed=0):
    """(HU int16, label 0/1/2, RAS affine) of a volume whose structures sit in fixed places in the world: a body
    of soft tissue in air, a bright organ (label 1) toward the patient's right, anterior and superior, and a
    dimmer one (label 2) toward left-posterior; noise drawn from the seed. Nothing in it is symmetric."""
    rng = np.random.default_rng(seed)
    x, y, z = np.meshgrid(*(np.arange(n) / n for n in SHAPE), indexing='ij')
    image = np.full(SHAPE, -1000.0)
    body = ((x - 0.5) / 0.45) ** 2 + ((y - 0.45) / 0.4) ** 2 < 1
    image[body] = rng.normal(20, 10, body.sum())
    bright = ((x - 0.7) / 0.14) ** 2 + ((y - 0.6) / 0.12) ** 2 + ((z - 0.7) / 0.2) ** 2 < 1
    dim = ((x - 0.3) / 0.1) ** 2 + ((y - 0.3) / 0.15) ** 2 + ((z - 0.35) / 0.15) ** 2 < 1
    image[bright] = rng.normal(200, 10, bright.sum())
    image[dim] = rng.normal(90, 10, dim.sum())
    label = np.where(bright, 1, np.where(dim, 2, 0))
    affine = np.diag([*SPACING, 1.0])
    affine[:3, 3] = ORIGIN
    return image.astype(np.int16), label.astype(np.uint8), affine


def stored_as(array, affine, codes):
    """(array, affine) of the same voxels in the world stored in orientation `codes` (nibabel's arithmetic)."""
    ornt = nio.ornt_transform(nio.io_orientation(affine), nio.axcodes2ornt(codes))
    return nio.apply_orientation(array, ornt), affine @ nio.inv_ornt_aff(ornt, array.shape)


def write_stored(folder, codes_list=STORED, seed=0, labels=None):
    """imagesTr/<codes>.nii.gz (and labelsTr/ when labels) of one world_scan, one file per orientation."""
    image, label, affine = world_scan(seed)
    for codes in codes_list:
        array, moved = stored_as(image, affine, codes)
        assert axis_codes(moved) == codes
        write_nifti(folder / 'imagesTr' / f'{codes.lower()}.nii.gz', array, affine=moved)
        if labels:
            write_nifti(folder / 'labelsTr' / f'{codes.lower()}.nii.gz', stored_as(label, affine, codes)[0],
                        affine=moved)
    return folder


def h5_arrays(path):
    with h5py.File(path, 'r') as f:
        return f['image'][()], f['label'][()]


# ----------------------------------------------------------------------------- one orientation at import

def test_import_brings_every_storage_order_to_the_recipes_orientation(tmp_path):
    root = write_stored(tmp_path, labels=True)
    out = tmp_path / 'data'
    assert iv.main(['--images', str(root / 'imagesTr'), '--labels', str(root / 'labelsTr'), '--out_dir', str(out),
                    '--modality', 'ct', '--spacing', '1.5,1.5,1.5', '--min_size', '8,8,8', '--test_fraction', '0']) == 0
    arrays = {codes: h5_arrays(out / f'{codes.lower()}.h5') for codes in STORED}
    for codes in STORED[1:]:
        for a, b in zip(arrays[codes], arrays[STORED[0]]):
            np.testing.assert_array_equal(a, b)
    assert set(np.unique(arrays['RAS'][1])) == {0, 1, 2}
    assert read_recipe(out)['orientation'] == 'RAS' and read_recipe(out)['format_version'] == 2
    # another orientation asked for: one anatomy again, the right-anterior organ now at low x and y
    assert iv.main(['--images', str(root / 'imagesTr'), '--labels', str(root / 'labelsTr'), '--out_dir',
                    str(tmp_path / 'lps'), '--modality', 'ct', '--min_size', '8,8,8', '--test_fraction', '0',
                    '--orientation', 'lps']) == 0
    lps = {codes: h5_arrays(tmp_path / 'lps' / f'{codes.lower()}.h5')[1] for codes in STORED}
    for codes in STORED[1:]:
        np.testing.assert_array_equal(lps[codes], lps[STORED[0]])
    assert read_recipe(tmp_path / 'lps')['orientation'] == 'LPS'
    for labels, toward_high in ((arrays['RAS'][1], True), (lps['RAS'], False)):
        centre = np.argwhere(labels == 1).mean(axis=0) / np.array(labels.shape)
        assert (centre[:2] > 0.5).all() if toward_high else (centre[:2] < 0.5).all()


def test_a_bad_orientation_flag_is_one_line(tmp_path):
    root = write_stored(tmp_path, ('RAS',), labels=True)
    message = one_line_error(iv.main, ['--images', str(root / 'imagesTr'), '--labels', str(root / 'labelsTr'),
                                       '--out_dir', str(tmp_path / 'out'), '--modality', 'ct', '--orientation', 'RAR'])
    assert '--orientation RAR: not an orientation' in message
    assert not (tmp_path / 'out').exists()
    assert orientation_problem('PIR') is None and orientation_problem('RAS ') is not None


# ----------------------------------------------------------------------------- the same scan, the same map

def random_checkpoint(path, recipe, num_classes=3, seed=1):
    """A train.py-shaped checkpoint of a random sup V-Net (n_filters 2) carrying `recipe`: its convolution weights
    drawn from N(0, 0.3) with a seed whose map holds all three classes on world_scan (PyTorch's initialisation,
    and some seeds, give one class everywhere, which would agree with any orientation)."""
    torch.manual_seed(seed)
    net = build_net('a', num_classes, 2)
    with torch.no_grad():
        for weight in (p for p in net.parameters() if p.dim() > 1):
            weight.normal_(0, 0.3)
    config = {'method': 'sup', 'dataset': 'h5', 'n_filters': 2, 'num_classes': num_classes, 'patch_size': [16] * 3,
              'stride_xy': 8, 'stride_z': 8, 'normalize': 'zscore', 'recipe': recipe}
    torch.save({'net_a': net.state_dict(), 'config': config, 'method': 'sup', 'iteration': 0}, path)
    return path


def ct_recipe(orientation='RAS', spacing=(1.5, 1.5, 1.5), crop='nonzero'):
    window = [{'step': 'window', 'window': [-125.0, 275.0], 'on': 'crop'}]
    return make_recipe('ct', orientation, spacing, 1, window, crop, 'xyz', 0, (16, 16, 16), (0, 1, 2), '')


def segment(checkpoint, scans, out, *extra):
    return segment_cli(['--checkpoint', str(checkpoint), '--gpu', '-1', '--no_progress', '--input', str(scans),
                        '--out_dir', str(out), *extra])


def in_ras(path):
    """(array, affine) of a NIfTI file brought to RAS by nibabel."""
    image = nib.as_closest_canonical(nib.load(str(path)))
    return np.asarray(image.dataobj), image.affine


def test_segment_gives_one_map_for_one_scan_however_stored(tmp_path, capsys):
    root = write_stored(tmp_path)
    checkpoint = random_checkpoint(tmp_path / 'random.pth', ct_recipe())
    assert segment(checkpoint, root / 'imagesTr', tmp_path / 'out', '--save_png') == 0
    maps = {codes: tmp_path / 'out' / 'predictions_input' / f'{codes.lower()}_pred.nii.gz' for codes in STORED}
    reference, reference_affine = in_ras(maps['RAS'])
    assert len(np.unique(reference)) > 1  # a map with something in it, even from random weights
    for codes, path in maps.items():
        stored, affine = read_scan(path)
        scan, scan_affine = read_scan(root / 'imagesTr' / f'{codes.lower()}.nii.gz')
        assert stored.shape == scan.shape and np.allclose(affine, scan_affine)  # on the scan's own grid
        array, ras_affine = in_ras(path)
        np.testing.assert_array_equal(array, reference)
        np.testing.assert_allclose(ras_affine, reference_affine, atol=1e-5)
    # the pictures are drawn in the networks' orientation: the same below their titles
    image = require_extra('matplotlib.image')
    pictures = [image.imread(tmp_path / 'out' / 'pictures_input' / f'{codes.lower()}.png')[60:] for codes in STORED]
    for picture in pictures[1:]:
        np.testing.assert_array_equal(picture, pictures[0])


def test_a_recipe_before_the_orientation_key_still_segments_with_one_warning(tmp_path, capsys):
    root = write_stored(tmp_path, ('RAS',))
    legacy = ct_recipe()
    legacy.pop('orientation')
    legacy.update(format_version=1, reorient=True)
    assert recipe_problems(legacy) == [] and 'predates the orientation key' in legacy_warning(legacy, 'c.pth')
    checkpoint = random_checkpoint(tmp_path / 'old.pth', legacy)
    assert segment(checkpoint, root / 'imagesTr', tmp_path / 'out') == 0
    warnings = [line for line in capsys.readouterr().err.splitlines() if 'predates the orientation key' in line]
    assert len(warnings) == 1 and 'old.pth' in warnings[0]
    # as today: a RAS scan is only permuted, so its map matches a current recipe's
    assert segment(random_checkpoint(tmp_path / 'new.pth', ct_recipe()), root / 'imagesTr', tmp_path / 'new') == 0
    np.testing.assert_array_equal(read_scan(tmp_path / 'out' / 'predictions_input' / 'ras_pred.nii.gz')[0],
                                  read_scan(tmp_path / 'new' / 'predictions_input' / 'ras_pred.nii.gz')[0])


# ----------------------------------------------------------------------------- odd inputs to segment.py

def odd_input(folder, case):
    """A file segment.py must refuse (or, for '4-D of 1', segment), written under folder."""
    image, _, affine = world_scan()
    path = folder / f'{case.replace(" ", "_")}.nii.gz'
    folder.mkdir(parents=True, exist_ok=True)
    if case == '4-D of 1':
        write_nifti(path, image[..., None], affine=affine)
    elif case == '5-D of 1s':
        write_nifti(path, image[..., None, None], affine=affine)
    elif case == '4-D of 3':
        write_nifti(path, np.stack([image] * 3, axis=-1), affine=affine)
    elif case == '2-D':
        write_nifti(path, image[:, :, 0], affine=affine)
    elif case == 'text':
        path.write_text('this is not an image\n')
    elif case == 'truncated':
        write_nifti(path, image, affine=affine)
        path.write_bytes(path.read_bytes()[:400])
    elif case == 'blank':
        write_nifti(path, np.full_like(image, -1000), affine=affine)
    elif case == 'rgb':
        nib.save(nib.Nifti1Image(np.zeros(SHAPE, dtype=[('R', 'u1'), ('G', 'u1'), ('B', 'u1')]), affine), str(path))
    elif case == 'nrrd':
        path = write_nrrd(folder / 'scan.nrrd', image, spacing=SPACING)
    return path


@pytest.mark.parametrize('case, words', [
    ('4-D of 3', ['is 4-D with shape (22, 18, 14, 3)']),
    ('2-D', ['is 2-D']),
    ('text', ['cannot read NIfTI']),
    ('truncated', ['cannot read NIfTI']),
    ('blank', ['the image is blank: every voxel is -1000']),
    ('rgb', ["holds [('R', 'u1'), ('G', 'u1'), ('B', 'u1')] voxels, expected one number per voxel"]),
])
def test_what_is_not_one_3d_scan_is_one_line_naming_it(tmp_path, capsys, case, words):
    require_extra('nrrd')
    checkpoint = random_checkpoint(tmp_path / 'random.pth', ct_recipe())
    path = odd_input(tmp_path / 'in', case)
    assert segment(checkpoint, path, tmp_path / 'out') == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith('error: ') and '\n' not in err and str(path) in err, err
    for word in words:
        assert word in err, err
    assert not (tmp_path / 'out').exists()


@pytest.mark.parametrize('case', ['4-D of 1', '5-D of 1s', 'nrrd'])
def test_a_trailing_axis_of_one_and_an_nrrd_are_segmented(tmp_path, case):
    require_extra('nrrd')
    checkpoint = random_checkpoint(tmp_path / 'random.pth', ct_recipe())
    path = odd_input(tmp_path / 'in', case)
    assert segment(checkpoint, path, tmp_path / 'out') == 0
    (written,) = (tmp_path / 'out' / 'predictions_input').iterdir()
    assert read_scan(written)[0].shape == SHAPE


def test_picture_edges_name_the_patients_directions():
    from dataloaders.pictures import edge_letters, panels
    # (left, right, top, bottom) of view()'s layout: axial shows axis 0 across and axis 1 down, the others z up
    assert edge_letters('RAS', 2) == ('L', 'R', 'P', 'A')
    assert edge_letters('RAS', 1) == ('L', 'R', 'S', 'I')
    assert edge_letters('LPS', 2) == ('R', 'L', 'A', 'P')
    assert panels('PIR') == (('axial', 1), ('coronal', 0), ('sagittal', 2))
    assert panels(None) == (('axial', 2), ('coronal', 1), ('sagittal', 0))


# ----------------------------------------------------------------------------- no refusal on a guess

def anatomical_like(seed=0):
    """An MR like nibabel's anatomical.nii: values in the hundreds to thousands, 0.08 % of the voxels negative
    down to -610 (noise at the edge of the field of view)."""
    rng = np.random.default_rng(seed)
    image = rng.normal(1800, 350, (33, 41, 25)).clip(300, 4000)
    flat = image.reshape(-1)
    bad = rng.choice(flat.size, int(0.0008 * flat.size), replace=False)
    flat[bad] = rng.uniform(-610, -1, bad.size)
    flat[bad[0]] = -610
    return image.astype(np.int16)


def test_a_real_mr_with_a_few_negative_voxels_is_not_refused_a_ct_and_an_mr_swapped_are():
    mr, ct = make_recipe('mr', 'RAS', None, 1, [], 'none', 'xyz', 0, (16, 16, 16), (0, 1), ''), ct_recipe()
    scan = anatomical_like()
    assert scan.min() == -610
    assert scan_problem(scan, mr, np.diag([2.0, 2.0, 2.0, 1.0])) is None
    hu, _, affine = world_scan()
    refused = scan_problem(hu, mr, affine)
    assert 'of its voxels are at or below -200' in refused and 'looks like a CT' in refused
    assert '--skip_modality_check' in refused
    refused = scan_problem(scan, ct, np.diag([2.0, 2.0, 2.0, 1.0]))
    assert 'not a CT in Hounsfield units' in refused and '--skip_modality_check' in refused
    assert modality_problem(hu, 'ct') is None and modality_problem(scan, 'mr') is None


def test_skip_modality_check_segments_with_a_warning(tmp_path, capsys):
    scan = tmp_path / 'in' / 'mr.nii.gz'
    write_nifti(scan, anatomical_like(), spacing=(2.0, 2.0, 2.0))
    checkpoint = random_checkpoint(tmp_path / 'random.pth', ct_recipe())
    assert segment(checkpoint, scan, tmp_path / 'out') == 1
    assert 'not a CT in Hounsfield units' in capsys.readouterr().err
    assert segment(checkpoint, scan, tmp_path / 'out', '--skip_modality_check') == 0
    err = capsys.readouterr().err
    assert 'warning: --input' in err and 'segmented anyway (--skip_modality_check)' in err
    assert (tmp_path / 'out' / 'predictions_input' / 'mr_pred.nii.gz').is_file()


# ----------------------------------------------------------------------------- blank scans at import

@pytest.mark.parametrize('modality', ['ct', 'mr'])
def test_import_refuses_a_blank_image_naming_it(tmp_path, modality):
    root = write_stored(tmp_path, ('RAS', 'LPS'), labels=True)
    _, label, affine = world_scan()
    write_nifti(root / 'imagesTr' / 'blank.nii.gz', np.zeros(SHAPE, np.int16), affine=affine)
    write_nifti(root / 'labelsTr' / 'blank.nii.gz', label, affine=affine)
    message = one_line_error(iv.main, ['--images', str(root / 'imagesTr'), '--labels', str(root / 'labelsTr'),
                                       '--out_dir', str(tmp_path / 'out'), '--modality', modality])
    assert f'{root / "imagesTr" / "blank.nii.gz"}: the image is blank: every voxel is 0' in message
    assert not (tmp_path / 'out').exists()


# ----------------------------------------------------------------------------- classes agreed before training

def test_a_label_saved_as_0_255_among_0_1_files_is_named(tmp_path, capsys):
    image, label, affine = world_scan()
    binary = (label > 0).astype(np.uint8)
    for i in range(4):
        write_nifti(tmp_path / 'imagesTr' / f'c{i}.nii.gz', image, affine=affine)
        write_nifti(tmp_path / 'labelsTr' / f'c{i}.nii.gz', binary * (255 if i == 3 else 1), affine=affine)
    argv = ['--images', str(tmp_path / 'imagesTr'), '--labels', str(tmp_path / 'labelsTr'), '--modality', 'ct',
            '--min_size', '8,8,8']
    assert iv.main(argv + ['--out_dir', str(tmp_path / 'out')]) == 0
    printed = capsys.readouterr().out
    assert 'values 0, 1, 255 mapped in order to 0..2 (3 classes' in printed
    assert '1 only in c0.nii.gz, c1.nii.gz, c2.nii.gz' not in printed  # 3 of 4: not rare
    assert '255 only in c3.nii.gz (1 of 4 labels)' in printed
    message = one_line_error(iv.main, argv + ['--out_dir', str(tmp_path / 'refused'), '--label_values', '0,1'])
    assert f'{tmp_path / "labelsTr" / "c3.nii.gz"}: label value 255 is not among --label_values 0,1' in message
    assert not (tmp_path / 'refused').exists()


# ----------------------------------------------------------------------------- the recipe's versions

def test_recipe_versions_and_the_orientation_key():
    recipe = ct_recipe()
    assert recipe_problems(recipe) == []
    assert recipe_problems({**recipe, 'orientation': 'XYZ'}) == [
        'orientation "XYZ" is not three axis codes, one of L/R, A/P and S/I (e.g. LPS)']
    legacy = {k: v for k, v in recipe.items() if k != 'orientation'}
    assert recipe_problems({**legacy, 'format_version': 2}) == ['missing orientation']
    assert recipe_problems({**legacy, 'format_version': 1}) == ['missing reorient']
    assert recipe_problems({**legacy, 'format_version': 1, 'reorient': False}) == []
    assert 'reads format_version 1 and 2' in recipe_problems({**recipe, 'format_version': 3})[0]
    assert json.loads(json.dumps(recipe)) == recipe
