"""Losses of docs/method.md: values against hand computations / independent numpy code,
gradients (gradcheck and detachment), NaN-free edge cases."""
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from losses import (confident_disagreement, cosine_consistency_loss, cps_loss, cross_pseudo_label,
                    dice_loss, entropy, mutual_correction_loss, percentile, prototype_contrastive_loss,
                    softmax_mse_loss, supervised_loss, uncertain_mask, urps_loss)


# ---------------------------------------------------------------- helpers

def np_softmax(z):
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def np_dice_loss(p, y):
    return 1 - (2 * (p * y).sum() + 1e-5) / ((p * p).sum() + (y * y).sum() + 1e-5)


def column(values):
    """(C, V) nested list -> probability / logit tensor (1, C, V, 1, 1) float64."""
    return torch.tensor(values, dtype=torch.float64).reshape(1, len(values), -1, 1, 1)


def binary(fg):
    """foreground probabilities of V voxels -> (1, 2, V, 1, 1) float64."""
    fg = torch.tensor(fg, dtype=torch.float64)
    return torch.stack([1 - fg, fg]).reshape(1, 2, -1, 1, 1)


def rand_prob(shape, seed, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    return torch.softmax(3 * torch.randn(shape, generator=g, dtype=dtype), dim=1)


def assert_zero_on_graph(loss, leaf):
    assert torch.isfinite(loss) and loss.item() == 0
    assert loss.requires_grad
    loss.backward()
    assert leaf.grad is not None and torch.all(leaf.grad == 0)


# ---------------------------------------------------------------- Dice and supervised

def test_dice_loss_hand_value():
    p = torch.tensor([0.5, 1.0, 0.0, 0.25])
    y = torch.tensor([1, 1, 0, 0])
    expected = 1 - (2 * 1.5 + 1e-5) / (0.25 + 1 + 0.0625 + 2 + 1e-5)
    assert dice_loss(p, y).item() == pytest.approx(expected, rel=1e-6)
    assert dice_loss(p, y == 1).item() == pytest.approx(expected, rel=1e-6)
    # perfect prediction -> 0, empty target with empty prediction -> 0, never NaN
    assert dice_loss(torch.tensor([1.0, 0.0]), torch.tensor([1, 0])).item() == pytest.approx(0, abs=1e-6)
    assert dice_loss(torch.zeros(3), torch.zeros(3)).item() == 0


def test_supervised_loss_binary_matches_numpy():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 2, 3, 4, 2, generator=g, dtype=torch.float64)
    label = torch.randint(0, 2, (2, 3, 4, 2), generator=g)
    total, dice = supervised_loss(logits, label)
    z, y = logits.numpy(), label.numpy()
    p = np_softmax(z)
    ce = -np.log(np.take_along_axis(p, y[:, None], axis=1)).mean()
    expected_dice = np_dice_loss(p[:, 1], (y == 1).astype(float))
    assert dice.item() == pytest.approx(expected_dice, rel=1e-10)
    assert total.item() == pytest.approx(ce + expected_dice, rel=1e-10)


def test_supervised_loss_multiclass_matches_numpy():
    g = torch.Generator().manual_seed(1)
    logits = torch.randn(2, 4, 3, 2, 2, generator=g, dtype=torch.float64)
    label = torch.randint(0, 4, (2, 3, 2, 2), generator=g)
    label[label == 2] = 3  # class 2 absent: its Dice loss is 1 - 1e-5/(sum p^2 + 1e-5), still finite
    total, dice = supervised_loss(logits, label)
    z, y = logits.numpy(), label.numpy()
    p = np_softmax(z)
    ce = -np.log(np.take_along_axis(p, y[:, None], axis=1)).mean()
    expected_dice = np.mean([np_dice_loss(p[:, c], (y == c).astype(float)) for c in (1, 2, 3)])
    assert dice.item() == pytest.approx(expected_dice, rel=1e-10)
    assert total.item() == pytest.approx(ce + expected_dice, rel=1e-10)


@pytest.mark.parametrize('label_value', [0, 1])
def test_supervised_loss_single_class_present_is_finite(label_value):
    logits = torch.randn(1, 3, 2, 2, 2, requires_grad=True)
    total, dice = supervised_loss(logits, torch.full((1, 2, 2, 2), label_value))
    total.backward()
    assert torch.isfinite(total) and torch.isfinite(dice)
    assert torch.isfinite(logits.grad).all()


