"""Term 3: mutual correction on the voxels where exactly one network is confident."""
import torch
import torch.nn.functional as F

from .precision import wide_dtype


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
    wide = wide_dtype(prob)
    return (squared * mask).sum(dtype=wide) / (n_classes - 1) / (mask.sum(dtype=wide) + 1e-16)
