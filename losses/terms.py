"""The loss terms of docs/method.md, in its order: 1 supervised, 3 mutual correction, 4 cosine consistency,
5 URPS, 6 cross pseudo-labels, 7 prototype contrast. Term 2, the competition that names the pair's winner and
loser, has no loss: it is three lines of train.dual_step.

Every term computes in float32 when its inputs are half precision (autocast's float16 / bfloat16) and in the
input's own dtype otherwise, so float64 gradchecks still test the real code. This file imports only torch.
"""
import math

import torch
import torch.nn.functional as F


def _wide_dtype(tensor):
    """float32 for a float16 / bfloat16 tensor, else its own float dtype."""
    return torch.promote_types(tensor.dtype, torch.float32)


def _widen(tensor):
    """tensor in _wide_dtype(tensor): a copy for half precision, the tensor itself (no copy) otherwise."""
    return tensor.to(_wide_dtype(tensor))


# ---------------------------------------------------------------------------------------------- 1. supervised

def dice_loss(score, target):
    """Soft Dice loss over the whole tensor (all samples pooled).

    loss = 1 - (2 * sum(p * y) + 1e-5) / (sum(p * p) + sum(y * y) + 1e-5)

    score:  (N, ...) float, e.g. foreground probabilities (B, X, Y, Z).
    target: same shape, bool / int / float (0 or 1).
    Returns a scalar, float32 for a half-precision score (the sums are taken in
    float32). Never NaN: the 1e-5 terms make an empty target and an all-zero
    score give loss 0.
    """
    target = target.to(score.dtype)
    wide = _wide_dtype(score)
    # float32 sums: a float16 sum over a volume passes 65504 and a bfloat16 one keeps 3 digits
    intersect = (score * target).sum(dtype=wide)
    denominator = (score * score).sum(dtype=wide) + (target * target).sum(dtype=wide)
    return 1 - (2 * intersect + 1e-5) / (denominator + 1e-5)


def supervised_loss(logits, label):
    """L_sup = CE(z, y) + Dice(p[fg], y == fg), p = softmax(z) over the class dim.

    Binary (C == 2): Dice on class 1. Multi-class: mean Dice loss over the
    foreground classes 1..C-1. CE is the mean over all voxels of the batch.

    logits: (B, C, X, Y, Z) of any float dtype; label: (B, X, Y, Z) int64 in [0, C).
    Returns (ce + dice, dice), at least float32 scalars with gradients (the caller compares
    the Dice values of the two networks to pick the winner).
    """
    # cross_entropy is nll_loss of log_softmax; asking for float32 outputs keeps half logits exact enough
    wide = _wide_dtype(logits)
    ce = F.nll_loss(F.log_softmax(logits, dim=1, dtype=wide), label)
    prob = torch.softmax(logits, dim=1, dtype=wide)
    n_classes = logits.shape[1]
    dice = sum(dice_loss(prob[:, c], label == c) for c in range(1, n_classes)) / (n_classes - 1)
    return ce + dice, dice


# --------------------------------------------------------------------------------------- 3. mutual correction

@torch.no_grad()
def confident_disagreement(prob_a, prob_b, conf_thresh=0.6):
    """Mask M of the voxels where the two networks' confident foreground disagrees.

    conf_k = (argmax_c p_k != 0) & (max_c p_k >= conf_thresh)
    M = conf_A XOR conf_B; for C > 2 also the voxels where both are confident
    but on different foreground classes.

    prob_a, prob_b: (B, C, X, Y, Z) probabilities. Returns bool (B, X, Y, Z),
    no gradient.
    """
    max_a, arg_a = prob_a.max(dim=1)
    max_b, arg_b = prob_b.max(dim=1)
    conf_a = (arg_a != 0) & (max_a >= conf_thresh)
    conf_b = (arg_b != 0) & (max_b >= conf_thresh)
    mask = conf_a ^ conf_b
    if prob_a.shape[1] > 2:
        mask |= conf_a & conf_b & (arg_a != arg_b)
    return mask


def mutual_correction_loss(prob, label, mask):
    """L_mc = sum_{v in M} (p[fg]_v - y_v)^2 / (|M| + 1e-16).

    Binary: fg = class 1. Multi-class: the same on each one-hot foreground
    channel c = 1..C-1, averaged over those channels (binary is the C = 2 case
    of this formula).

    prob: (B, C, X, Y, Z) probabilities (gradient flows to it only);
    label: (B, X, Y, Z) int64; mask: (B, X, Y, Z) bool. Returns a scalar, at
    least float32, 0 (still on the graph) when M is empty.
    """
    n_classes = prob.shape[1]
    onehot = F.one_hot(label, n_classes).movedim(-1, 1).to(prob.dtype)
    mask = mask.detach().to(prob.dtype).unsqueeze(1)
    squared = (prob[:, 1:] - onehot[:, 1:]) ** 2
    # float32 sums: a float16 voxel count passes 65504 at full size
    wide = _wide_dtype(prob)
    return (squared * mask).sum(dtype=wide) / (n_classes - 1) / (mask.sum(dtype=wide) + 1e-16)


