"""From a new scan to a label map on that scan: the import recipe (dataset.json) travels from the importer
through train.py's checkpoint to segment.py, which applies it and undoes its geometry.

Everything is made in the test: an anisotropic CT set (0.8 x 0.8 x 2.5 mm, labels 0 and 3) is imported,
a tiny network trains on it, and segment.py segments the ORIGINAL files.
"""
import json

import numpy as np
import pytest
import torch
from scipy import ndimage

import train
from conftest import require_extra
from importers import import_volumes as iv
from importers.check import check_folder
from importers.volumes import (RECIPE_FILE, class_values, make_recipe, read_recipe, read_scan, recipe_problems,
                                 to_network_grid, to_scan_grid, to_stored)
from make_volumes import write_ct_series, write_nifti, write_nrrd
from test_test_script import cli, segment_cli

SPACING = (0.8, 0.8, 2.5)
SHAPE = (48, 48, 12)
ORGAN = 3  # a label value that is not its class: the maps must give back 3, not 1
# x flipped (a radiological affine) and an origin: the written maps must keep both
AFFINE = np.array([[-0.8, 0, 0, 20.0], [0, 0.8, 0, -15.0], [0, 0, 2.5, 7.5], [0, 0, 0, 1]])
# z resampled to half the slice gap: every scan voxel is a voxel of the imported grid, so the inverse brings a
# map back without interpolating it, and Dice on the scans and on the imported cases differ only by the
# imported labels' in-between slices (nearest-neighbour copies of a scan slice).
TARGET = '0.8,0.8,1.25'
PATCH = '16,16,16'


def ct_case(seed, shape=SHAPE, spacing=SPACING):
    """(HU int16, label int16 0/ORGAN): air at -1000 around an elliptic body of soft tissue (0 HU) holding a
    bright ellipsoidal organ (150 HU), each with noise; the organ's centre and radii drawn from the seed."""
    rng = np.random.default_rng(seed)
    x, y, z = np.meshgrid(*(np.arange(n) * s for n, s in zip(shape, spacing)), indexing='ij')
    size = [n * s for n, s in zip(shape, spacing)]
    image = np.full(shape, -1000.0)
    body = ((x - size[0] / 2) / (0.42 * size[0])) ** 2 + ((y - size[1] / 2) / (0.37 * size[1])) ** 2 < 1
    image[body] = rng.normal(0, 15, body.sum())
    centre = rng.uniform(0.4, 0.6, 3) * size
    radii = rng.uniform([0.18, 0.18, 0.3], [0.24, 0.24, 0.4]) * size
    organ = sum(((v - c) / r) ** 2 for v, c, r in zip((x, y, z), centre, radii)) < 1
    image[organ] = 150 + rng.normal(0, 15, organ.sum())
    return image.astype(np.int16), np.where(organ, ORGAN, 0).astype(np.int16)


def dice(a, b):
    a, b = np.asarray(a) != 0, np.asarray(b) != 0
    return 2 * (a & b).sum() / (a.sum() + b.sum())


@pytest.fixture(scope='module')
def imported(tmp_path_factory):
    """8 scans in imagesTr/labelsTr, imported at TARGET mm with the body crop, 2 of them in test.list."""
    root = tmp_path_factory.mktemp('ct')
    for i in range(8):
        image, label = ct_case(i)
        write_nifti(root / 'imagesTr' / f'ct_{i}.nii.gz', image, affine=AFFINE)
        write_nifti(root / 'labelsTr' / f'ct_{i}.nii.gz', label, affine=AFFINE)
    assert iv.main(['--images', str(root / 'imagesTr'), '--labels', str(root / 'labelsTr'), '--out_dir',
                    str(root / 'data'), '--modality', 'ct', '--spacing', TARGET, '--min_size', PATCH,
                    '--test_fraction', '0.25']) == 0
    return root


@pytest.fixture(scope='module')
def trained(imported):
    """A V-Net (n_filters 4) trained for 100 iterations on the 6 imported training cases."""
    run = imported / 'run'
    train.main(['--dataset', 'h5', '--root_path', str(imported / 'data'), '--method', 'sup', '--labelnum', '6',
                '--patch_size', PATCH, '--n_filters', '4', '--batch_size', '2', '--max_iterations', '100',
                '--base_lr', '0.05', '--num_workers', '0', '--gpu', '-1', '--snapshot_path', str(run)])
    return run / 'final.pth'


