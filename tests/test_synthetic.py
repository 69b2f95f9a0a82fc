"""Phantom dataset: LA layout, determinism, label statistics, difficulty, folder safety, CLI."""
import inspect
import json
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest
from scipy import ndimage

from dataloaders import synthetic
from dataloaders.datasets import LA_SUBDIR
from dataloaders.synthetic import SyntheticDataError, make_phantom, make_synthetic_dataset

REPO = Path(__file__).resolve().parents[1]
SMALL = dict(num_train=2, num_test=1, shape=(32, 32, 32))


def read_case(root, case_id):
    with h5py.File(root / LA_SUBDIR / case_id / 'mri_norm2.h5', 'r') as f:
        assert sorted(f.keys()) == ['image', 'label']
        return f['image'][()], f['label'][()]


def read_all(root):
    ids = (root / 'train.list').read_text().split() + (root / 'test.list').read_text().split()
    return ids, [read_case(root, i) for i in ids]


def best_threshold_dice(image, label):
    """Best Dice of (image > t) or (image < t) against label over every possible t, exactly.

    Sorting by intensity, predicting the top k voxels gives TP(k) = cumsum of labels, so
    Dice(k) = 2 TP(k) / (k + |label|); the best k is the best threshold.
    """
    values, truth = np.ravel(image), np.ravel(label).astype(bool)
    best = 0.0
    for order in (np.argsort(-values, kind='stable'), np.argsort(values, kind='stable')):
        tp = np.cumsum(truth[order])
        best = max(best, float((2 * tp / (np.arange(1, values.size + 1) + truth.sum())).max()))
    return best


@pytest.fixture(scope='module')
def default_set(tmp_path_factory):
    """8 cases at the default shape, seed 0 (the first cases of the default 40/10 set)."""
    return make_synthetic_dataset(tmp_path_factory.mktemp('synthetic') / 'Synthetic',
                                  num_train=6, num_test=2, seed=0)


def test_layout_is_la(default_set):
    assert sorted(p.name for p in default_set.iterdir()) == [LA_SUBDIR, 'synthetic.json', 'test.list', 'train.list']
    train = (default_set / 'train.list').read_text().splitlines()
    test = (default_set / 'test.list').read_text().splitlines()
    assert len(train) == 6 and len(test) == 2 and not set(train) & set(test)
    assert sorted(p.name for p in (default_set / LA_SUBDIR).iterdir()) == sorted(train + test)
    for case_id in train + test:
        assert [p.name for p in (default_set / LA_SUBDIR / case_id).iterdir()] == ['mri_norm2.h5']
        image, label = read_case(default_set, case_id)
        assert image.dtype == np.float32 and label.dtype == np.uint8
        assert image.shape == label.shape == (64, 64, 48)
        assert np.isfinite(image).all()
        # z-scored like LA
        assert abs(float(image.mean())) < 1e-3 and abs(float(image.std()) - 1) < 1e-3
    params = json.loads((default_set / 'synthetic.json').read_text())
    assert params['complete'] and params['shape'] == [64, 64, 48] and params['seed'] == 0


def test_default_shape_fits_a_training_patch():
    # the CPU preset crops patches like 48x48x32 (every dim divisible by 16); volumes must be larger
    defaults = {k: p.default for k, p in inspect.signature(make_synthetic_dataset).parameters.items()}
    shape = defaults['shape']
    assert all(s % 16 == 0 for s in shape) and all(s > p for s, p in zip(shape, (48, 48, 32)))
    assert (defaults['num_train'], defaults['num_test'], defaults['seed']) == (40, 10, 0)


def test_deterministic(tmp_path):
    a = make_synthetic_dataset(tmp_path / 'a', **SMALL, seed=3)
    b = make_synthetic_dataset(tmp_path / 'b', **SMALL, seed=3)
    c = make_synthetic_dataset(tmp_path / 'c', **SMALL, seed=4)
    ids_a, cases_a = read_all(a)
    ids_b, cases_b = read_all(b)
    assert ids_a == ids_b
    for (image_a, label_a), (image_b, label_b) in zip(cases_a, cases_b):
        assert image_a.tobytes() == image_b.tobytes() and label_a.tobytes() == label_b.tobytes()
    _, cases_c = read_all(c)
    assert cases_a[0][0].tobytes() != cases_c[0][0].tobytes()