# -------------------------------------------------------------------------------------- 4. cosine consistency

def cosine_consistency_loss(prob_a, prob_b):
    """L_reg = mean over voxels of (1 - cos(p_A, p_B)), cosine over the class dim.

    prob_a, prob_b: (B, C, X, Y, Z) probabilities of any float dtype; gradient
    flows to both. Returns an at least float32 scalar in [0, 1] for probabilities.
    """
    # float32 per voxel: in half precision a cosine near 1 rounds to 1 and the loss of agreeing networks to 0
    # (a no-op for the float32 probabilities train.py passes)
    prob_a, prob_b = _widen(prob_a), _widen(prob_b)
    # explicit sums: on the CPU, norm() over a dim of two classes is the slower way; clamping the
    # product of squared norms keeps zero vectors finite in forward and backward
    dot = (prob_a * prob_b).sum(dim=1)
    norms = ((prob_a * prob_a).sum(dim=1) * (prob_b * prob_b).sum(dim=1)).clamp_min(1e-16).sqrt()
    return (1 - dot / norms).mean()


# ------------------------------------------------------------------------------------------------------ 5. URPS

def urps_loss(loser_logits, winner_prob):
    """Uncertainty-rectified pseudo supervision: the winner teaches the loser.

    L_urps = mean_v(exp(-KL_v) * CE(z_l, yhat)_v) + mean_v(KL_v),
    yhat = argmax_c p_w, KL_v = sum_c p_w log(p_w / p_l), p_l = softmax(z_l).
    The winner is detached here; the loser's gradient flows through the CE,
    the KL and the exp(-KL) weight. log p_l comes from log_softmax (stable) and
    p_w log p_w uses xlogy, so a zero winner probability contributes 0.

    loser_logits: (B, C, X, Y, Z); winner_prob: (B, C, X, Y, Z) probabilities;
    any float dtypes. Returns an at least float32 scalar.
    """
    # KL is a difference of near-equal terms: float32 per voxel (a no-op for float32 inputs)
    winner_prob = _widen(winner_prob.detach())
    pseudo_label = winner_prob.max(dim=1).indices  # = argmax, faster on CPU
    log_loser = F.log_softmax(loser_logits, dim=1, dtype=_wide_dtype(loser_logits))
    kl = (torch.xlogy(winner_prob, winner_prob) - winner_prob * log_loser).sum(dim=1)
    ce = F.nll_loss(log_loser, pseudo_label, reduction='none')
    return (torch.exp(-kl) * ce).mean() + kl.mean()


# ------------------------------------------------------------------------------------- 6. cross pseudo-labels

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
    prob = _widen(prob)
    return -torch.xlogy(prob, prob).sum(dim=1)


FILTER_MODES = ('global', 'classwise', 'none')


