"""Mean-teacher baseline: softmax MSE consistency (UA-MT form). Here teacher and student mean the EMA network
and the network it averages; the method's pair, in terms.py, is a winner and a loser. This file imports only torch.
"""
import torch


def softmax_mse_loss(student_logits, teacher_logits):
    """L = mean over all elements of (softmax(z_s) - softmax(z_t))^2, class dim 1.

    The teacher is detached here. student_logits, teacher_logits: (B, C, X, Y, Z),
    any float dtypes. Returns an at least float32 scalar (a mean over B*C*X*Y*Z elements,
    as in UA-MT).
    """
    # float32 probabilities (promote_types widens half precision only): the squared differences of agreeing
    # networks vanish in half precision
    student_prob = torch.softmax(student_logits, dim=1, dtype=torch.promote_types(student_logits.dtype, torch.float32))
    teacher_prob = torch.softmax(teacher_logits.detach(), dim=1,
                                 dtype=torch.promote_types(teacher_logits.dtype, torch.float32))
    return ((student_prob - teacher_prob) ** 2).mean()
