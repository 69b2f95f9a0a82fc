"""Raw LA preprocessing (seeded crop around the label, z-score), a recipe of the import pipeline.

The NRRD files are written here with pynrrd, an optional extra (conftest.require_extra).
"""
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest

from importers import preprocess_la as pre
from dataloaders.datasets import LA_SUBDIR
from importers.volumes import read_recipe
from conftest import one_line_error, require_extra

nrrd = require_extra('nrrd')

REPO = Path(__file__).resolve().parents[1]


def write_nrrd(path, array, gzip=True):
    """An NRRD file as the challenge stores them: sizes = array.shape (Fortran order), 0.625 mm voxels."""
    nrrd.write(str(path), array, header={'encoding': 'gzip' if gzip else 'raw',
                                          'space directions': np.diag([0.625, 0.625, 0.625]).tolist(),
                                          'space': 'left-posterior-superior'}, index_order='F')


# ----------------------------------------------------------------------------- preprocessing

def make_raw_case(root, case_id, shape=(150, 140, 12), box=((60, 81), (50, 66), (3, 9)), seed=0):
    """A raw challenge-style case: int16 image, 0/255 uint8 mask filling `box` (inclusive-exclusive)."""
    rng = np.random.default_rng(seed)
    image = rng.integers(0, 400, size=shape).astype(np.int16)
    laendo = np.zeros(shape, dtype=np.uint8)
    laendo[tuple(slice(a, b) for a, b in box)] = 255
    laendo[box[0][0], box[1][0], box[2][0]] = 128  # a non-255 value is not atrium
    image[laendo == 255] += 500
    (root / case_id).mkdir(parents=True)
    write_nrrd(root / case_id / 'lgemri.nrrd', image, gzip=True)
    write_nrrd(root / case_id / 'laendo.nrrd', laendo, gzip=False)
    return image, laendo


def read_h5(root, case_id):
    with h5py.File(root / LA_SUBDIR / case_id / 'mri_norm2.h5', 'r') as f:
        return f['image'][()], f['label'][()]


def offset(crop_label, full_label):
    """(x0, y0) of the crop in the full volume, from the label's first voxel in each."""
    return tuple(int(np.nonzero(full_label)[a].min() - np.nonzero(crop_label)[a].min()) for a in (0, 1))


def test_case_crop_margins_and_zscore(tmp_path):
    raw = tmp_path / 'raw'
    image, laendo = make_raw_case(raw, 'CASE1')
    ids = pre.preprocess_la(raw, tmp_path / 'out', seed=1337, min_extent=(0, 0), progress=False)
    assert ids == ['CASE1']
    assert (tmp_path / 'out' / 'train.list').read_text() == 'CASE1\n'
    crop, label = read_h5(tmp_path / 'out', 'CASE1')
    assert crop.dtype == np.float32 and label.dtype == np.uint8
    assert set(np.unique(label)) == {0, 1}
    full_label = (laendo == 255).astype(np.uint8)
    assert label.sum() == full_label.sum()                    # the whole label is inside
    assert crop.shape[2] == image.shape[2]                    # z is never cropped
    # z-score over the whole volume, then crop (what the distributed LA files hold)
    normalised = (image - image.mean()) / image.std()
    x0, y0 = offset(label, full_label)
    assert np.allclose(crop, normalised[x0:x0 + crop.shape[0], y0:y0 + crop.shape[1]], atol=1e-5)
    # margins: m_lo voxels before the label, m_hi - 1 after it, m in [10, 20)
    (lo_x, hi_x), (lo_y, hi_y) = (60, 80), (50, 65)
    assert 10 <= lo_x - x0 <= 19 and 9 <= (x0 + crop.shape[0] - 1) - hi_x <= 18
    assert 10 <= lo_y - y0 <= 19 and 9 <= (y0 + crop.shape[1] - 1) - hi_y <= 18
    recipe = read_recipe(tmp_path / 'out')  # what a new scan gets: the z-score, no crop, 255 back for the atrium
    assert recipe['intensity'] == [{'step': 'zscore', 'voxels': 'all', 'on': 'volume'}]
    assert recipe['crop'] == 'label' and recipe['margin'] == [10, 20] and recipe['labels'] == {'0': 0, '255': 1}
    assert recipe['orientation'] == 'LPS'  # the challenge's NRRDs, read from their header: arrays kept as stored