def test_the_recipe_goes_from_the_data_folder_into_the_run(imported, trained):
    recipe = json.loads((imported / 'data' / RECIPE_FILE).read_text())
    assert recipe['labels'] == {'0': 0, '3': 1} and recipe['num_classes'] == 2
    assert recipe['spacing'] == [0.8, 0.8, 1.25] and recipe['crop'] == 'nonzero' and recipe['modality'] == 'ct'
    assert recipe['command'].startswith('python -m importers.import_volumes --images ')
    assert read_recipe(imported / 'data') == recipe
    assert json.loads((trained.parent / 'config.json').read_text())['recipe'] == recipe
    assert torch.load(trained, weights_only=True)['config']['recipe'] == recipe


def test_raw_scans_get_label_maps_on_their_own_grid_as_good_as_on_the_imported_cases(imported, trained, tmp_path,
                                                                                      capsys):
    """The acceptance: segment.py on the original files writes maps with the originals' shape, affine and
    label values, whose Dice against the original labels is within 2 points of test.py's on the imported cases."""
    require_extra('matplotlib')  # --save_png
    test_ids = (imported / 'data' / 'test.list').read_text().split()
    scans = tmp_path / 'scans'
    scans.mkdir()
    for case_id in test_ids:
        (scans / f'{case_id}.nii.gz').write_bytes((imported / 'imagesTr' / f'{case_id}.nii.gz').read_bytes())
    flags = ['--checkpoint', str(trained), '--gpu', '-1', '--no_progress']
    assert cli(flags + ['--dataset', 'h5', '--root_path', str(imported / 'data'), '--out_dir',
                        str(tmp_path / 'eval')]) == 0
    imported_dice = json.loads((tmp_path / 'eval' / 'test_summary.json').read_text())['metrics']['dice']['mean']
    assert segment_cli(flags + ['--input', str(scans), '--out_dir', str(tmp_path / 'out'), '--save_png']) == 0
    capsys.readouterr()
    scores = []
    for case_id in test_ids:
        pred, affine = read_scan(tmp_path / 'out' / 'predictions_input' / f'{case_id}_pred.nii.gz')
        label, label_affine = read_scan(imported / 'labelsTr' / f'{case_id}.nii.gz')
        assert pred.shape == label.shape == SHAPE and np.array_equal(affine, label_affine)
        assert set(np.unique(pred)) == {0, ORGAN}
        scores.append(dice(pred, label))
    raw_dice = float(np.mean(scores))
    with capsys.disabled():
        print(f'\nDice on the imported test cases {100 * imported_dice:.2f} %, on the raw scans {100 * raw_dice:.2f} %')
    assert imported_dice > 0.85 and abs(raw_dice - imported_dice) <= 0.02
    pictures = sorted(p.name for p in (tmp_path / 'out' / 'pictures_input').iterdir())
    assert pictures == [f'{case_id}.png' for case_id in test_ids]


def test_the_same_scan_as_dicom_series_nrrd_and_nifti_gets_the_same_map(imported, trained, tmp_path):
    image, _ = ct_case(0)
    scans = {'series': write_ct_series(tmp_path / 'series' / 'ct_0', (image + 1024).astype(np.int16),
                                       intercept=-1024.0, pixel_mm=SPACING[:2], slice_mm=SPACING[2],
                                       series_uid='1.2.826.0.1.1'),
             'nrrd': write_nrrd(tmp_path / 'nrrd' / 'ct_0.nrrd', image, spacing=SPACING),
             # the same scan as NIfTI: the series' and NRRD's left-posterior-superior frame in NIfTI's RAS terms
             'nifti': write_nifti(tmp_path / 'nifti' / 'ct_0.nii.gz', image,
                                  affine=np.diag([-SPACING[0], -SPACING[1], SPACING[2], 1.0]))}
    # a second CT series beside it (a scout): --series picks the scan's
    write_ct_series(tmp_path / 'series' / 'ct_0' / 'scout', np.zeros((8, 8, 3), np.int16), series_uid='1.2.826.0.1.2')
    maps = {}
    for kind, scan in scans.items():
        assert segment_cli(['--checkpoint', str(trained), '--gpu', '-1', '--no_progress', '--input', str(scan),
                            '--out_dir', str(tmp_path / f'out_{kind}')]
                           + (['--series', '1.2.826.0.1.1'] if kind == 'series' else [])) == 0
        maps[kind] = read_scan(tmp_path / f'out_{kind}' / 'predictions_input' / 'ct_0_pred.nii.gz')
    for kind in ('series', 'nrrd'):
        np.testing.assert_array_equal(maps[kind][0], maps['nifti'][0])
    assert set(np.unique(maps['nifti'][0])) == {0, ORGAN}
    np.testing.assert_array_equal(maps['nifti'][1], read_scan(scans['nifti'])[1])
    # the series' (axial, origin 0) and the NRRD's: their left-posterior-superior space turned to NIfTI's
    # right-anterior-superior
    for kind in ('series', 'nrrd'):
        np.testing.assert_allclose(maps[kind][1], np.diag([-SPACING[0], -SPACING[1], SPACING[2], 1.0]), atol=1e-6)


