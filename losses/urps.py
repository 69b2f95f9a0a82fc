"""Term 5: uncertainty-rectified pseudo supervision, winner teaches loser."""
import torch
import torch.nn.functional as F

from .precision import wide_dtype, widen


def urps_loss(student_logits, teacher_prob):
    """L_urps = mean_v(exp(-KL_v) * CE(z_s, yhat)_v) + mean_v(KL_v).

    yhat = argmax_c p_t, KL_v = sum_c p_t log(p_t / p_s), p_s = softmax(z_s).
    The teacher is detached here; the student's gradient flows through the CE,
    the KL and the exp(-KL) weight. log p_s comes from log_softmax (stable) and
    p_t log p_t uses xlogy, so a zero teacher probability contributes 0.

    student_logits: (B, C, X, Y, Z); teacher_prob: (B, C, X, Y, Z) probabilities;
    any float dtypes. Returns an at least float32 scalar.
    """
    # KL is a difference of near-equal terms: float32 per voxel (a no-op for float32 inputs)
    teacher_prob = widen(teacher_prob.detach())
    pseudo_label = teacher_prob.max(dim=1).indices  # = argmax, faster on CPU
    log_student = F.log_softmax(student_logits, dim=1, dtype=wide_dtype(student_logits))
    kl = (torch.xlogy(teacher_prob, teacher_prob) - teacher_prob * log_student).sum(dim=1)
    ce = F.nll_loss(log_student, pseudo_label, reduction='none')
    return (torch.exp(-kl) * ce).mean() + kl.mean()