def test_a_case_stored_the_other_way_joins_the_first_cases_orientation(tmp_path):
    """The same two cases, the second stored with x reversed (its header says so): the same h5 files."""
    for name in ('plain', 'flipped'):
        make_raw_case(tmp_path / name, 'A')
        image, laendo = make_raw_case(tmp_path / name, 'B', seed=1)
    for file, array in (('lgemri.nrrd', image), ('laendo.nrrd', laendo)):
        nrrd.write(str(tmp_path / 'flipped' / 'B' / file), np.ascontiguousarray(array[::-1]),
                   header={'space directions': np.diag([-0.625, 0.625, 0.625]).tolist(),
                           'space': 'left-posterior-superior', 'space origin': [0.625 * 149, 0.0, 0.0]},
                   index_order='F')
    for name in ('plain', 'flipped'):
        pre.preprocess_la(tmp_path / name, tmp_path / f'out_{name}', progress=False)
    for a, b in zip(read_h5(tmp_path / 'out_plain', 'B'), read_h5(tmp_path / 'out_flipped', 'B')):
        np.testing.assert_array_equal(a, b)
    assert read_recipe(tmp_path / 'out_flipped')['orientation'] == 'LPS'


def test_margins_cover_their_range():
    label = np.zeros((100, 100, 4), dtype=np.uint8)
    label[40:60, 40:60, 1:3] = 1
    widths = set()
    for seed in range(200):
        box = pre.la_crop_box(label, np.random.default_rng([seed, 0]).integers(10, 20, 4), (0, 0))
        widths.add(box[0].stop - box[0].start)
        assert box[0].start in range(21, 31) and box[0].stop in range(69, 79) and box[2] == slice(0, 4)
    assert min(widths) == 20 + 19 and max(widths) == 20 + 37  # both extremes of [10, 20) drawn


def test_lineage_padding_to_min_extent():
    """Labels narrower than 112 voxels get (112 - extent) // 2 extra on each side, clipped at the border."""
    label = np.zeros((300, 120, 4), dtype=np.uint8)
    label[140:161, 50:71, :] = 1  # extent hi - lo = 20 along x and y
    box = pre.la_crop_box(label, (10, 10, 10, 10), (112, 112))
    assert box[0] == slice(140 - 10 - 46, 160 + 10 + 46)
    assert box[1] == slice(0, 120)  # clipped to the volume


def test_zscore_crop_option(tmp_path):
    raw = tmp_path / 'raw'
    make_raw_case(raw, 'C')
    pre.preprocess_la(raw, tmp_path / 'out', zscore='crop', min_extent=(0, 0), progress=False)
    crop, _ = read_h5(tmp_path / 'out', 'C')
    assert abs(crop.mean()) < 1e-4 and abs(crop.std() - 1) < 1e-4


def test_deterministic_for_a_seed(tmp_path):
    raw = tmp_path / 'raw'
    for i in range(3):
        make_raw_case(raw, f'C{i}', seed=i)
    shapes = {}
    for name, seed in (('a', 1337), ('b', 1337), ('c', 7)):
        pre.preprocess_la(raw, tmp_path / name, seed=seed, min_extent=(0, 0), progress=False)
        shapes[name] = [read_h5(tmp_path / name, f'C{i}')[0].shape for i in range(3)]
    for i in range(3):
        a, b = read_h5(tmp_path / 'a', f'C{i}'), read_h5(tmp_path / 'b', f'C{i}')
        assert a[0].tobytes() == b[0].tobytes() and a[1].tobytes() == b[1].tobytes()
    assert shapes['a'] != shapes['c']
    assert (tmp_path / 'a' / 'train.list').read_text().split() == ['C0', 'C1', 'C2']