def test_gradcheck_dice_and_supervised():
    g = torch.Generator().manual_seed(2)
    score = torch.rand(2, 3, 2, generator=g, dtype=torch.float64, requires_grad=True)
    target = torch.randint(0, 2, (2, 3, 2), generator=g)
    assert torch.autograd.gradcheck(lambda s: dice_loss(s, target), (score,))
    for n_classes in (2, 3):
        logits = torch.randn(2, n_classes, 2, 2, 1, generator=g, dtype=torch.float64, requires_grad=True)
        label = torch.randint(0, n_classes, (2, 2, 2, 1), generator=g)
        assert torch.autograd.gradcheck(lambda z: supervised_loss(z, label)[0], (logits,))
        assert torch.autograd.gradcheck(lambda z: supervised_loss(z, label)[1], (logits,))


# ---------------------------------------------------------------- mutual correction

def test_confident_disagreement_binary_hand_example():
    # voxel:        both conf  A only  B only (A<thr)  both bg   A at thr  both unsure fg
    prob_a = binary([0.9,      0.9,    0.55,           0.1,      0.6,      0.58])
    prob_b = binary([0.7,      0.3,    0.8,            0.2,      0.1,      0.59])
    mask = confident_disagreement(prob_a, prob_b, conf_thresh=0.6)
    assert mask.dtype == torch.bool and mask.shape == (1, 6, 1, 1)
    assert mask.flatten().tolist() == [False, True, True, False, True, False]
    # a higher threshold makes voxel 0 disagree (only A is confident at 0.8)
    assert confident_disagreement(prob_a, prob_b, conf_thresh=0.8).flatten().tolist()[0]


def test_confident_disagreement_multiclass():
    # voxel 0: both confident, different fg classes -> in M (multi-class rule)
    # voxel 1: both confident, same class -> not in M
    # voxel 2: A confident background (argmax 0), B confident class 2 -> in M (XOR)
    # voxel 3: A confident class 1, B unsure class 2 -> in M (XOR)
    prob_a = column([[0.1, 0.1, 0.8, 0.1], [0.8, 0.1, 0.1, 0.3], [0.1, 0.8, 0.1, 0.6]])
    prob_b = column([[0.1, 0.1, 0.1, 0.3], [0.2, 0.2, 0.1, 0.2], [0.7, 0.7, 0.8, 0.5]])
    mask = confident_disagreement(prob_a, prob_b)
    assert mask.flatten().tolist() == [True, False, True, True]


def test_mutual_correction_hand_values():
    prob = binary([0.9, 0.2, 0.7, 0.4]).requires_grad_()
    label = torch.tensor([1, 1, 0, 0]).reshape(1, 4, 1, 1)
    mask = torch.tensor([True, False, True, False]).reshape(1, 4, 1, 1)
    loss = mutual_correction_loss(prob, label, mask)
    assert loss.item() == pytest.approx((0.1 ** 2 + 0.7 ** 2) / 2)
    loss.backward()
    # only masked voxels and only the foreground channel get gradient
    assert prob.grad[0, 0].abs().sum() == 0
    assert prob.grad[0, 1].flatten().tolist() == pytest.approx([-0.1, 0, 0.7, 0])
    # multi-class: mean over the one-hot foreground channels 1 and 2
    prob3 = column([[0.2, 0.6], [0.7, 0.1], [0.1, 0.3]])
    label3 = torch.tensor([1, 0]).reshape(1, 2, 1, 1)
    ones = torch.ones(1, 2, 1, 1, dtype=torch.bool)
    channel1 = (0.7 - 1) ** 2 + 0.1 ** 2
    channel2 = 0.1 ** 2 + 0.3 ** 2
    assert mutual_correction_loss(prob3, label3, ones).item() == pytest.approx((channel1 + channel2) / 2 / 2)


def test_mutual_correction_empty_mask_and_gradcheck():
    prob = rand_prob((2, 3, 2, 2, 1), 3).requires_grad_()
    label = torch.randint(0, 3, (2, 2, 2, 1))
    assert_zero_on_graph(mutual_correction_loss(prob, label, torch.zeros(2, 2, 2, 1, dtype=torch.bool)), prob)
    for n_classes in (2, 3):
        p = rand_prob((2, n_classes, 2, 2, 1), 4).requires_grad_()
        lab = torch.randint(0, n_classes, (2, 2, 2, 1))
        mask = torch.rand(2, 2, 2, 1) > 0.4
        assert torch.autograd.gradcheck(lambda q: mutual_correction_loss(q, lab, mask), (p,))


