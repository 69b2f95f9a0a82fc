import importlib.util
import json
import math
from pathlib import Path

import numpy as np
import pytest

from utils.metrics import calculate_metric_percase, largest_connected_component, summarize

FIXTURES = Path(__file__).resolve().parent / 'fixtures'


def _fixture_script():
    spec = importlib.util.spec_from_file_location('make_medpy_fixture', FIXTURES / 'make_medpy_fixture.py')
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _brute_force(pred, gt, spacing):
    """Independent reference: explicit surface voxels (a 6-neighbour is background or outside the array) and all
    pairwise distances; percentile by hand with linear interpolation between order statistics."""
    def surface_points(mask):
        padded = np.pad(mask, 1, constant_values=False)
        points = []
        for x, y, z in zip(*np.nonzero(mask)):
            px, py, pz = x + 1, y + 1, z + 1
            neighbours = [padded[px - 1, py, pz], padded[px + 1, py, pz], padded[px, py - 1, pz],
                          padded[px, py + 1, pz], padded[px, py, pz - 1], padded[px, py, pz + 1]]
            if not all(neighbours):
                points.append((x, y, z))
        return np.asarray(points, dtype=np.float64) * np.asarray(spacing, dtype=np.float64)

    sp, sg = surface_points(pred), surface_points(gt)
    pairwise = np.sqrt(((sp[:, None, :] - sg[None, :, :]) ** 2).sum(-1))
    d_pg, d_gp = pairwise.min(axis=1), pairwise.min(axis=0)
    both = np.sort(np.concatenate([d_pg, d_gp]))
    rank = 0.95 * (len(both) - 1)
    lo = int(math.floor(rank))
    hi = min(lo + 1, len(both) - 1)
    hd95 = both[lo] + (rank - lo) * (both[hi] - both[lo])
    inter = np.logical_and(pred, gt).sum()
    dice = 2 * inter / (pred.sum() + gt.sum())
    jaccard = inter / np.logical_or(pred, gt).sum()
    return dice, jaccard, hd95, d_pg.mean()


def test_matches_medpy_fixture():
    data = json.loads((FIXTURES / 'medpy_metrics.json').read_text())
    assert data['meta']['medpy'] == '0.5.2'
    assert len(data['cases']) >= 8
    script = _fixture_script()
    rebuilt = {name: (p, g, s) for name, p, g, s in script.build_cases()}
    for case in data['cases']:
        pred, gt = script.unpack(case['pred'], case['shape']), script.unpack(case['gt'], case['shape'])
        # the committed masks are the ones the script builds (so the script really made this fixture)
        p2, g2, s2 = rebuilt[case['name']]
        assert np.array_equal(pred, p2) and np.array_equal(gt, g2)
        assert (None if s2 is None else list(s2)) == case['spacing']
        got = calculate_metric_percase(pred, gt, spacing=case['spacing'])
        want = (case['dc'], case['jc'], case['hd95'], case['asd'])
        np.testing.assert_allclose(got, want, rtol=0, atol=1e-6, err_msg=case['name'])


def test_matches_brute_force_on_random_masks():
    rng = np.random.default_rng(123)
    checked = 0
    for trial in range(40):
        shape = tuple(int(s) for s in rng.integers(2, 9, size=3))
        pred = rng.random(shape) < rng.uniform(0.1, 0.7)
        gt = rng.random(shape) < rng.uniform(0.1, 0.7)
        if not pred.any() or not gt.any():
            continue
        spacing = (1.0, 1.0, 1.0) if trial % 2 else tuple(rng.uniform(0.3, 3.0, size=3))
        got = calculate_metric_percase(pred.astype(np.uint8), gt.astype(np.int64),
                                       spacing=None if trial % 2 else spacing)
        np.testing.assert_allclose(got, _brute_force(pred, gt, spacing), rtol=0, atol=1e-6)
        checked += 1
    assert checked >= 30