def test_lists(tmp_path):
    raw = tmp_path / 'raw'
    for case_id in ('A', 'B', 'C'):
        make_raw_case(raw, case_id, shape=(40, 40, 6), box=((10, 20), (10, 20), (1, 4)))
    ids = pre.preprocess_la(raw, tmp_path / 'out', train_ids=['C', 'A'], test_ids=['B'],
                            min_extent=(0, 0), progress=False)
    assert ids == ['A', 'B', 'C']
    assert (tmp_path / 'out' / 'train.list').read_text() == 'C\nA\n'
    assert (tmp_path / 'out' / 'test.list').read_text() == 'B\n'
    with pytest.raises(pre.PreprocessError, match='case Z is listed'):
        pre.preprocess_la(raw, tmp_path / 'out2', train_ids=['A', 'Z'], progress=False)


def test_la_heart_reads_the_output(tmp_path):
    from dataloaders.datasets import LAHeart
    raw = tmp_path / 'raw'
    make_raw_case(raw, 'CASE1')
    pre.preprocess_la(raw, tmp_path / 'LA', progress=False)
    sample = LAHeart(tmp_path / 'LA', split='train')[0]
    assert sample['image'].dtype == np.float32 and set(np.unique(sample['label'])) == {0, 1}


def run_main(argv):
    return one_line_error(pre.main, argv)


def test_cli_errors(tmp_path):
    out = ['--out_dir', str(tmp_path / 'out')]
    assert 'does not exist' in run_main(['--raw_dir', str(tmp_path / 'missing')] + out)
    raw = tmp_path / 'raw'
    make_raw_case(raw, 'GOOD', shape=(30, 30, 4), box=((5, 9), (5, 9), (1, 3)))
    (raw / 'HALF').mkdir()
    write_nrrd(raw / 'HALF' / 'lgemri.nrrd', np.zeros((30, 30, 4), np.int16))
    assert 'case HALF' in run_main(['--raw_dir', str(raw)] + out)
    assert 'laendo.nrrd' in run_main(['--raw_dir', str(raw)] + out)
    write_nrrd(raw / 'HALF' / 'laendo.nrrd', np.zeros((30, 31, 4), np.uint8))
    message = run_main(['--raw_dir', str(raw)] + out)
    assert 'HALF/laendo.nrrd: shape 30x31x4 but its image' in message and 'HALF/lgemri.nrrd is 30x30x4' in message
    write_nrrd(raw / 'HALF' / 'laendo.nrrd', np.zeros((30, 30, 4), np.uint8))
    assert 'HALF: lgemri.nrrd: the image is blank: every voxel is 0' in run_main(['--raw_dir', str(raw)] + out)
    write_nrrd(raw / 'HALF' / 'lgemri.nrrd', np.arange(30 * 30 * 4, dtype=np.int16).reshape(30, 30, 4))
    assert 'no voxel equal to 255' in run_main(['--raw_dir', str(raw)] + out)
    (raw / 'HALF' / 'laendo.nrrd').write_bytes(b'NRRD0004\ntype: uchar\n')
    assert 'HALF/laendo.nrrd' in run_main(['--raw_dir', str(raw)] + out)


