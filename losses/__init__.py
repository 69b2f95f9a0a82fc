"""One loss per term of the training iteration (docs/method.md, "The loss terms"), plus the mean-teacher MSE."""
from .supervised import dice_loss, supervised_loss
from .mutual_correction import confident_disagreement, mutual_correction_loss
from .consistency import cosine_consistency_loss
from .urps import urps_loss
from .cross_pseudo import FILTER_MODES, cross_pseudo_label, cps_loss, entropy, percentile, uncertain_mask
from .contrastive import prototype_contrastive_loss
from .mean_teacher import softmax_mse_loss

__all__ = [
    'dice_loss', 'supervised_loss', 'confident_disagreement', 'mutual_correction_loss',
    'cosine_consistency_loss', 'urps_loss', 'FILTER_MODES', 'cross_pseudo_label', 'cps_loss',
    'uncertain_mask', 'percentile', 'entropy', 'prototype_contrastive_loss', 'softmax_mse_loss',
]
