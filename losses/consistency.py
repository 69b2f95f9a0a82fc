"""Term 4: cosine consistency between the two networks' probabilities."""


def cosine_consistency_loss(prob_a, prob_b):
    """L_reg = mean over voxels of (1 - cos(p_A, p_B)), cosine over the class dim.

    prob_a, prob_b: (B, C, X, Y, Z) probabilities; gradient flows to both.
    Returns a scalar in [0, 1] for probabilities.
    """
    # explicit sums: CPU norm() over a 2-wide dim 1 is ~10x slower; clamping the
    # product of squared norms keeps zero vectors finite in forward and backward
    dot = (prob_a * prob_b).sum(dim=1)
    norms = ((prob_a * prob_a).sum(dim=1) * (prob_b * prob_b).sum(dim=1)).clamp_min(1e-16).sqrt()
    return (1 - dot / norms).mean()