def test_mutual_correction_with_live_mask_gives_gradient_only_to_prob():
    logits_a = torch.randn(1, 2, 4, 4, 2, requires_grad=True)
    logits_b = torch.randn(1, 2, 4, 4, 2, requires_grad=True)
    prob_a, prob_b = torch.softmax(logits_a, 1), torch.softmax(logits_b, 1)
    mask = confident_disagreement(prob_a, prob_b, conf_thresh=0.5)
    assert not mask.requires_grad
    mutual_correction_loss(prob_a, torch.randint(0, 2, (1, 4, 4, 2)), mask).backward()
    assert logits_b.grad is None and logits_a.grad is not None


# ---------------------------------------------------------------- cosine consistency

def test_cosine_consistency_hand_value_and_gradcheck():
    prob_a = column([[1.0, 0.3], [0.0, 0.7]])
    prob_b = column([[0.6, 0.3], [0.8, 0.7]])
    assert cosine_consistency_loss(prob_a, prob_b).item() == pytest.approx((1 - 0.6 + 0) / 2)
    a = rand_prob((2, 3, 2, 1, 2), 5).requires_grad_()
    b = rand_prob((2, 3, 2, 1, 2), 6).requires_grad_()
    assert torch.autograd.gradcheck(cosine_consistency_loss, (a, b))
    cosine_consistency_loss(a, b).backward()
    assert a.grad.abs().sum() > 0 and b.grad.abs().sum() > 0  # gradient flows to both networks
    # a zero vector (not a probability, but must not poison training) stays finite
    z = torch.zeros(1, 2, 2, 1, 1, requires_grad=True)
    loss = cosine_consistency_loss(z, torch.rand(1, 2, 2, 1, 1))
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(z.grad).all()


# ---------------------------------------------------------------- URPS

def np_urps(student_logits, teacher_prob):
    ps = np_softmax(student_logits)
    pt = teacher_prob
    with np.errstate(divide='ignore', invalid='ignore'):
        kl = np.where(pt > 0, pt * np.log(pt / ps), 0.0).sum(axis=1)
    yhat = pt.argmax(axis=1)
    ce = -np.log(np.take_along_axis(ps, yhat[:, None], axis=1))[:, 0]
    return (np.exp(-kl) * ce).mean() + kl.mean()


def test_urps_hand_value():
    # one voxel, student uniform over 2 classes, teacher (0.75, 0.25): yhat = 0
    student = torch.zeros(1, 2, 1, 1, 1, dtype=torch.float64)
    teacher = binary([0.25])
    kl = 0.75 * math.log(0.75 / 0.5) + 0.25 * math.log(0.25 / 0.5)
    expected = math.exp(-kl) * math.log(2) + kl
    assert urps_loss(student, teacher).item() == pytest.approx(expected, rel=1e-12)


@pytest.mark.parametrize('n_classes', [2, 4])
def test_urps_matches_numpy_and_gradcheck(n_classes):
    g = torch.Generator().manual_seed(7)
    student = torch.randn(2, n_classes, 2, 3, 1, generator=g, dtype=torch.float64, requires_grad=True)
    teacher = rand_prob((2, n_classes, 2, 3, 1), 8).requires_grad_()
    loss = urps_loss(student, teacher)
    assert loss.item() == pytest.approx(np_urps(student.detach().numpy(), teacher.detach().numpy()), rel=1e-10)
    loss.backward()
    assert teacher.grad is None  # teacher detached inside
    # gradcheck would fail if the exp(-KL) weight or the KL term were detached
    assert torch.autograd.gradcheck(lambda z: urps_loss(z, teacher), (student,))


def test_urps_gradient_flows_through_weight():
    g = torch.Generator().manual_seed(9)
    student = torch.randn(1, 3, 2, 2, 1, generator=g, dtype=torch.float64, requires_grad=True)
    teacher = rand_prob((1, 3, 2, 2, 1), 10)
    urps_loss(student, teacher).backward()
    log_s = F.log_softmax(student, 1)
    kl = (teacher * (teacher.log() - log_s)).sum(1)
    ce = F.nll_loss(log_s, teacher.argmax(1), reduction='none')
    detached_weight = torch.autograd.grad((torch.exp(-kl).detach() * ce).mean() + kl.mean(), student)[0]
    assert not torch.allclose(student.grad, detached_weight)


def test_urps_one_hot_teacher_is_finite():
    teacher = torch.zeros(1, 3, 2, 2, 2)
    teacher[:, 1] = 1  # exact zeros: 0 log 0 must count as 0
    student = torch.randn(1, 3, 2, 2, 2, requires_grad=True)
    loss = urps_loss(student, teacher)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(student.grad).all()


