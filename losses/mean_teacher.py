"""Mean-teacher baseline: softmax MSE consistency (UA-MT form)."""
import torch

from .precision import wide_dtype


def softmax_mse_loss(student_logits, teacher_logits):
    """L = mean over all elements of (softmax(z_s) - softmax(z_t))^2, class dim 1.

    The teacher is detached here. student_logits, teacher_logits: (B, C, X, Y, Z),
    any float dtypes. Returns an at least float32 scalar (a mean over B*C*X*Y*Z elements,
    as in UA-MT).
    """
    # float32 probabilities: the squared differences of agreeing networks vanish in half precision
    student_prob = torch.softmax(student_logits, dim=1, dtype=wide_dtype(student_logits))
    teacher_prob = torch.softmax(teacher_logits.detach(), dim=1, dtype=wide_dtype(teacher_logits))
    return ((student_prob - teacher_prob) ** 2).mean()
