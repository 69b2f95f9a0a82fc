import math

import numpy as np
import pytest
import torch
from torch import nn

from utils import inference
from utils.evaluation import test_all_case
from utils.metrics import calculate_metric_percase, largest_connected_component, summarize

PATCH = (8, 8, 4)
STRIDE_XY, STRIDE_Z = 5, 3


class PositionNet(nn.Module):
    """Logit of class 1 = affine function of the position inside the window + gain * input; class 0 logit = 0."""

    def __init__(self, coef=(0.3, -0.25, 0.5), offset=-1.0, gain=0.0):
        super().__init__()
        self.coef, self.offset, self.gain = coef, offset, gain
        self.anchor = nn.Parameter(torch.zeros(()))  # gives the module a device

    def forward(self, x):
        _, _, X, Y, Z = x.shape
        gx, gy, gz = (torch.arange(n, dtype=x.dtype, device=x.device) for n in (X, Y, Z))
        a, b, c = self.coef
        f = a * gx[:, None, None] + b * gy[None, :, None] + c * gz[None, None, :] + self.offset + self.gain * x[:, 0]
        return torch.stack([torch.zeros_like(f), f], dim=1), x


def position_logit(coef, offset, gain, window_image):
    X, Y, Z = window_image.shape
    a, b, c = coef
    return (a * np.arange(X)[:, None, None] + b * np.arange(Y)[None, :, None] + c * np.arange(Z)[None, None, :]
            + offset + gain * window_image)


class ConstantNet(nn.Module):
    def __init__(self, logits):
        super().__init__()
        self.register_buffer('logits', torch.tensor(logits, dtype=torch.float32))

    def forward(self, x):
        shape = (x.shape[0], len(self.logits)) + tuple(x.shape[2:])
        return self.logits[None, :, None, None, None].expand(shape).clone(), x


class ThresholdNet(nn.Module):
    """Class 1 where the input exceeds 0.5 (logit 20 * (x - 0.5))."""

    def forward(self, x):
        f = 20.0 * (x[:, 0] - 0.5)
        return torch.stack([torch.zeros_like(f), f], dim=1), x


def tiny_convnet(seed, num_classes=2):
    torch.manual_seed(seed)
    body = nn.Sequential(nn.Conv3d(1, 3, 3, padding=1), nn.ReLU(), nn.Conv3d(3, num_classes, 3, padding=1))

    class Wrapped(nn.Module):
        def __init__(self):
            super().__init__()
            self.body = body

        def forward(self, x):
            return self.body(x), x
    return Wrapped().eval()


def literature_starts(length, patch, stride):
    # independent formulation of min(stride * i, L - p), i < ceil((L - p) / stride) + 1
    return sorted(set(range(0, length - patch, stride)) | {length - patch})