def test_label_statistics(default_set):
    ids, cases = read_all(default_set)
    labels = [label for _, label in cases]
    for case_id, label in zip(ids, labels):
        assert set(np.unique(label)) == {0, 1}, case_id
        assert 0.01 < label.mean() < 0.15, (case_id, label.mean())
        # one compact blob, clear of the border (the LA crops keep the atrium inside)
        nz = np.nonzero(label)
        assert all(a.min() >= 2 and a.max() <= s - 3 for a, s in zip(nz, label.shape))
    # every case is a different phantom, train and test included
    for i in range(len(labels)):
        for j in range(i + 1, len(labels)):
            assert not np.array_equal(labels[i], labels[j]), (ids[i], ids[j])


def test_best_threshold_is_poor(default_set):
    """No intensity threshold segments the target: best Dice <= 0.6 per case and pooled."""
    # the sweep itself finds an easy target
    _, cases = read_all(default_set)
    image, label = cases[0]
    assert best_threshold_dice(label + 0.1 * image, label) > 0.99
    per_case = [best_threshold_dice(image, label) for image, label in cases]
    pooled = best_threshold_dice(np.concatenate([im.ravel() for im, _ in cases]),
                                 np.concatenate([lb.ravel() for _, lb in cases]))
    assert max(per_case) <= 0.6, per_case
    assert pooled <= 0.6, pooled


def test_shape_separates_target(default_set):
    """Learnable: a fixed shape rule (threshold, opening with a radius-4 ball, largest component)
    finds the target with Dice >= 0.85, where intensity alone stays <= 0.6."""
    grid = np.indices((9, 9, 9)) - 4
    ball = (grid ** 2).sum(0) <= 16
    dice = []
    for image, label in read_all(default_set)[1]:
        bright = ndimage.gaussian_filter(image, 1.0) > 1.0
        opened = ndimage.binary_opening(bright, ball)
        components, n = ndimage.label(opened)
        assert n > 0
        largest = components == 1 + np.argmax(ndimage.sum(opened, components, range(1, n + 1)))
        pred = ndimage.binary_dilation(largest) & bright
        dice.append(2 * (pred & (label == 1)).sum() / (pred.sum() + label.sum()))
    assert np.mean(dice) >= 0.85, dice


def test_three_classes_share_the_image():
    rng_seed = [0, 5]
    image2, label2 = make_phantom(np.random.default_rng(rng_seed), (64, 64, 48), num_classes=2)
    image3, label3 = make_phantom(np.random.default_rng(rng_seed), (64, 64, 48), num_classes=3)
    assert set(np.unique(label3)) == {0, 1, 2}
    assert np.array_equal(image2, image3)
    assert np.array_equal(label3 == 1, label2 == 1)
    assert (label3 == 2).sum() > 0.1 * (label3 == 1).sum()


def test_three_class_dataset(tmp_path):
    root = make_synthetic_dataset(tmp_path / 's3', **SMALL, num_classes=3)
    for _, label in read_all(root)[1]:
        assert set(np.unique(label)) == {0, 1, 2}


def test_refuses_foreign_data(tmp_path):
    root = tmp_path / 'LA'
    (root / LA_SUBDIR).mkdir(parents=True)
    (root / 'train.list').write_text('real_case\n')
    for overwrite in (False, True):
        with pytest.raises(SyntheticDataError, match='not a synthetic set'):
            make_synthetic_dataset(root, **SMALL, overwrite=overwrite)
    assert (root / 'train.list').read_text() == 'real_case\n'
    assert not (root / 'synthetic.json').exists()
    # a synthetic.json someone else wrote is not ours either
    (root / 'synthetic.json').write_text('{"format": "other"}')
    with pytest.raises(SyntheticDataError, match='not written by this generator'):
        make_synthetic_dataset(root, **SMALL, overwrite=True)
    assert (root / 'train.list').read_text() == 'real_case\n'


