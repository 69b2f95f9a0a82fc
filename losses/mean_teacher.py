"""Mean-teacher baseline: softmax MSE consistency (UA-MT form)."""
import torch


def softmax_mse_loss(student_logits, teacher_logits):
    """L = mean over all elements of (softmax(z_s) - softmax(z_t))^2, class dim 1.

    The teacher is detached here. student_logits, teacher_logits: (B, C, X, Y, Z).
    Returns a scalar (a mean over B*C*X*Y*Z elements, as in UA-MT).
    """
    student_prob = torch.softmax(student_logits, dim=1)
    teacher_prob = torch.softmax(teacher_logits.detach(), dim=1)
    return ((student_prob - teacher_prob) ** 2).mean()