# ---------------------------------------------------------------- percentile and cross pseudo-labels

@pytest.mark.parametrize('dtype', [torch.float64, torch.float32])
def test_percentile_matches_numpy(dtype):
    g = torch.Generator().manual_seed(11)
    rel = 1e-6 if dtype == torch.float32 else 1e-12
    for n in (1, 2, 5, 7, 100, 1001):
        values = torch.rand(n, generator=g, dtype=torch.float64).to(dtype)
        for q in (0, 12.5, 20, 33.3, 50, 80, 99.9, 100):
            expected = np.percentile(values.numpy(), q)
            assert percentile(values, q).item() == pytest.approx(float(expected), rel=rel)
    ties = torch.tensor([[1.0, 1.0, 2.0], [2.0, 2.0, 5.0]], dtype=dtype)
    for q in (0, 20, 50, 80, 100):
        assert percentile(ties, q).item() == pytest.approx(float(np.percentile(ties.numpy(), q)))


def test_percentile_beyond_torch_quantile_limit():
    n = (1 << 24) + 3  # torch.quantile refuses more than 2**24 elements
    values = torch.rand(n, generator=torch.Generator().manual_seed(12))
    assert percentile(values, 80).item() == pytest.approx(float(np.percentile(values.numpy(), 80)), rel=1e-6)


def np_cross_pseudo_label(pa, pb, uncertain_percent):
    arg_a, arg_b = pa.argmax(1), pb.argmax(1)
    yhat = np.maximum(arg_a, arg_b) if pa.shape[1] == 2 else ((pa + pb) / 2).argmax(1)
    reliable = np.zeros(yhat.shape, dtype=bool)
    for p, arg in ((pa, arg_a), (pb, arg_b)):
        with np.errstate(divide='ignore', invalid='ignore'):
            h = -np.where(p > 0, p * np.log(p), 0.0).sum(1)
        uncertain = h >= np.percentile(h, 100 - uncertain_percent)
        reliable |= ~uncertain & (arg == yhat)
    return yhat, reliable


def test_reliability_rule_hand_example():
    # 5 voxels, 20% uncertain: per network the one highest-entropy voxel is uncertain.
    prob_a = binary([0.55, 0.99, 0.9, 0.05, 0.2])   # uncertain: voxel 0 (p = 0.55)
    prob_b = binary([0.02, 0.03, 0.6, 0.1, 0.97])   # uncertain: voxel 2 (p = 0.6)
    yhat, reliable = cross_pseudo_label(prob_a, prob_b, uncertain_percent=20)
    assert yhat.dtype == torch.int64 and reliable.dtype == torch.bool
    assert yhat.flatten().tolist() == [1, 1, 1, 0, 1]  # union of the two foregrounds
    # voxel 0: A is uncertain, B is confident but disagrees with the union label -> NOT reliable
    #          (the released code would keep it, B being among the lowest-entropy voxels)
    # voxel 1: B confident and disagrees, A certain and agrees -> reliable
    # voxel 2: B uncertain, A certain and agrees -> reliable
    # voxel 4: A certain and disagrees, B certain and agrees -> reliable
    assert reliable.flatten().tolist() == [False, True, True, True, True]
    # 0% uncertain: any agreeing network makes a voxel reliable
    assert cross_pseudo_label(prob_a, prob_b, 0)[1].flatten().tolist() == [True] * 5
    # 100% uncertain: nothing reliable
    assert not cross_pseudo_label(prob_a, prob_b, 100)[1].any()
    with pytest.raises(ValueError):
        cross_pseudo_label(prob_a, prob_b, 120)
    # an empty unlabeled batch gives empty outputs and a zero loss, not an error
    empty = torch.zeros(0, 2, 4, 4, 4)
    yhat, reliable = cross_pseudo_label(empty, empty)
    assert yhat.shape == reliable.shape == (0, 4, 4, 4)
    assert cps_loss(empty.requires_grad_(), yhat, reliable).item() == 0


def test_cross_pseudo_label_multiclass_hand_example():
    prob_a = column([[0.1, 0.2], [0.5, 0.7], [0.4, 0.1]])
    prob_b = column([[0.1, 0.3], [0.1, 0.1], [0.8, 0.6]])
    yhat, reliable = cross_pseudo_label(prob_a, prob_b, uncertain_percent=0)
    # voxel 0: mean (0.1, 0.3, 0.6) -> 2 although A says 1; voxel 1: mean (0.25, 0.4, 0.35) -> 1
    assert yhat.flatten().tolist() == [2, 1]
    assert reliable.flatten().tolist() == [True, True]