# ----------------------------------------------------------------------------- the geometric inverse alone

def identity_recipe(num_classes=3):
    return make_recipe('ct', 'RAS', None, 1, [], 'none', 'xyz', 0, (1, 1, 1), range(num_classes), '')


def test_identity_recipe_inverse_is_exact_and_restores_the_stored_axis_order():
    """A scan stored (z, x, y): the network sees it in (x, y, z) order, every map comes back as stored."""
    require_extra('nibabel')  # the recipe's orientation step reorients with nibabel
    rng = np.random.default_rng(0)
    stored = rng.normal(size=(5, 7, 6)).astype(np.float32)
    affine = np.zeros((4, 4))
    affine[:3, :3] = [[0, 0.7, 0], [0, 0, 0.9], [2.0, 0, 0]]  # column a: world vector of stored axis a
    affine[3, 3] = 1
    recipe = identity_recipe()
    image, grid = to_network_grid(stored, affine, recipe)
    np.testing.assert_array_equal(image, stored.transpose(1, 2, 0))
    assert grid.spacing == pytest.approx((0.7, 0.9, 2.0))
    score = rng.random((3,) + image.shape).astype(np.float32)
    classes = to_scan_grid(score, grid, recipe)
    np.testing.assert_array_equal(classes, score.argmax(0))
    np.testing.assert_array_equal(to_stored(classes, grid, recipe), score.argmax(0).transpose(2, 0, 1))


def test_resample_and_crop_round_trip_gives_back_the_label_map_up_to_its_border():
    """The importer's own path (import_case) takes a known map to the network's grid; its classes, as scores,
    come back through the inverse onto the scan: the same map but for voxels at the organ's border."""
    require_extra('nibabel')  # the recipe's orientation step reorients with nibabel
    image, label = ct_case(0, shape=(96, 90, 16))
    recipe = iv.volumes_recipe('ct', [0.0, float(ORGAN)], target=(1.0, 1.0, 2.0), min_size=(16, 16, 16))
    network_image, grid = to_network_grid(image, np.diag([*SPACING, 1.0]), recipe)
    imported_image, imported_label = iv.import_case(image, label, grid.spacing, recipe)
    np.testing.assert_array_equal(network_image, imported_image)  # the recipe applied as the importer applied it
    assert grid.box is not None and network_image.shape != grid.resampled_shape  # cropped, and resampled
    scores = np.stack([imported_label == c for c in range(2)]).astype(np.float32)
    back = to_stored(to_scan_grid(scores, grid, recipe), grid, recipe)
    assert back.shape == label.shape and set(np.unique(back)) == {0, ORGAN}
    assert dice(back, label) >= 0.98
    organ, cube = label != 0, np.ones((3, 3, 3), bool)
    border = ndimage.binary_dilation(organ, cube) & ~ndimage.binary_erosion(organ, cube)
    assert border[back != label].all()  # every disagreement has the other class among its 26 neighbours


@pytest.mark.parametrize('key, value', [
    ('crop_axes', ['x', 'y']), ('labels', {'0': 0, 'organ': 1}), ('labels', {'0': 0, '3': 'one'}), ('margin', True),
    ('intensity', [{'step': 'window', 'window': [275, -125], 'on': 'crop'}]), ('spacing', [1.0, 1.0]),
])
def test_a_bad_recipe_value_is_one_line_naming_its_key(key, value):
    recipe = identity_recipe(2)
    assert recipe_problems(recipe) == []
    recipe[key] = value
    problems = recipe_problems(recipe)
    assert len(problems) == 1 and problems[0].startswith(f'{key} {json.dumps(value)} is not ')


def test_class_values_invert_the_recipes_label_map():
    recipe = make_recipe('mr', 'RAS', None, 1, [], 'none', 'xy', 0, (1, 1, 1), [0.0, 2.0, 255.0], '')
    assert recipe['labels'] == {'0': 0, '2': 1, '255': 2}
    assert class_values(recipe).tolist() == [0, 2, 255]


# ----------------------------------------------------------------------------- one line, nothing written

def edited_checkpoint(path, out, edit):
    ckpt = torch.load(path, weights_only=True)
    edit(ckpt['config'])
    torch.save(ckpt, out)
    return out


def one_line_error(capsys):
    err = capsys.readouterr().err.strip()
    assert err.startswith('error: ') and '\n' not in err and 'Traceback' not in err, err
    return err


