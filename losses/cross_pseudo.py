"""Term 6: entropy-filtered cross pseudo-labels on the unlabeled volumes."""
import math

import torch
import torch.nn.functional as F

from .precision import wide_dtype, widen


def percentile(values, q):
    """q-th percentile of all elements, as numpy.percentile(values, q) (linear).

    Sorted values v_0..v_{n-1}, i = q/100 * (n - 1): v_floor(i) interpolated
    linearly towards v_ceil(i). Uses kthvalue because torch.quantile refuses
    inputs of more than 16M elements. values: any shape, n >= 1. Returns a
    0-dim tensor of values' dtype.
    """
    flat = values.detach().reshape(-1)
    if flat.numel() == 0:
        raise ValueError('percentile of an empty tensor')
    index = q / 100 * (flat.numel() - 1)
    lo = math.floor(index)
    hi = min(lo + 1, flat.numel() - 1)
    gamma = index - lo
    low = flat.kthvalue(lo + 1).values
    if gamma == 0:
        return low
    high = flat.kthvalue(hi + 1).values
    # numpy's lerp: interpolate from the nearer end, so gamma=1 returns high exactly
    if gamma >= 0.5:
        return high - (high - low) * (1 - gamma)
    return low + (high - low) * gamma


def entropy(prob):
    """H_v = -sum_c p_c log p_c over dim 1 (0 log 0 = 0). (B, C, ...) -> (B, ...), at least float32."""
    # float32 per voxel: half-precision entropies take few distinct values, and ties at the percentile
    # would flag more than the asked share (a no-op for float32 probabilities)
    prob = widen(prob)
    return -torch.xlogy(prob, prob).sum(dim=1)


FILTER_MODES = ('global', 'classwise', 'none')


def uncertain_mask(ent, arg, uncertain_percent, filter_mode='global', num_classes=2, min_class_voxels=64):
    """u = H >= percentile(H, 100 - uncertain_percent), over one network's unlabeled batch.

    global: one percentile over every voxel. classwise: one percentile per predicted class c, over the
    voxels with argmax == c, so each class loses the same share; a class predicted on fewer than
    min_class_voxels voxels is left unfiltered (its percentile would be noise). none, or
    uncertain_percent == 0: no voxel is uncertain (the >= rule would still flag the maximum).
    ent: (B, ...) entropies; arg: (B, ...) argmax of the same network. Returns bool (B, ...).
    """
    if filter_mode not in FILTER_MODES:
        raise ValueError(f'filter_mode must be one of {FILTER_MODES}, got {filter_mode!r}')
    if filter_mode == 'none' or uncertain_percent == 0 or ent.numel() == 0:
        return torch.zeros_like(arg, dtype=torch.bool)
    if filter_mode == 'global':
        return ent >= percentile(ent, 100 - uncertain_percent)
    threshold, counts = classwise_percentiles(ent, arg, 100 - uncertain_percent, num_classes)
    return (ent >= threshold[arg]) & (counts >= min_class_voxels)[arg]


def classwise_percentiles(values, classes, q, num_classes):
    """(percentile of values within each class c, as percentile(values[classes == c], q); the size of each
    class), both of shape (num_classes,); a class without members gets its count 0 and a meaningless value.

    Computed on the device for all classes at once: no class size, mask or index is read back by the host,
    which on a GPU would wait for the work queued before it. One sort orders the values, a stable sort by class
    groups them, so class c's values lie sorted in positions start_c .. start_c + n_c - 1."""
    values, classes = values.detach().reshape(-1), classes.reshape(-1)
    by_value = values.sort()
    by_class = classes[by_value.indices].sort(stable=True)
    grouped = by_value.values[by_class.indices]
    counts = torch.stack([(classes == c).sum() for c in range(num_classes)])
    starts = counts.cumsum(0) - counts
    # percentile's arithmetic in float64, as it does in Python floats, so the thresholds agree to the bit
    index = q / 100 * (counts.clamp_min(1) - 1).double()
    lo = index.floor()
    gamma = index - lo
    lo = lo.long()
    hi = torch.minimum(lo + 1, counts.clamp_min(1) - 1)
    last = grouped.numel() - 1
    low = grouped[(starts + lo).clamp_max(last)]
    high = grouped[(starts + hi).clamp_max(last)]
    # numpy's lerp from the nearer end, as percentile
    near_high = high - (high - low) * (1 - gamma).to(values.dtype)
    near_low = low + (high - low) * gamma.to(values.dtype)
    return torch.where(gamma >= 0.5, near_high, near_low), counts


@torch.no_grad()
def cross_pseudo_label(prob_a, prob_b, uncertain_percent=20, filter_mode='global'):
    """Union pseudo-label yhat and reliability mask R of the unlabeled batch.

    Binary (C == 2): yhat = (argmax p_A) OR (argmax p_B);
    multi-class: yhat = argmax_c (p_A + p_B) / 2.
    u_k = uncertain_mask(H_k, argmax p_k, ...) with H_k the entropy of p_k: the top uncertain_percent of
    H_k over the whole batch (global), or within each class network k predicts (classwise), or none.
    R = (~u_A & argmax p_A == yhat) | (~u_B & argmax p_B == yhat).

    prob_a, prob_b: (B, C, X, Y, Z) probabilities (read without gradient).
    Returns (yhat int64 (B, X, Y, Z), R bool (B, X, Y, Z)).
    """
    if not 0 <= uncertain_percent <= 100:
        raise ValueError(f'uncertain_percent must be in [0, 100], got {uncertain_percent}')
    # max().indices is argmax (first maximum) and much faster than argmax over dim 1 on CPU
    arg_a = prob_a.max(dim=1).indices
    arg_b = prob_b.max(dim=1).indices
    if prob_a.shape[1] == 2:
        pseudo_label = arg_a | arg_b
    else:
        pseudo_label = (prob_a + prob_b).max(dim=1).indices  # argmax of the mean
    reliable = torch.zeros_like(pseudo_label, dtype=torch.bool)
    for arg, prob in ((arg_a, prob_a), (arg_b, prob_b)):
        uncertain = uncertain_mask(entropy(prob), arg, uncertain_percent, filter_mode, prob.shape[1])
        reliable |= ~uncertain & (arg == pseudo_label)
    return pseudo_label, reliable


def cps_loss(logits, pseudo_label, reliable):
    """L_cps = mean over v in R of CE(z, yhat)_v; 0 (on the graph) when R is empty.

    logits: (B, C, X, Y, Z) of any float dtype; pseudo_label: (B, X, Y, Z) int64;
    reliable: (B, X, Y, Z) bool. Gradient flows to logits only. Returns an at least float32 scalar.
    """
    # cross_entropy is nll_loss of log_softmax: a float32 log_softmax makes a float32 CE map to sum
    ce = F.nll_loss(F.log_softmax(logits, dim=1, dtype=wide_dtype(logits)), pseudo_label.detach(), reduction='none')
    weight = reliable.detach().to(ce.dtype)
    return (ce * weight).sum() / weight.sum().clamp_min(1)