def test_same_parameters_do_nothing(tmp_path, monkeypatch):
    root = make_synthetic_dataset(tmp_path / 's', **SMALL)
    before = {p: p.stat().st_mtime_ns for p in root.rglob('*')}

    def fail(*args, **kwargs):
        raise AssertionError('regenerated an up-to-date set')
    monkeypatch.setattr(synthetic, 'make_phantom', fail)
    assert make_synthetic_dataset(root, **SMALL) == root
    assert {p: p.stat().st_mtime_ns for p in root.rglob('*')} == before


def test_other_parameters_need_overwrite(tmp_path):
    root = make_synthetic_dataset(tmp_path / 's', **SMALL, seed=0)
    first = read_case(root, 'phantom_000')[0]
    with pytest.raises(SyntheticDataError, match='other parameters'):
        make_synthetic_dataset(root, **SMALL, seed=1)
    assert np.array_equal(read_case(root, 'phantom_000')[0], first)
    make_synthetic_dataset(root, num_train=1, num_test=1, shape=(32, 32, 32), seed=1, overwrite=True)
    assert (root / 'train.list').read_text().split() == ['phantom_000']
    assert (root / 'test.list').read_text().split() == ['phantom_001']
    assert sorted(p.name for p in (root / LA_SUBDIR).iterdir()) == ['phantom_000', 'phantom_001']
    assert not np.array_equal(read_case(root, 'phantom_000')[0], first)
    assert json.loads((root / 'synthetic.json').read_text())['seed'] == 1


def test_interrupted_set_is_redone(tmp_path):
    root = make_synthetic_dataset(tmp_path / 's', **SMALL)
    (root / LA_SUBDIR / 'phantom_001' / 'mri_norm2.h5').unlink()
    make_synthetic_dataset(root, **SMALL)  # ours, same parameters, incomplete: regenerated
    assert (root / LA_SUBDIR / 'phantom_001' / 'mri_norm2.h5').is_file()


def test_bad_arguments(tmp_path):
    with pytest.raises(SyntheticDataError, match='num_classes'):
        make_synthetic_dataset(tmp_path / 'x', num_classes=4)
    with pytest.raises(SyntheticDataError, match='shape'):
        make_synthetic_dataset(tmp_path / 'x', shape=(8, 64, 64))
    assert not (tmp_path / 'x').exists()


def test_cli(tmp_path, capsys):
    out = tmp_path / 'Synthetic'
    argv = ['--out', str(out), '--num_train', '2', '--num_test', '1', '--shape', '32', '32', '32']
    synthetic.main(argv)
    assert f'wrote 2 train + 1 test, 32x32x32, 2 classes, seed 0 in {out}' in capsys.readouterr().out
    synthetic.main(argv)
    assert 'found' in capsys.readouterr().out
    with pytest.raises(SystemExit) as exit_info:
        synthetic.main(argv[:-4] + ['--seed', '1'])
    message = str(exit_info.value.code)
    assert message.startswith('synthetic: error: ') and '\n' not in message and '--overwrite' in message


def test_cli_module_entry(tmp_path):
    out = tmp_path / 'S'
    result = subprocess.run([sys.executable, '-m', 'dataloaders.synthetic', '--out', str(out),
                             '--num_train', '1', '--num_test', '1', '--shape', '32', '32', '32',
                             '--num_classes', '3'], cwd=REPO, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert str(out) in result.stdout
    assert set(np.unique(read_case(out, 'phantom_001')[1])) == {0, 1, 2}


def test_la_heart_reads_the_set(default_set):
    from dataloaders.datasets import LAHeart
    train = LAHeart(default_set, split='train', num=4)
    test = LAHeart(default_set, split='test')
    assert len(train) == 4 and len(test) == 2
    sample = train[(0, 0, 0)]
    assert sample['image'].shape == (64, 64, 48) and set(np.unique(sample['label'])) == {0, 1}
    assert test[0]['image'].dtype == np.float32