@pytest.mark.parametrize('n_classes', [2, 3])
def test_cross_pseudo_label_matches_numpy(n_classes):
    pa = rand_prob((2, n_classes, 4, 3, 3), 13)
    pb = rand_prob((2, n_classes, 4, 3, 3), 14)
    for percent in (10, 20, 50, 80):
        yhat, reliable = cross_pseudo_label(pa, pb, percent)
        expected_yhat, expected_reliable = np_cross_pseudo_label(pa.numpy(), pb.numpy(), percent)
        assert np.array_equal(yhat.numpy(), expected_yhat)
        assert np.array_equal(reliable.numpy(), expected_reliable)
        assert 0 < reliable.sum() < reliable.numel()


def test_cross_pseudo_label_is_detached():
    logits_a = torch.randn(2, 2, 4, 4, 4, requires_grad=True)
    logits_b = torch.randn(2, 2, 4, 4, 4, requires_grad=True)
    yhat, reliable = cross_pseudo_label(torch.softmax(logits_a, 1), torch.softmax(logits_b, 1))
    assert not yhat.requires_grad and not reliable.requires_grad


def test_entropy_on_probabilities():
    prob = binary([0.5, 1.0, 0.0])
    assert entropy(prob).flatten().tolist() == pytest.approx([math.log(2), 0, 0])


def test_cps_loss_hand_value_and_edge_cases():
    logits = column([[2.0, 0.0, 1.0], [0.0, 1.0, 1.0]]).requires_grad_()
    yhat = torch.tensor([0, 0, 1]).reshape(1, 3, 1, 1)
    reliable = torch.tensor([True, False, True]).reshape(1, 3, 1, 1)
    expected = (math.log(1 + math.exp(-2)) + math.log(2)) / 2
    loss = cps_loss(logits, yhat, reliable)
    assert loss.item() == pytest.approx(expected, rel=1e-12)
    loss.backward()
    assert logits.grad[..., 1, :, :].abs().sum() == 0  # unreliable voxel gets no gradient
    # all reliable: plain mean CE
    all_true = torch.ones_like(reliable)
    assert cps_loss(logits, yhat, all_true).item() == pytest.approx(F.cross_entropy(logits, yhat).item())
    # none reliable: 0, backward still works
    fresh = logits.detach().clone().requires_grad_()
    assert_zero_on_graph(cps_loss(fresh, yhat, torch.zeros_like(reliable)), fresh)


def test_cps_gradcheck_and_full_pipeline():
    for n_classes in (2, 3):
        g = torch.Generator().manual_seed(15 + n_classes)
        logits_a = torch.randn(2, n_classes, 3, 2, 2, generator=g, dtype=torch.float64, requires_grad=True)
        logits_b = torch.randn(2, n_classes, 3, 2, 2, generator=g, dtype=torch.float64, requires_grad=True)
        yhat, reliable = cross_pseudo_label(torch.softmax(logits_a, 1), torch.softmax(logits_b, 1), 20)
        assert torch.autograd.gradcheck(lambda z: cps_loss(z, yhat, reliable), (logits_a,))
        cps_loss(logits_a, yhat, reliable).backward()
        assert logits_b.grad is None  # the pseudo-label built from B carries no gradient


def imbalanced_field(seed=21, shape=(2, 24, 24, 16)):
    """A probability pair like LA's: foreground (a ball per volume, about 17 % of the voxels) predicted
    less surely than the background, and the two networks disagreeing a little."""
    g = torch.Generator().manual_seed(seed)
    x, y, z = torch.meshgrid(*(torch.linspace(-1, 1, n) for n in shape[1:]), indexing='ij')
    fg = ((x ** 2 + y ** 2 + z ** 2) < 0.47).expand(shape)
    probs = []
    for _ in range(2):
        # background logit margins around 4, foreground ones around 1.2: the atrium is the uncertain part
        margin = torch.where(fg, 1.2, -4.0) + 0.8 * torch.randn(shape, generator=g, dtype=torch.float64)
        probs.append(torch.stack([torch.sigmoid(-margin), torch.sigmoid(margin)], dim=1))
    return probs