def lineage_pad(image, patch):
    pads = [((p - s) // 2, p - s - (p - s) // 2) if s < p else (0, 0) for s, p in zip(image.shape, patch)]
    return np.pad(image, pads), pads


def naive_sliding_window(window_prob, image, stride_xy, stride_z, patch, num_classes, weight=None):
    """Per-window loop as the lineage writes it, in float64 numpy. window_prob(window_image) -> (C, px, py, pz)."""
    padded, pads = lineage_pad(image, patch)
    score = np.zeros((num_classes,) + padded.shape)
    count = np.zeros(padded.shape)
    w = np.ones(patch) if weight is None else np.asarray(weight, dtype=np.float64)
    px, py, pz = patch
    for x in literature_starts(padded.shape[0], px, stride_xy):
        for y in literature_starts(padded.shape[1], py, stride_xy):
            for z in literature_starts(padded.shape[2], pz, stride_z):
                window = (slice(x, x + px), slice(y, y + py), slice(z, z + pz))
                score[(slice(None),) + window] += window_prob(padded[window]) * w
                count[window] += w
    score /= count
    crop = tuple(slice(a, a + n) for (a, _), n in zip(pads, image.shape))
    score = score[(slice(None),) + crop]
    return score.argmax(0), score


def torch_window_prob(nets):
    def prob(window_image):
        t = torch.from_numpy(np.ascontiguousarray(window_image, dtype=np.float32))[None, None]
        with torch.no_grad():
            p = sum(torch.softmax(n(t)[0], dim=1) for n in nets) / len(nets)
        return p[0].double().numpy()
    return prob


def run(net, image, num_classes=2, **kw):
    return inference.test_single_case(net, image, STRIDE_XY, STRIDE_Z, PATCH, num_classes, **kw)


def test_window_starts_and_strides():
    assert inference.window_starts(20, 8, 5) == [0, 5, 10, 12]
    assert inference.window_starts(8, 8, 3) == [0]
    assert inference.window_starts(121, 112, 18) == [0, 9]
    assert inference.window_starts(130, 112, 18) == [0, 18]
    assert inference.window_starts(11, 4, 3) == [0, 3, 6, 7]
    for length in range(8, 40):
        assert inference.window_starts(length, 8, 5) == literature_starts(length, 8, 5)
    with pytest.raises(ValueError):
        inference.window_starts(7, 8, 5)
    assert inference.overlap_strides((112, 112, 80), 0.5) == (56, 40)
    assert inference.overlap_strides((96, 96, 96), 0.0) == (96, 96)
    assert inference.overlap_strides((10, 12, 10), 0.7) == (3, 3)
    with pytest.raises(ValueError):
        inference.overlap_strides((96, 96, 96), 1.0)


@pytest.mark.parametrize('shape', [(5, 6, 3), (8, 8, 4), (21, 17, 11), (5, 19, 4), (9, 8, 2)],
                         ids=['smaller', 'equal', 'larger', 'mixed', 'one_more'])
def test_position_model_gives_expected_average(shape):
    rng = np.random.default_rng(sum(shape))
    image = rng.normal(size=shape).astype(np.float32)
    net = PositionNet(gain=0.8)
    label, score = run(net, image)

    def window_prob(window_image):
        f = position_logit(net.coef, net.offset, net.gain, window_image)
        p1 = 1.0 / (1.0 + np.exp(-f))
        return np.stack([1.0 - p1, p1])
    want_label, want_score = naive_sliding_window(window_prob, image, STRIDE_XY, STRIDE_Z, PATCH, 2)
    assert label.shape == shape and score.shape == (2,) + shape
    assert score.dtype == np.float32 and np.issubdtype(label.dtype, np.integer)
    np.testing.assert_allclose(score, want_score, rtol=0, atol=1e-6)
    decided = np.abs(want_score[1] - 0.5) > 1e-5
    np.testing.assert_array_equal(label[decided], want_label[decided])


def test_padding_undone_exactly():
    # the logit is the intensity itself, so every window agrees: score must be sigmoid(image) voxel for voxel
    shape = (5, 3, 2)
    image = (np.arange(np.prod(shape), dtype=np.float32).reshape(shape) - 14.5) / 7.0
    label, score = run(PositionNet(coef=(0, 0, 0), offset=0.0, gain=1.0), image)
    np.testing.assert_allclose(score[1], 1 / (1 + np.exp(-image.astype(np.float64))), rtol=0, atol=1e-6)
    np.testing.assert_array_equal(label, (image > 0).astype(label.dtype))


def test_equals_naive_loop_with_a_conv_net():
    rng = np.random.default_rng(0)
    image = rng.normal(size=(23, 19, 13)).astype(np.float32)
    net = tiny_convnet(1)
    label, score = run(net, image)
    want_label, want_score = naive_sliding_window(torch_window_prob([net]), image, STRIDE_XY, STRIDE_Z, PATCH, 2)
    np.testing.assert_allclose(score, want_score, rtol=0, atol=1e-5)
    assert (label == want_label).mean() >= 0.9999


def test_list_of_nets_averages_softmax():
    rng = np.random.default_rng(1)
    image = rng.normal(size=(14, 11, 7)).astype(np.float32)
    net_a, net_b = tiny_convnet(2, 3), tiny_convnet(3, 3)
    _, score_a = run(net_a, image, num_classes=3)
    _, score_b = run(net_b, image, num_classes=3)
    label, score = run([net_a, net_b], image, num_classes=3)
    np.testing.assert_allclose(score, (score_a + score_b) / 2, rtol=0, atol=1e-6)
    _, want = naive_sliding_window(torch_window_prob([net_a, net_b]), image, STRIDE_XY, STRIDE_Z, PATCH, 3)
    np.testing.assert_allclose(score, want, rtol=0, atol=1e-5)
    np.testing.assert_array_equal(label, score.argmax(0))
    _, score_tuple = run((net_a, net_b), image, num_classes=3)
    np.testing.assert_array_equal(score_tuple, score)


@pytest.mark.parametrize('batch_size', [2, 7, 1000])
def test_batched_windows_equal_single(batch_size):
    rng = np.random.default_rng(2)
    image = rng.normal(size=(17, 13, 9)).astype(np.float32)
    net = tiny_convnet(4)
    label_1, score_1 = run(net, image, batch_size=1)
    label_b, score_b = run(net, image, batch_size=batch_size)
    np.testing.assert_allclose(score_b, score_1, rtol=0, atol=1e-6)
    assert (label_b == label_1).mean() >= 0.9999


def test_gaussian_weight_map():
    w = inference.gaussian_weight((9, 8, 5))
    assert w.shape == (9, 8, 5) and w.dtype == torch.float32
    assert float(w.max()) == pytest.approx(1.0) and float(w.min()) > 0
    # centre (4, 3.5, 2): the two middle voxels of the even axis share the maximum
    assert float(w[4, 3, 2]) == float(w[4, 4, 2]) == pytest.approx(1.0)
    torch.testing.assert_close(w, w.flip(0).flip(1).flip(2))
    assert float(w[0, 0, 0]) < float(w[2, 2, 1]) < float(w[4, 3, 2])


def test_gaussian_weighting_keeps_constant_model_constant():
    image = np.random.default_rng(3).normal(size=(19, 15, 10)).astype(np.float32)
    logits = [0.3, -0.4, 1.2]
    _, score = run(ConstantNet(logits), image, num_classes=3, weight=inference.gaussian_weight(PATCH))
    want = torch.softmax(torch.tensor(logits, dtype=torch.float64), 0).numpy()
    np.testing.assert_allclose(score, np.broadcast_to(want[:, None, None, None], score.shape), rtol=0, atol=1e-6)


def test_gaussian_weighting_equals_naive_weighted_loop():
    image = np.random.default_rng(4).normal(size=(19, 15, 10)).astype(np.float32)
    net = PositionNet(gain=0.3)
    weight = inference.gaussian_weight(PATCH, sigma_scale=0.25)
    _, score = run(net, image, weight=weight, batch_size=3)

    def window_prob(window_image):
        p1 = 1.0 / (1.0 + np.exp(-position_logit(net.coef, net.offset, net.gain, window_image)))
        return np.stack([1.0 - p1, p1])
    _, want = naive_sliding_window(window_prob, image, STRIDE_XY, STRIDE_Z, PATCH, 2, weight=weight.numpy())
    _, unweighted = naive_sliding_window(window_prob, image, STRIDE_XY, STRIDE_Z, PATCH, 2)
    assert np.abs(want - unweighted).max() > 1e-3  # the weighting really changes this map
    np.testing.assert_allclose(score, want, rtol=0, atol=1e-6)


def test_bad_arguments_raise():
    image = np.zeros((8, 8, 4), np.float32)
    with pytest.raises(ValueError):
        run(tiny_convnet(0), image, num_classes=3)
    with pytest.raises(ValueError):
        run(tiny_convnet(0), image, weight=torch.ones(4, 4, 4))
    with pytest.raises(ValueError):
        run(tiny_convnet(0), image[0])


def test_channels_last_and_cpu_amp_match_float32():
    image = np.random.default_rng(7).normal(size=(30, 27, 14)).astype(np.float32)
    nets = [tiny_convnet(6), tiny_convnet(7)]
    label, score = run(nets, image)
    label_cl, score_cl = run(nets, image, channels_last=True)
    weights = [p for n in nets for p in n.parameters() if p.dim() == 5]
    assert all(w.is_contiguous(memory_format=torch.channels_last_3d) for w in weights)
    np.testing.assert_allclose(score_cl, score, rtol=0, atol=1e-5)
    assert (label_cl == label).mean() > 0.999
    # --amp on the CPU: bfloat16 forward passes, float32 scores (sums of probabilities stay probabilities)
    label_amp, score_amp = run(nets, image, amp=torch.bfloat16, channels_last=True)
    assert score_amp.dtype == np.float32 and not np.array_equal(score_amp, score)
    np.testing.assert_allclose(score_amp.sum(axis=0), 1, atol=1e-5)
    np.testing.assert_allclose(score_amp, score, rtol=0, atol=2e-2)
    assert (label_amp == label).mean() > 0.98


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason='needs CUDA')
def test_cuda_matches_cpu():
    image = np.random.default_rng(5).normal(size=(30, 27, 14)).astype(np.float32)
    net = tiny_convnet(6)
    _, score_cpu = run(net, image, device='cpu')
    net = net.cuda()
    label, score = run(net, image, batch_size=4)
    np.testing.assert_allclose(score, score_cpu, rtol=0, atol=1e-5)
    _, score_w = run([net, net], image, weight=inference.gaussian_weight(PATCH))
    assert np.isfinite(score_w).all()


def blob_case(rng, shape=(20, 18, 10)):
    grid = np.indices(shape)
    big = ((grid[0] - 6) ** 2 + (grid[1] - 7) ** 2 + (grid[2] - 5) ** 2) <= 16
    small = ((grid[0] - 15) ** 2 + (grid[1] - 13) ** 2 + (grid[2] - 5) ** 2) <= 4
    image = (0.9 * (big | small) + 0.1 * rng.random(shape)).astype(np.float32)
    label = (((grid[0] - 7) ** 2 + (grid[1] - 7) ** 2 + (grid[2] - 5) ** 2) <= 20).astype(np.uint8)
    return image, label, big, small


def test_all_case_rows_equal_metrics_on_saved_predictions():
    rng = np.random.default_rng(6)
    cases, saved = [], {}
    for i in range(3):
        image, label, _, _ = blob_case(rng)
        cases.append((f'case{i}', image, label))
    cases.append(('empty', np.zeros((12, 9, 6), np.float32), np.ones((12, 9, 6), np.uint8)))

    def save(case_id, pred, image, label, score):
        saved[case_id] = (pred.copy(), score.copy())

    spacing = (0.625, 0.625, 1.5)
    rows = test_all_case(ThresholdNet(), iter(cases), 2, PATCH, STRIDE_XY, STRIDE_Z, spacing=spacing,
                         save_fn=save, progress=False)
    assert [r['case'] for r in rows] == [c[0] for c in cases] and set(saved) == set(r['case'] for r in rows)
    for row, (case_id, image, label) in zip(rows, cases):
        pred, score = saved[case_id]
        np.testing.assert_array_equal(pred, run(ThresholdNet(), image)[0])
        want = calculate_metric_percase(pred, label, spacing=spacing)
        np.testing.assert_allclose([row[m] for m in ('dice', 'jaccard', 'hd95', 'asd')], want, rtol=0, atol=0)
        assert row['empty'] == (not pred.any()) and row['seconds'] >= 0 and score.shape == (2,) + image.shape
    assert rows[-1]['empty'] and math.isnan(rows[-1]['hd95']) and rows[0]['dice'] > 0.5
    summary = summarize(rows)
    assert summary['n_empty'] == 1 and summary['hd95']['n'] == 3
    lineage = test_all_case(ThresholdNet(), cases, 2, PATCH, STRIDE_XY, STRIDE_Z, lineage_empty=True, progress=False)
    assert [lineage[-1][m] for m in ('dice', 'jaccard', 'hd95', 'asd')] == [0, 0, 0, 0]


def test_lcc_keeps_only_the_largest_component():
    image, label, big, small = blob_case(np.random.default_rng(7))
    saved = {}

    def save(case_id, pred, image, label, score):
        saved[case_id] = pred

    plain = test_all_case(ThresholdNet(), [('a', image, label)], 2, PATCH, STRIDE_XY, STRIDE_Z, save_fn=save,
                          progress=False)
    np.testing.assert_array_equal(saved['a'] != 0, big | small)
    rows = test_all_case(ThresholdNet(), [('a', image, label)], 2, PATCH, STRIDE_XY, STRIDE_Z, lcc=True,
                         save_fn=save, progress=False)
    np.testing.assert_array_equal(saved['a'] != 0, big)
    np.testing.assert_array_equal(saved['a'] != 0, largest_connected_component(big | small))
    assert rows[0]['dice'] == calculate_metric_percase(big, label)[0] != plain[0]['dice']


def test_multiclass_rows_have_per_class_columns():
    image, label, big, small = blob_case(np.random.default_rng(8))
    gt = label.astype(np.int64)
    gt[small] = 2

    class TwoBlobNet(nn.Module):
        # bright voxels are class 1; class 2's logit is always 1 below class 1's, so class 2 is never predicted
        def forward(self, x):
            bright = 20.0 * (x[:, 0] - 0.5)
            return torch.stack([torch.zeros_like(bright), bright, bright - 1.0], dim=1), x

    rows = test_all_case(TwoBlobNet(), [('m', image, gt)], 3, PATCH, STRIDE_XY, STRIDE_Z, progress=False)
    row = rows[0]
    for m in ('dice', 'jaccard', 'hd95', 'asd'):
        assert f'{m}_1' in row and f'{m}_2' in row
    assert row['empty_2'] and row['dice_2'] == 0.0 and math.isnan(row['hd95_2'])
    assert row['dice_1'] == calculate_metric_percase(big | small, gt == 1)[0]
