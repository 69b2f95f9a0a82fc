"""Term 1: supervised cross-entropy + Dice on the labeled volumes."""
import torch
import torch.nn.functional as F

from .precision import wide_dtype


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
    wide = wide_dtype(score)
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
    wide = wide_dtype(logits)
    ce = F.nll_loss(F.log_softmax(logits, dim=1, dtype=wide), label)
    prob = torch.softmax(logits, dim=1, dtype=wide)
    n_classes = logits.shape[1]
    dice = sum(dice_loss(prob[:, c], label == c) for c in range(1, n_classes)) / (n_classes - 1)
    return ce + dice, dice