def test_filter_modes_on_an_imbalanced_field():
    prob_a, prob_b = imbalanced_field()
    yhat, _ = cross_pseudo_label(prob_a, prob_b, 20, 'none')
    fg_share = (yhat > 0).double().mean().item()
    assert 0.14 < fg_share < 0.20

    def fg_in(reliable):
        return ((yhat > 0) & reliable).sum().item() / reliable.sum().item()

    # global is the rule as it was: identical to the independent numpy reference
    _, global_r = cross_pseudo_label(prob_a, prob_b, 20, 'global')
    assert np.array_equal(global_r.numpy(), np_cross_pseudo_label(prob_a.numpy(), prob_b.numpy(), 20)[1])
    assert fg_in(global_r) < 0.5 * fg_share  # the bias the classwise filter removes
    # classwise keeps the pseudo-label's class mix within 20 % and still drops voxels
    _, classwise_r = cross_pseudo_label(prob_a, prob_b, 20, 'classwise')
    assert abs(fg_in(classwise_r) - fg_share) < 0.2 * fg_share
    assert 0.5 < classwise_r.double().mean().item() < 0.99
    # none keeps every voxel
    assert cross_pseudo_label(prob_a, prob_b, 20, 'none')[1].all()
    with pytest.raises(ValueError, match='cps_filter'):
        cross_pseudo_label(prob_a, prob_b, 20, 'lowest')


@pytest.mark.parametrize('n_classes', [2, 3])
def test_classwise_uncertain_mask_matches_numpy(n_classes):
    prob = rand_prob((2, n_classes, 8, 6, 5), 22)
    ent, arg = entropy(prob), prob.argmax(1)
    got = uncertain_mask(ent, arg, 30, 'classwise', n_classes, min_class_voxels=10)
    h, a = ent.numpy(), arg.numpy()
    want = np.zeros(h.shape, dtype=bool)
    for c in range(n_classes):
        members = a == c
        if members.sum() >= 10:
            want |= members & (h >= np.percentile(h[members], 70))
    assert np.array_equal(got.numpy(), want) and want.any()
    # a class seen on fewer voxels than min_class_voxels is left alone
    rare = uncertain_mask(ent, arg, 30, 'classwise', n_classes, min_class_voxels=10 ** 6)
    assert not rare.any()
    assert not uncertain_mask(ent, arg, 0, 'classwise', n_classes).any()


def test_classwise_percentiles_equal_percentile_of_each_class_to_the_bit():
    """The device-side thresholds of the classwise filter (no host read of a class size or mask) against
    percentile over each class's values picked out by a boolean mask, as the filter once computed them: every
    q, ties, a class of one voxel and an empty class (count 0)."""
    from losses.terms import classwise_percentiles
    rng = np.random.default_rng(3)
    values = torch.from_numpy(rng.random(500).astype(np.float32))
    values[::7] = values[3]  # ties
    classes = torch.from_numpy(rng.choice([0, 1, 3], size=500, p=[0.7, 0.298, 0.002]))
    classes[0], classes[1:] = 3, torch.where(classes[1:] == 3, 0, classes[1:])  # class 3: one voxel; 2: none
    for q in (0, 12.5, 33.3, 50, 80, 99.9, 100):
        got, counts = classwise_percentiles(values, classes, q, 4)
        assert counts.tolist() == [int((classes == c).sum()) for c in range(4)] and counts[2] == 0
        for c in (0, 1, 3):
            want = percentile(values[classes == c], q)
            assert got[c].item() == want.item(), (q, c)  # equal, not close: the same voxels are flagged


# ---------------------------------------------------------------- prototype contrastive

def np_contrastive(features, student_prob, yhat, reliable, tau, keep=None):
    """Reference on numpy, no sampling; `keep` (bool) restricts the candidates."""
    f = features / np.linalg.norm(features, axis=1, keepdims=True)
    f = np.moveaxis(f, 1, -1).reshape(-1, f.shape[1])
    y, r = yhat.reshape(-1), reliable.reshape(-1)
    assign = student_prob.argmax(1).reshape(-1)
    classes = [c for c in range(student_prob.shape[1]) if np.any(r & (y == c))]
    protos = []
    for c in classes:
        m = f[r & (y == c)].mean(0)
        protos.append(m / np.linalg.norm(m))
    protos = np.stack(protos)
    losses = []
    for v in range(f.shape[0]):
        if r[v] or assign[v] not in classes or (keep is not None and not keep[v]):
            continue
        s = f[v] @ protos.T / tau
        losses.append(np.log(np.exp(s - s.max()).sum()) + s.max() - s[classes.index(assign[v])])
    return np.mean(losses)