def uncertain_mask(ent, arg, uncertain_percent, cps_filter='global', num_classes=2, min_class_voxels=64):
    """u = H >= percentile(H, 100 - uncertain_percent), over one network's unlabeled batch.

    cps_filter global: one percentile over every voxel. classwise: one percentile per predicted class c, over
    the voxels with argmax == c, so each class loses the same share; a class predicted on fewer than
    min_class_voxels voxels is left unfiltered (its percentile would be noise). none, or
    uncertain_percent == 0: no voxel is uncertain (the >= rule would still flag the maximum).
    ent: (B, ...) entropies; arg: (B, ...) argmax of the same network. Returns bool (B, ...).
    """
    if cps_filter not in FILTER_MODES:
        raise ValueError(f'cps_filter must be one of {FILTER_MODES}, got {cps_filter!r}')
    if cps_filter == 'none' or uncertain_percent == 0 or ent.numel() == 0:
        return torch.zeros_like(arg, dtype=torch.bool)
    if cps_filter == 'global':
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
def cross_pseudo_label(prob_a, prob_b, uncertain_percent=20, cps_filter='global'):
    """Union pseudo-label yhat and reliability mask R of the unlabeled batch.

    Binary (C == 2): yhat = (argmax p_A) OR (argmax p_B);
    multi-class: yhat = argmax_c (p_A + p_B) / 2.
    u_k = uncertain_mask(H_k, argmax p_k, ...) with H_k the entropy of p_k: the top uncertain_percent of
    H_k over the whole batch (cps_filter global), or within each class network k predicts (classwise), or none.
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
        uncertain = uncertain_mask(entropy(prob), arg, uncertain_percent, cps_filter, prob.shape[1])
        reliable |= ~uncertain & (arg == pseudo_label)
    return pseudo_label, reliable


def cps_loss(logits, pseudo_label, reliable):
    """L_cps = mean over v in R of CE(z, yhat)_v; 0 (on the graph) when R is empty.

    logits: (B, C, X, Y, Z) of any float dtype; pseudo_label: (B, X, Y, Z) int64;
    reliable: (B, X, Y, Z) bool. Gradient flows to logits only. Returns an at least float32 scalar.
    """
    # cross_entropy is nll_loss of log_softmax: a float32 log_softmax makes a float32 CE map to sum
    ce = F.nll_loss(F.log_softmax(logits, dim=1, dtype=_wide_dtype(logits)), pseudo_label.detach(), reduction='none')
    weight = reliable.detach().to(ce.dtype)
    return (ce * weight).sum() / weight.sum().clamp_min(1)


# ------------------------------------------------------------------------------------ 7. prototype contrast

def prototype_contrastive_loss(features, loser_prob, pseudo_label, reliable,
                               tau=0.1, contrast_samples=2048, generator=None):
    """InfoNCE pulling each unreliable voxel's feature (the loser's) to its class prototype.

    f_v = features at voxel v, L2-normalised over the channel dim.
    P_c = normalise(mean of f_v over {v in R, yhat_v = c}), detached (R = reliable, yhat = pseudo_label);
          a class with no such voxel has no prototype and drops out of the softmax.
    Candidates: voxels not in R, of class a_v = argmax_c loser_prob; per class with a prototype at most
          contrast_samples drawn uniformly without replacement (torch.randperm with `generator` over the
          class's candidates in flattened (b, x, y, z) order; contrast_samples=None keeps all); candidates of
          classes without prototype are skipped.
    L_con = mean over candidates of CE(cos(f_v, P) / tau, a_v);
          0 (on the graph) with fewer than two prototypes or no candidate.

    features: (B, F, X, Y, Z) of any float dtype, the loser's (the gradient flows here only, to the candidates);
    loser_prob: (B, C, X, Y, Z); pseudo_label: (B, X, Y, Z) int64; reliable: (B, X, Y, Z) bool;
    generator: torch.Generator or None (random indices are drawn on its device).
    Returns an at least float32 scalar: f, P and the CE are computed in float32 for half-precision features.
    Host syncs: one to learn which classes have a prototype and how many candidates each has, and one
    nonzero per class with a prototype (the candidates to draw from are a data-dependent set).
    """
    n_classes = loser_prob.shape[1]
    flat = features.flatten(2)  # (B, F, V), a view; voxel n = b * V + v of the batch
    n_voxels = flat.shape[2]
    classes_col = torch.arange(n_classes, device=features.device)[:, None, None]  # (C, 1, 1)
    # autocast off: under float16 the prototype sum over a million unit features of one class passes 65504
    with torch.autocast(features.device.type, enabled=False):
        with torch.no_grad():
            f = F.normalize(_widen(flat), dim=1)  # (B, F, V)
            reliable = reliable.flatten(1)  # (B, V)
            member = (pseudo_label.flatten(1) == classes_col) & reliable  # (C, B, V): v in R with yhat_v = c
            # the sum has the mean's direction; an empty class gives 0 and is left out below
            totals = (f @ member.permute(1, 2, 0).to(f.dtype)).sum(dim=0)  # (B, F, C) summed over b: (F, C)
            prototypes = F.normalize(totals.T, dim=1)  # (C, F)
            assigned = loser_prob.max(dim=1).indices.flatten(1)  # (B, V) argmax; max() is the faster one on CPU
            candidate = (assigned == classes_col) & ~reliable  # (C, B, V)
            n_members, n_candidates = torch.stack([member.sum(dim=(1, 2)), candidate.sum(dim=(1, 2))]).tolist()
            del f, member  # the batch of unit features is not needed past the prototypes
        classes = [c for c in range(n_classes) if n_members[c] > 0]
        if len(classes) < 2 or sum(n_candidates[c] for c in classes) == 0:
            return _widen(flat[0, 0, 0]) * 0  # on the graph

        picked, targets = [], []
        for target, c in enumerate(classes):
            index = candidate[c].flatten().nonzero().flatten()  # (n_candidates[c],) as b * V + v
            if contrast_samples is not None and index.numel() > contrast_samples:
                device = generator.device if generator is not None else index.device
                order = torch.randperm(index.numel(), generator=generator, device=device)
                index = index[order[:contrast_samples].to(index.device)]
            picked.append(index)
            targets.append(torch.full_like(index, target))
        index = torch.cat(picked)
        # f of the drawn voxels only, on the graph: the same unit features as above, not a second batch of them
        sample = F.normalize(_widen(flat[index // n_voxels, :, index % n_voxels]), dim=1)  # (K, F)
        logits = sample @ prototypes[classes].T / tau  # (K, P): cosines, both sides of unit length
        return F.cross_entropy(logits, torch.cat(targets))
