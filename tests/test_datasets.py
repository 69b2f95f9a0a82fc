"""Datasets: the three LA layouts on real data, the generic h5 dataset, keyed samples, bad input, fuzzing."""
import hashlib
import os
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from dataloaders.datasets import DatasetError, H5Dataset, LAHeart, validate_case

from dataloaders.samplers import IterationBatchSampler, LabeledBatchSampler

from dataloaders.transforms import Compose, RandomCrop, RandomNoise, ToTensor
from dataloaders.datasets import LA_SUBDIR

LA_DIR = Path(__file__).resolve().parents[2] / 'shared' / 'data' / 'LA'


def test_la_folder_is_named_as_ua_mt_distributes_it():
    # spelled out here, not imported: the one place that checks the name against the published data
    assert LA_SUBDIR == '2018LA_Seg_Training Set'


def write_case(path, image=None, label=None, shape=(12, 10, 8), seed=0, num_classes=2, **kw):
    """A tiny case file; label = a function of the image so tests can check alignment."""
    rng = np.random.default_rng(seed)
    if image is None:
        image = rng.standard_normal(shape).astype(np.float32)
    if label is None:
        label = np.digitize(image, np.linspace(-0.5, 0.5, num_classes - 1)).astype(np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    with h5py.File(path, 'w') as f:
        if image is not False:
            f.create_dataset('image', data=image, **kw)
        if label is not False:
            f.create_dataset('label', data=label, **kw)
    return path


def write_list(path, ids):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text('\n'.join(ids) + '\n')
    return path


def no_open_h5_files():
    return len(h5py.h5f.get_obj_ids(types=h5py.h5f.OBJ_FILE)) == 0


# ---------------------------------------------------------------------------------------------
# real LA volumes, three layouts

@pytest.fixture(scope='module')
def la_ids():
    if not (LA_DIR / 'train.list').is_file():
        if os.environ.get('CI') == 'true':  # CI has the data beside the clone: missing there is a failure
            pytest.fail(f'LA data not found at {LA_DIR}')
        pytest.skip(f'LA data not found at {LA_DIR}')
    return [line.strip() for line in (LA_DIR / 'train.list').read_text().splitlines() if line.strip()][:2]


def build_layouts(root, ids):
    """(a) lists + h5 folder, (b) lists inside the h5 folder, (c) lists one level above it; all symlinks."""
    h5_dir = LA_DIR / LA_SUBDIR
    a = root / 'a'
    a.mkdir()
    (a / LA_SUBDIR).symlink_to(h5_dir, target_is_directory=True)
    b = root / 'b'
    c = root / 'c' / 'h5'
    for folder in (b, c):
        folder.mkdir(parents=True)
        for case_id in ids:
            (folder / case_id).symlink_to(h5_dir / case_id, target_is_directory=True)
    for list_dir in (a, b, root / 'c'):
        write_list(list_dir / 'train.list', ['', '  ' + ids[0] + '  ', '', ids[1]])
        write_list(list_dir / 'test.list', [ids[1]])
    return {'a': a, 'b': b, 'c': c}


def test_la_heart_reads_real_volume_in_all_three_layouts(tmp_path, la_ids):
    with h5py.File(LA_DIR / LA_SUBDIR / la_ids[0] / 'mri_norm2.h5', 'r') as f:
        image, label = f['image'][()], f['label'][()]
    layouts = build_layouts(tmp_path, la_ids)
    for name, base in layouts.items():
        ds = LAHeart(base, split='train', num=1)
        assert ds.ids == [la_ids[0]], name
        assert ds.case_path(0).name == 'mri_norm2.h5'
        sample = ds[0]
        assert sample['image'].dtype == np.float32 and sample['image'].shape == image.shape
        assert np.issubdtype(sample['label'].dtype, np.integer)
        assert np.array_equal(sample['image'], image) and np.array_equal(sample['label'], label), name
        assert set(np.unique(sample['label'])) == {0, 1}
        assert LAHeart(base, split='test').ids == [la_ids[1]]
        assert LAHeart(base, list_file=layouts['a'] / 'test.list').ids == [la_ids[1]]
        generic = H5Dataset(base, pattern='{id}/mri_norm2.h5')   # the generic class finds the same files
        assert generic.ids == la_ids and generic.case_path(0) == ds.case_path(0)
    assert no_open_h5_files()


def test_la_heart_with_crop_and_validate(tmp_path, la_ids):
    base = build_layouts(tmp_path, la_ids)['a']
    ds = LAHeart(base, transform=Compose([RandomCrop((112, 112, 80)), ToTensor()]), num_classes=2)
    ds.validate()
    sample = ds[(1, 1337, 0)]
    assert sample['image'].shape == (1, 112, 112, 80) and sample['label'].shape == (112, 112, 80)
    assert torch.equal(sample['image'], ds[(1, 1337, 0)]['image'])


# ---------------------------------------------------------------------------------------------
# generic h5 dataset: Pancreas-style names, 3 classes

def test_h5_dataset_pancreas_layout_three_classes(tmp_path):
    ids = ['pancreas_001', 'pancreas_002', 'pancreas_003']
    for i, case_id in enumerate(ids):
        write_case(tmp_path / 'Pancreas' / 'data' / f'{case_id}_norm.h5', seed=i, num_classes=3)
    write_list(tmp_path / 'Pancreas' / 'train.list', ids)
    write_list(tmp_path / 'Pancreas' / 'test.list', ids[2:])
    # lists one level above the h5 folder, and lists beside a named subfolder
    for ds in (H5Dataset(tmp_path / 'Pancreas' / 'data', pattern='{id}_norm.h5', num_classes=3),
               H5Dataset(tmp_path / 'Pancreas', pattern='{id}_norm.h5', num_classes=3, subdir='data')):
        assert ds.ids == ids and len(ds) == 3
        ds.validate()
        labels = np.concatenate([ds[i]['label'].ravel() for i in range(3)])
        assert set(np.unique(labels)) == {0, 1, 2}
        for i in range(3):
            s = ds[i]
            assert np.array_equal(s['label'], np.digitize(s['image'], np.linspace(-0.5, 0.5, 2)))
    assert H5Dataset(tmp_path / 'Pancreas' / 'data', split='test', pattern='{id}_norm.h5').ids == ids[2:]
    with pytest.raises(DatasetError, match='outside 0..1'):
        H5Dataset(tmp_path / 'Pancreas' / 'data', pattern='{id}_norm.h5').validate(num_classes=2)


def test_list_parsing_num_and_missing_paths(tmp_path):
    write_case(tmp_path / 'x1.h5')
    write_case(tmp_path / 'x2.h5')
    (tmp_path / 'train.list').write_text('\n  x1\t\n\n\r\nx2  \n\n')
    ds = H5Dataset(tmp_path, pattern='{id}.h5')
    assert ds.ids == ['x1', 'x2'] and ds.case_path(1) == tmp_path / 'x2.h5'
    assert H5Dataset(tmp_path, pattern='{id}.h5', num=1).ids == ['x1']
    with pytest.raises(DatasetError, match='num=3'):
        H5Dataset(tmp_path, pattern='{id}.h5', num=3)
    with pytest.raises(DatasetError, match='dataset folder not found: .*nope'):
        H5Dataset(tmp_path / 'nope')
    with pytest.raises(DatasetError, match=r'no test\.list in'):
        H5Dataset(tmp_path, split='test')
    with pytest.raises(DatasetError, match='list file not found: .*other.list'):
        H5Dataset(tmp_path, list_file=tmp_path / 'other.list')
    (tmp_path / 'empty.list').write_text('\n  \n')
    with pytest.raises(DatasetError, match='empty.list lists no case ids'):
        H5Dataset(tmp_path, list_file=tmp_path / 'empty.list')
    with pytest.raises(DatasetError, match='pattern'):
        H5Dataset(tmp_path, pattern='../{id}.h5')


@pytest.mark.parametrize('bad_id', ['../x1', '..', 'a/../../etc', '/etc/passwd', 'sub/x1', 'a\\..\\b',
                                    'C:evil', 'x1\x00'])
def test_unsafe_ids_rejected(tmp_path, bad_id):
    write_case(tmp_path / 'x1.h5')
    (tmp_path / 'train.list').write_text(f'x1\n{bad_id}\n')
    with pytest.raises(DatasetError, match=r'train\.list line 2: unsafe case id'):
        H5Dataset(tmp_path, pattern='{id}.h5')


# ---------------------------------------------------------------------------------------------
# keyed samples: the same key gives the same sample in any worker

def test_keyed_samples_same_with_any_num_workers(tmp_path):
    ids = [f'c{i}' for i in range(6)]
    for i, case_id in enumerate(ids):
        write_case(tmp_path / f'{case_id}.h5', shape=(20, 18, 12), seed=i)
    write_list(tmp_path / 'train.list', ids)
    ds = H5Dataset(tmp_path, pattern='{id}.h5',
                   transform=Compose([RandomCrop((16, 16, 8)), RandomNoise(), ToTensor()]))

    a, b = ds[(3, 5, 7)], ds[(3, 5, 7)]
    assert torch.equal(a['image'], b['image']) and torch.equal(a['label'], b['label'])
    assert not torch.equal(a['image'], ds[(3, 5, 8)]['image'])
    assert not torch.equal(ds[3]['image'], ds[3]['image'])          # an int key draws fresh randomness

    def batches(workers):
        sampler = IterationBatchSampler(LabeledBatchSampler(range(6), 2, seed=5), seed=5, num_iterations=6)
        loader = DataLoader(ds, batch_sampler=sampler, num_workers=workers)
        return [(b['image'], b['label']) for b in loader]

    serial, parallel = batches(0), batches(2)
    assert len(serial) == 6
    for (ia, la), (ib, lb) in zip(serial, parallel):
        assert ia.shape == (2, 1, 16, 16, 8) and la.dtype == torch.int64
        assert torch.equal(ia, ib) and torch.equal(la, lb)


# ---------------------------------------------------------------------------------------------
# bad input: one DatasetError naming the file

def _truncate(path):
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def _external_image(path):
    # an external link would make HDF5 open a file outside the list's control
    write_case(path.with_name('other.h5'))
    write_case(path, image=False)
    with h5py.File(path, 'a') as f:
        f['image'] = h5py.ExternalLink('other.h5', '/image')


def _group_label(path):
    write_case(path, label=False)
    with h5py.File(path, 'a') as f:
        f.create_group('label')


BAD_CASES = {
    'missing file': (lambda p: None, 'file not found'),
    'not hdf5': (lambda p: p.write_text('hello, not a volume'), 'cannot read as HDF5'),
    'truncated': (lambda p: (write_case(p), _truncate(p)), 'cannot read as HDF5'),
    'no image': (lambda p: write_case(p, image=False), "missing dataset 'image'"),
    'no label': (lambda p: write_case(p, label=False), "missing dataset 'label'"),
    '4-D image': (lambda p: write_case(p, image=np.zeros((2, 4, 4, 4), np.float32),
                                       label=np.zeros((2, 4, 4, 4), np.uint8)), '4-D'),
    '2-D image': (lambda p: write_case(p, image=np.zeros((4, 4), np.float32),
                                       label=np.zeros((4, 4), np.uint8)), '2-D'),
    'shape mismatch': (lambda p: write_case(p, label=np.zeros((12, 10, 9), np.uint8)), 'differs from label shape'),
    'NaN': (lambda p: write_case(p, image=np.full((4, 4, 4), np.nan, np.float32)), 'NaN'),
    'Inf': (lambda p: write_case(p, image=np.full((4, 4, 4), np.inf, np.float32)), 'Inf'),
    'label 3 of 2 classes': (lambda p: write_case(p, label=np.full((12, 10, 8), 3, np.uint8)),
                             'value 3, outside 0..1'),
    'negative label': (lambda p: write_case(p, label=np.full((12, 10, 8), -1, np.int16)), 'span -1'),
    'fractional label': (lambda p: write_case(p, label=np.full((12, 10, 8), 0.5)), 'non-integer'),
    'string image': (lambda p: write_case(p, image=np.array([[['a']]], dtype='S1'),
                                          label=np.zeros((1, 1, 1), np.uint8)), 'dtype'),
    'group label': (_group_label, 'group'),
    'external link': (_external_image, 'link to another file'),
    'empty image': (lambda p: write_case(p, image=np.zeros((0, 4, 4), np.float32),
                                         label=np.zeros((0, 4, 4), np.uint8)), 'unusable shape'),
}


@pytest.mark.parametrize('name', list(BAD_CASES))
def test_bad_case_raises_dataset_error_naming_the_file(tmp_path, name):
    make, words = BAD_CASES[name]
    path = tmp_path / 'bad' / 'mri_norm2.h5'
    path.parent.mkdir()
    make(path)
    write_list(tmp_path / 'train.list', ['bad'])
    ds = LAHeart(tmp_path, num_classes=2)
    for call in (lambda: ds[0], ds.validate, lambda: validate_case(path, 2)):
        with pytest.raises(DatasetError) as info:
            call()
        message = str(info.value)
        assert str(path) in message and words in message and '\n' not in message
    assert no_open_h5_files()


def test_files_opened_read_only_and_unchanged(tmp_path):
    path = write_case(tmp_path / 'c' / 'mri_norm2.h5')
    write_list(tmp_path / 'train.list', ['c'])
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    mtime = path.stat().st_mtime_ns
    os.chmod(path, 0o444)
    ds = LAHeart(tmp_path, num_classes=2)
    ds.validate()
    ds[0], ds[(0, 1, 2)]
    assert hashlib.sha256(path.read_bytes()).hexdigest() == digest and path.stat().st_mtime_ns == mtime
    assert no_open_h5_files()


# ---------------------------------------------------------------------------------------------
# fuzz: corrupted h5 files and list files either load correctly or raise DatasetError

def _mutate_h5(path, rng):
    kind = 'ok' if rng.random() < 0.4 else rng.choice(
        ['truncate', 'flip', 'garbage', 'drop', 'dims', 'nan', 'labels', 'float_label', 'mismatch', 'dtype'])
    shape = tuple(int(s) for s in rng.integers(1, 9, size=3))
    kw = {'compression': 'gzip', 'chunks': True} if rng.random() < 0.5 else {}
    image = rng.standard_normal(shape).astype(rng.choice([np.float32, np.float64, np.int16]))
    label = rng.integers(0, 2, size=shape).astype(rng.choice([np.uint8, np.int64, bool]))
    if kind == 'drop':
        keep_image = rng.random() < 0.5
        write_case(path, image=image if keep_image else False, label=False if rng.random() < 0.7 else label)
    elif kind == 'dims':
        extra = tuple(int(s) for s in rng.integers(1, 4, size=int(rng.choice([1, 2, 4, 5]))))
        write_case(path, image=np.zeros(extra, np.float32), label=np.zeros(extra, np.uint8), **kw)
    elif kind == 'nan':
        image = image.astype(np.float32)
        image.flat[int(rng.integers(image.size))] = rng.choice([np.nan, np.inf, -np.inf])
        write_case(path, image=image, label=label, **kw)
    elif kind == 'labels':
        label = rng.integers(-2, 5, size=shape).astype(np.int32)
        write_case(path, image=image, label=label, **kw)
    elif kind == 'float_label':
        write_case(path, image=image, label=rng.choice([0.0, 0.5, 1.0, np.nan], size=shape), **kw)
    elif kind == 'mismatch':
        write_case(path, image=image, label=np.zeros(tuple(s + 1 for s in shape), np.uint8), **kw)
    elif kind == 'dtype':
        write_case(path, image=np.full(shape, b'x', dtype='S1'), label=label)
    else:
        write_case(path, image=image, label=label, **kw)
    data = bytearray(path.read_bytes())
    if kind == 'truncate':
        data = data[: int(rng.integers(0, len(data)))]
    elif kind == 'flip':
        for pos in rng.integers(0, len(data), size=int(rng.integers(1, 8))):
            data[pos] ^= int(rng.integers(1, 256))
    elif kind == 'garbage':
        data = rng.bytes(int(rng.integers(0, 4096)))
    path.write_bytes(bytes(data))


def _list_text(ids, rng):
    kind = rng.choice(['ok', 'ok', 'ok', 'blank', 'dotdot', 'abs', 'garbage', 'missing', 'empty'])
    lines = list(ids)
    if kind == 'blank':
        lines = ['', *(f'  {i}\t' for i in lines), '', '   ']
    elif kind == 'dotdot':
        lines.insert(int(rng.integers(len(lines) + 1)), '../' + ids[0])
    elif kind == 'abs':
        lines.append('/tmp/' + ids[0])
    elif kind == 'missing':
        lines.append('not_there')
    elif kind == 'empty':
        lines = []
    text = '\n'.join(lines).encode()
    if kind == 'garbage':
        text = rng.bytes(int(rng.integers(0, 64)))
    return text


def test_fuzz_corrupted_files_load_or_raise_dataset_error(tmp_path):
    rng = np.random.default_rng(20250517)
    outcomes = {'loaded': 0, 'DatasetError': 0}
    for trial in range(300):
        folder = tmp_path / str(trial)
        ids = [f'case{j}' for j in range(int(rng.integers(1, 3)))]
        for case_id in ids:
            _mutate_h5(folder / f'{case_id}.h5', rng)
        (folder / 'train.list').write_bytes(_list_text(ids, rng))
        try:
            ds = H5Dataset(folder, pattern='{id}.h5', num_classes=2)
            for i in range(len(ds)):
                sample = ds[(i, trial, 0)]
                image, label = sample['image'], sample['label']
                assert image.dtype == np.float32 and image.ndim == 3 and image.shape == label.shape
                assert np.isfinite(image).all() and np.issubdtype(label.dtype, np.integer)
                assert label.min() >= 0 and label.max() <= 1
            ds.validate()
            outcomes['loaded'] += 1
        except DatasetError as e:
            assert '\n' not in str(e)
            outcomes['DatasetError'] += 1
    assert outcomes['loaded'] > 20 and outcomes['DatasetError'] > 150, outcomes
    assert no_open_h5_files()