def contrastive_inputs(n_classes, seed, shape=(2, 3, 3, 2)):
    g = torch.Generator().manual_seed(seed)
    features = torch.randn(shape[0], 4, *shape[1:], generator=g, dtype=torch.float64)
    student_prob = rand_prob((shape[0], n_classes, *shape[1:]), seed + 100)
    yhat = torch.randint(0, n_classes, shape, generator=g)
    reliable = torch.rand(shape, generator=g) > 0.5
    return features, student_prob, yhat, reliable


def test_contrastive_hand_value():
    # reliable voxels 0-3 give prototypes P0 = (1, 0), P1 = (0, 1) (features of any length)
    # candidate 4: feature (3, 4) -> (0.6, 0.8), assigned class 1: logits (6, 8)
    # candidate 5: feature (1, 1), assigned class 0: logits (7.07, 7.07) -> log 2
    features = torch.tensor([[2.0, 1.0, 0.0, 0.0, 3.0, 1.0],
                             [0.0, 0.0, 5.0, 1.0, 4.0, 1.0]]).reshape(1, 2, 6, 1, 1)
    yhat = torch.tensor([0, 0, 1, 1, 0, 0]).reshape(1, 6, 1, 1)
    reliable = torch.tensor([True] * 4 + [False] * 2).reshape(1, 6, 1, 1)
    student_prob = binary([0.5, 0.5, 0.5, 0.5, 0.9, 0.2])
    loss = prototype_contrastive_loss(features, student_prob, yhat, reliable, tau=0.1)
    expected = (math.log(1 + math.exp(-2)) + math.log(2)) / 2
    assert loss.item() == pytest.approx(expected, rel=1e-6)


@pytest.mark.parametrize('n_classes', [2, 3])
def test_contrastive_matches_numpy_gradcheck_and_detaches_prototypes(n_classes):
    features, student_prob, yhat, reliable = contrastive_inputs(n_classes, 20)
    features.requires_grad_()
    student_prob.requires_grad_()
    loss = prototype_contrastive_loss(features, student_prob, yhat, reliable, tau=0.1)
    expected = np_contrastive(features.detach().numpy(), student_prob.detach().numpy(), yhat.numpy(),
                              reliable.numpy(), 0.1)
    assert loss.item() == pytest.approx(expected, rel=1e-10)
    loss.backward()
    assert student_prob.grad is None
    # prototypes are detached: reliable voxels (which only build prototypes) get no gradient
    grad_norm = features.grad.norm(dim=1)
    assert torch.all(grad_norm[reliable] == 0) and torch.all(grad_norm[~reliable] > 0)
    # gradcheck perturbs the candidates only: finite differences on reliable voxels would move
    # the prototypes, which the loss deliberately treats as constants
    fixed = features.detach()

    def on_candidates(f):
        f = torch.where(reliable.unsqueeze(1), fixed, f)
        return prototype_contrastive_loss(f, student_prob, yhat, reliable, 0.1, contrast_samples=None)
    assert torch.autograd.gradcheck(on_candidates, (fixed.clone().requires_grad_(),))


def test_contrastive_class_without_prototype_is_skipped():
    features, student_prob, yhat, reliable = contrastive_inputs(3, 21)
    yhat[yhat == 2] = 0  # no reliable voxel of class 2: no prototype
    # candidates of all three classes, including class 2
    assert set(student_prob.argmax(1)[~reliable].tolist()) == {0, 1, 2}
    features.requires_grad_()
    loss = prototype_contrastive_loss(features, student_prob, yhat, reliable)
    expected = np_contrastive(features.detach().numpy(), student_prob.numpy(), yhat.numpy(), reliable.numpy(), 0.1)
    assert loss.item() == pytest.approx(expected, rel=1e-10)
    loss.backward()
    skipped = ~reliable & (student_prob.argmax(1) == 2)
    assert torch.all(features.grad.norm(dim=1)[skipped] == 0)


def test_contrastive_degenerate_cases_are_zero():
    features, student_prob, yhat, reliable = contrastive_inputs(2, 22)
    cases = [
        (yhat, torch.ones_like(reliable)),    # every voxel reliable: no candidate
        (yhat, torch.zeros_like(reliable)),   # no voxel reliable: no prototype
        (torch.zeros_like(yhat), reliable),   # one prototype only
    ]
    for labels, rel in cases:
        f = features.clone().requires_grad_()
        assert_zero_on_graph(prototype_contrastive_loss(f, student_prob, labels, rel), f)
    # candidates exist but all belong to a class without prototype
    labels = torch.zeros_like(yhat)
    labels[0, 0, 0, 0] = 1
    rel = torch.zeros_like(reliable)
    rel[0, 0, 0, 0] = rel[0, 1, 0, 0] = True
    prob = torch.zeros_like(student_prob)
    prob[:, 0] = 1
    prob3 = torch.cat([prob * 0.3, prob[:, :1] * 0.7], dim=1)  # argmax = class 2, which has no prototype
    f = features.clone().requires_grad_()
    assert_zero_on_graph(prototype_contrastive_loss(f, prob3, labels, rel), f)