def test_asd_is_directed_and_hd95_symmetric():
    shape = (12, 12, 12)
    pred = np.zeros(shape, bool)
    pred[5, 5, 5] = True
    gt = np.zeros(shape, bool)
    gt[2:9, 2:9, 2:9] = True
    d, j, hd, asd = calculate_metric_percase(pred, gt)
    d2, j2, hd2, asd2 = calculate_metric_percase(gt, pred)
    assert asd == pytest.approx(3.0)  # the centre voxel is 3 from the nearest face of the cube's surface
    assert asd2 != pytest.approx(asd)
    assert hd == pytest.approx(hd2) and d == pytest.approx(d2) and j == pytest.approx(j2)


def test_scalar_spacing_equals_repeated_and_bad_spacing_raises():
    rng = np.random.default_rng(5)
    pred, gt = rng.random((6, 7, 5)) < 0.4, rng.random((6, 7, 5)) < 0.4
    assert calculate_metric_percase(pred, gt, spacing=2.0) == calculate_metric_percase(pred, gt, spacing=(2, 2, 2))
    with pytest.raises(ValueError):
        calculate_metric_percase(pred, gt, spacing=(1.0, 1.0))
    with pytest.raises(ValueError):
        calculate_metric_percase(pred, gt[:-1])


def test_empty_cases():
    gt = np.zeros((6, 6, 6), bool)
    gt[1:4, 1:4, 1:4] = True
    empty = np.zeros_like(gt)
    d, j, hd, asd = calculate_metric_percase(empty, gt)
    assert (d, j) == (0.0, 0.0) and math.isnan(hd) and math.isnan(asd)
    assert calculate_metric_percase(empty, gt, lineage_empty=True) == (0.0, 0.0, 0.0, 0.0)
    d, j, hd, asd = calculate_metric_percase(gt, empty)  # prediction but no ground truth
    assert (d, j) == (0.0, 0.0) and math.isnan(hd) and math.isnan(asd)
    d, j, hd, asd = calculate_metric_percase(empty, empty)  # docs/method.md: an empty prediction scores 0
    assert (d, j) == (0.0, 0.0) and math.isnan(hd)


def test_largest_connected_component_is_26_connected():
    mask = np.zeros((10, 10, 10), np.uint8)
    mask[0:3, 0:3, 0:3] = 1            # 27 voxels
    mask[6:9, 6:9, 6:8] = 2            # 18 voxels (non-zero label values count as foreground)
    mask[3, 3, 3] = 1                  # touches the first block only through a corner: joins it under 26-connectivity
    mask[5, 0, 9] = 1                  # isolated voxel
    out = largest_connected_component(mask)
    expected = np.zeros(mask.shape, bool)
    expected[0:3, 0:3, 0:3] = True
    expected[3, 3, 3] = True
    assert out.dtype == bool
    np.testing.assert_array_equal(out, expected)
    # second block grows to 27 voxels: only the corner link (26-connectivity) makes the first component (28) larger
    mask[6:9, 6:9, 6:9] = 1
    out = largest_connected_component(mask)
    assert out[3, 3, 3] and out.sum() == 28 and not out[7, 7, 7]
    assert not largest_connected_component(np.zeros((4, 4, 4))).any()


def test_summarize_excludes_undefined_distances_and_counts_empty():
    rows = [
        {'case': 'a', 'dice': 0.8, 'jaccard': 0.6, 'hd95': 4.0, 'asd': 1.0, 'empty': False},
        {'case': 'b', 'dice': 0.6, 'jaccard': 0.4, 'hd95': 6.0, 'asd': 3.0, 'empty': False},
        {'case': 'c', 'dice': 0.0, 'jaccard': 0.0, 'hd95': float('nan'), 'asd': float('nan'), 'empty': True},
    ]
    s = summarize(rows)
    assert s['n_cases'] == 3 and s['n_empty'] == 1
    assert s['dice']['mean'] == pytest.approx(np.mean([0.8, 0.6, 0.0]))
    assert s['dice']['std'] == pytest.approx(np.std([0.8, 0.6, 0.0]))
    assert s['hd95'] == {'mean': pytest.approx(5.0), 'std': pytest.approx(1.0), 'n': 2}
    assert s['asd']['mean'] == pytest.approx(2.0) and s['dice']['n'] == 3
    assert 'case' not in s and 'empty' not in s
