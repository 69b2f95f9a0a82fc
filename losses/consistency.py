"""Term 4: cosine consistency between the two networks' probabilities."""
from .precision import widen


def cosine_consistency_loss(prob_a, prob_b):
    """L_reg = mean over voxels of (1 - cos(p_A, p_B)), cosine over the class dim.

    prob_a, prob_b: (B, C, X, Y, Z) probabilities of any float dtype; gradient
    flows to both. Returns an at least float32 scalar in [0, 1] for probabilities.
    """
    # float32 per voxel: in half precision a cosine near 1 rounds to 1 and the loss of agreeing networks to 0
    # (a no-op for the float32 probabilities train.py passes)
    prob_a, prob_b = widen(prob_a), widen(prob_b)
    # explicit sums: CPU norm() over a 2-wide dim 1 is ~10x slower; clamping the
    # product of squared norms keeps zero vectors finite in forward and backward
    dot = (prob_a * prob_b).sum(dim=1)
    norms = ((prob_a * prob_a).sum(dim=1) * (prob_b * prob_b).sum(dim=1)).clamp_min(1e-16).sqrt()
    return (1 - dot / norms).mean()