def test_contrastive_sampling_is_seeded_and_respects_contrast_samples():
    features, student_prob, yhat, reliable = contrastive_inputs(2, 23, shape=(2, 6, 6, 4))
    candidates = ~reliable
    assign = student_prob.argmax(1)
    per_class = [int((candidates & (assign == c)).sum()) for c in range(2)]
    assert min(per_class) > 5

    def run(seed, contrast_samples=5):
        f = features.clone().requires_grad_()
        generator = None if seed is None else torch.Generator().manual_seed(seed)
        loss = prototype_contrastive_loss(f, student_prob, yhat, reliable, contrast_samples=contrast_samples,
                                          generator=generator)
        loss.backward()
        return loss, f.grad.norm(dim=1) > 0

    loss_a, used_a = run(0)
    loss_b, used_b = run(0)
    assert loss_a.item() == loss_b.item() and torch.equal(used_a, used_b)
    # exactly contrast_samples candidates of each class receive gradient, and only candidates
    for c in range(2):
        assert int((used_a & (assign == c)).sum()) == 5
    assert not used_a[reliable].any()
    # the loss is the mean over exactly the drawn voxels
    keep = used_a.numpy().reshape(-1)
    expected = np_contrastive(features.numpy(), student_prob.numpy(), yhat.numpy(), reliable.numpy(), 0.1, keep)
    assert loss_a.item() == pytest.approx(expected, rel=1e-10)
    # another seed draws other voxels; no generator works too
    assert not torch.equal(run(1)[1], used_a)
    assert torch.isfinite(run(None)[0])
    # contrast_samples above the candidate count keeps everyone
    assert int(run(0, contrast_samples=10 ** 6)[1].sum()) == sum(per_class)


# ---------------------------------------------------------------- mean teacher

def test_softmax_mse_matches_numpy_and_gradients():
    g = torch.Generator().manual_seed(30)
    student = torch.randn(2, 3, 2, 2, 1, generator=g, dtype=torch.float64, requires_grad=True)
    teacher = torch.randn(2, 3, 2, 2, 1, generator=g, dtype=torch.float64, requires_grad=True)
    loss = softmax_mse_loss(student, teacher)
    expected = ((np_softmax(student.detach().numpy()) - np_softmax(teacher.detach().numpy())) ** 2).mean()
    assert loss.item() == pytest.approx(expected, rel=1e-12)
    loss.backward()
    assert teacher.grad is None
    assert torch.autograd.gradcheck(lambda s: softmax_mse_loss(s, teacher), (student,))
    assert softmax_mse_loss(teacher, teacher).item() == 0


# ---------------------------------------------------------------- whole-iteration smoke test

def test_all_terms_finite_on_degenerate_batch():
    """Everything background, identical networks: no term may be NaN and backward must work."""
    logits_a = torch.zeros(2, 2, 4, 4, 4, requires_grad=True)
    logits_b = torch.zeros(2, 2, 4, 4, 4, requires_grad=True)
    features = torch.zeros(2, 3, 4, 4, 4, requires_grad=True)
    label = torch.zeros(2, 4, 4, 4, dtype=torch.int64)
    prob_a, prob_b = torch.softmax(logits_a, 1), torch.softmax(logits_b, 1)
    yhat, reliable = cross_pseudo_label(prob_a, prob_b)
    terms = [
        supervised_loss(logits_a, label)[0],
        mutual_correction_loss(prob_a, label, confident_disagreement(prob_a, prob_b)),
        cosine_consistency_loss(prob_a, prob_b),
        urps_loss(logits_b, prob_a),
        cps_loss(logits_a, yhat, reliable),
        prototype_contrastive_loss(features, prob_b, yhat, reliable),
        softmax_mse_loss(logits_a, logits_b),
    ]
    total = sum(terms)
    total.backward()
    assert all(torch.isfinite(t) for t in terms)
    assert torch.isfinite(logits_a.grad).all() and torch.isfinite(logits_b.grad).all()