def test_cli_module_entry_and_caveat(tmp_path):
    raw = tmp_path / 'raw'
    make_raw_case(raw, 'CASE1', shape=(30, 30, 4), box=((5, 9), (5, 9), (1, 3)))
    result = subprocess.run([sys.executable, '-m', 'importers.preprocess_la', '--raw_dir', str(raw),
                             '--out_dir', str(tmp_path / 'out'), '--seed', '1'],
                            cwd=REPO, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert 'wrote 1 cases' in result.stdout and 'test volumes included' in result.stdout
    assert (tmp_path / 'out' / LA_SUBDIR / 'CASE1' / 'mri_norm2.h5').is_file()
    assert 'test volumes included' in ' '.join(pre.__doc__.split())


# ----------------------------------------------------------------------------- identity with today's algorithm

def lineage_expected(image, laendo, seed, index, zscore='volume', margin=(10, 20), min_extent=(112, 112)):
    """preprocess_la's output before it became a recipe of importers/volumes, written out plainly:
    four margins from default_rng([seed, index]), the lineage's x/y box, z-score in float64."""
    label = (laendo == 255).astype(np.uint8)
    m_x0, m_x1, m_y0, m_y1 = np.random.default_rng([seed, index]).integers(margin[0], margin[1], size=4)
    xs, ys, _ = np.nonzero(label)
    pad_x = max(min_extent[0] - (xs.max() - xs.min()), 0) // 2
    pad_y = max(min_extent[1] - (ys.max() - ys.min()), 0) // 2
    x0, x1 = max(xs.min() - m_x0 - pad_x, 0), min(xs.max() + m_x1 + pad_x, label.shape[0])
    y0, y1 = max(ys.min() - m_y0 - pad_y, 0), min(ys.max() + m_y1 + pad_y, label.shape[1])
    values = image.astype(np.float64)
    if zscore == 'crop':
        values = values[x0:x1, y0:y1, :]
    values = ((values - values.mean()) / values.std()).astype(np.float32)
    if zscore == 'volume':
        values = values[x0:x1, y0:y1, :]
    return values, label[x0:x1, y0:y1, :]


@pytest.mark.parametrize('zscore, min_extent', [('volume', (112, 112)), ('volume', (0, 0)), ('crop', (30, 8))])
def test_recipe_is_array_identical_to_the_lineage_algorithm(tmp_path, zscore, min_extent):
    raw = tmp_path / 'raw'
    cases = {'A': make_raw_case(raw, 'A', seed=1),                                  # inside the volume
             'B': make_raw_case(raw, 'B', box=((2, 30), (100, 139), (0, 12)), seed=2),  # at the borders
             'C': make_raw_case(raw, 'C', shape=(60, 50, 5), box=((20, 24), (5, 45), (1, 2)), seed=3)}
    pre.preprocess_la(raw, tmp_path / 'out', seed=42, zscore=zscore, min_extent=min_extent, progress=False)
    for index, case_id in enumerate(sorted(cases)):
        image, label = read_h5(tmp_path / 'out', case_id)
        want_image, want_label = lineage_expected(*cases[case_id], seed=42, index=index, zscore=zscore,
                                                  min_extent=min_extent)
        assert image.dtype == want_image.dtype == np.float32 and label.dtype == np.uint8
        assert np.array_equal(image, want_image) and np.array_equal(label, want_label), case_id


def test_pynrrd_reads_what_the_retired_reader_read(tmp_path):
    """The hand-written header of the challenge files (ITK/Slicer style): comments, a type alias, space
    fields, gzip, key:=value pairs. Sizes order (Fortran), native byte order, values as written."""
    import gzip
    from importers.volumes.read import read_nrrd
    values = (np.arange(6) * 1000).astype('>u2')  # big-endian on disk
    header = ('NRRD0005\n# Complete NRRD file format specification at:\n'
              'type: unsigned short\ndimension: 3\nspace: left-posterior-superior\n'
              'sizes: 3 2 1\nspace directions: (0.625,0,0) (0,0.625,0) (0,0,2.5)\n'
              'kinds: domain domain domain\nendian: big\nencoding: gzip\n'
              'space origin: (-180.5,-170,-40)\nmodality:=LGE\n\n')
    (tmp_path / 'h.nrrd').write_bytes(header.encode() + gzip.compress(values.tobytes()))
    array, affine = read_nrrd(tmp_path / 'h.nrrd')
    assert array.shape == (3, 2, 1) and array.dtype == np.dtype('=u2')
    assert array[2, 0, 0] == 2000 and array[0, 1, 0] == 3000  # F order: index i + 3 j
    # left-posterior-superior turned to NIfTI's right-anterior-superior: x and y negated, origin too
    assert np.allclose(affine[:3, :3], np.diag([-0.625, -0.625, 2.5]))
    assert np.allclose(affine[:3, 3], [180.5, 170, -40])


def test_without_pynrrd_one_line_names_the_file_and_the_pip_line(tmp_path, monkeypatch):
    raw = tmp_path / 'raw'
    make_raw_case(raw, 'CASE1', shape=(30, 30, 4), box=((5, 9), (5, 9), (1, 3)))
    monkeypatch.setitem(sys.modules, 'nrrd', None)  # as if pynrrd were not installed
    message = run_main(['--raw_dir', str(raw), '--out_dir', str(tmp_path / 'out')])
    assert 'CASE1/lgemri.nrrd: reading NRRD needs the optional package pynrrd: pip install pynrrd' in message
    assert not (tmp_path / 'out').exists()