@pytest.mark.parametrize('case, words', [
    ('version', ['format_version 3', 'this code reads format_version 1 and 2']),
    ('blank', ['scan.nii.gz: the image is blank: every voxel is -1000']),
    ('missing', ['import recipe', 'missing spacing']),
    ('no recipe', ['NRRD and DICOM scans are read through the import recipe', 'holds none']),
    ('mr scan', ['0 % of its voxels are at or below -200', 'not a CT in Hounsfield units', '--skip_modality_check']),
    ('4-D', ['is 4-D with shape (48, 48, 12, 2)']),
    ('no CT series', ['no CT slice', 'Modality MR']),
    ('tiny', ['scan.nii.gz: 3x3x6 voxels at the recipe\'s spacing 0.8,0.8,1.25', 'minimum of 4']),
    ('nan', ['scan.nii.gz: holds NaN or infinite values']),
    ('two CT series', ['holds 2 CT series, choose one with --series UID', '1.2.9.1 (CT, 4x4x3 voxels', '1.2.9.2']),
    ('unknown --series', ['no series 7.7 (--series)', '1.2.9.1 (CT']),
    ('a gap', ['series', 'are 5 mm apart but the series\' spacing is 2.5 mm']),
    ('--series on a file', ['--series 7.7: --input', 'is no DICOM series folder']),
])
def test_what_cannot_be_segmented_is_one_line_and_writes_nothing(trained, tmp_path, capsys, case, words):
    nrrd = require_extra('nrrd')
    image, _ = ct_case(0)
    scan = tmp_path / 'scan.nii.gz'
    checkpoint = trained
    if case == 'version':
        checkpoint = edited_checkpoint(trained, tmp_path / 'v2.pth', lambda c: c['recipe'].update(format_version=3))
    elif case == 'missing':
        checkpoint = edited_checkpoint(trained, tmp_path / 'old.pth', lambda c: c['recipe'].pop('spacing'))
    elif case == 'no recipe':
        checkpoint = edited_checkpoint(trained, tmp_path / 'none.pth', lambda c: c.update(recipe=None))
        scan = tmp_path / 'scan.nrrd'
        nrrd.write(str(scan), image)
    elif case == 'mr scan':
        image = (image + 1000) // 4  # an MR-like range: nothing near air's -1000
    elif case == 'blank':
        image = np.full_like(image, -1000)
    elif case == '4-D':
        image = np.stack([image, image], axis=-1)
    elif case == 'tiny':
        image = image[:3, :3, :3]
    elif case == 'nan':
        image = np.where(image == image.max(), np.nan, image.astype(np.float32))
    elif case == 'no CT series':
        scan = write_ct_series(tmp_path / 'series', image[:4, :4, :3], modality='MR')
    elif case in ('two CT series', 'unknown --series'):
        scan = write_ct_series(tmp_path / 'series', image[:4, :4, :3], series_uid='1.2.9.1')
        write_ct_series(scan / 'other', image[:4, :4, :4], series_uid='1.2.9.2')
    elif case == 'a gap':
        scan = write_ct_series(tmp_path / 'series', image[:4, :4, :4], order=[0, 1, 3])
    if scan.name.endswith('.nii.gz'):
        write_nifti(scan, image, spacing=SPACING)
    out = tmp_path / 'out'
    series = ['--series', '7.7'] if case in ('unknown --series', '--series on a file') else []
    assert segment_cli(['--checkpoint', str(checkpoint), '--gpu', '-1', '--no_progress', '--input', str(scan),
                        '--out_dir', str(out)] + series) == 1
    err = one_line_error(capsys)
    for word in words:
        assert word in err, err
    assert not out.exists()


def test_check_validates_the_recipe(imported, tmp_path):
    data = tmp_path / 'data'
    data.mkdir()
    for path in (imported / 'data').iterdir():
        (data / path.name).write_bytes(path.read_bytes())
    problems, summary, _ = check_folder(data, num_classes=2, pattern='{id}.h5')
    assert problems == [] and summary.endswith(f'recipe {RECIPE_FILE} OK')
    recipe = json.loads((data / RECIPE_FILE).read_text())
    recipe.update(format_version=7, crop='around the label')
    (data / RECIPE_FILE).write_text(json.dumps(recipe))
    problems, _, _ = check_folder(data, num_classes=2, pattern='{id}.h5')
    assert problems == [f'{data / RECIPE_FILE}: format_version 7: this code reads format_version 1 and 2 (re-import '
                        'the data with this version of the code)']
    recipe.update(format_version=2)
    (data / RECIPE_FILE).write_text(json.dumps(recipe))
    problems, _, _ = check_folder(data, num_classes=2, pattern='{id}.h5')
    assert problems == [f'{data / RECIPE_FILE}: crop "around the label" is not nonzero or label or none']
    recipe.update(crop='nonzero')
    (data / RECIPE_FILE).write_text(json.dumps(recipe))
    problems, _, _ = check_folder(data, num_classes=3, pattern='{id}.h5')
    assert problems == [f'{data / RECIPE_FILE}: num_classes 2, but --num_classes is 3']
