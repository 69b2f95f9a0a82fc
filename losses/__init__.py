"""The losses: terms.py holds the method's terms in the order of docs/method.md, mean_teacher.py the mean-teacher
baseline's MSE."""
from .terms import (FILTER_MODES, confident_disagreement, cosine_consistency_loss, cps_loss, cross_pseudo_label,
                    dice_loss, entropy, mutual_correction_loss, percentile, prototype_contrastive_loss,
                    supervised_loss, uncertain_mask, urps_loss)
from .mean_teacher import softmax_mse_loss

__all__ = [
    'dice_loss', 'supervised_loss', 'confident_disagreement', 'mutual_correction_loss',
    'cosine_consistency_loss', 'urps_loss', 'FILTER_MODES', 'cross_pseudo_label', 'cps_loss',
    'uncertain_mask', 'percentile', 'entropy', 'prototype_contrastive_loss', 'softmax_mse_loss',
]
