"""Ramp-up schedules for the unsupervised loss weights."""
import math


def sigmoid_rampup(current, rampup_length):
    """exp(-5 (1 - t)^2), t = clip(current / rampup_length, 0, 1); 1.0 when rampup_length == 0.

    current: iteration (int or float); rampup_length: iterations to full weight (>= 0).
    Returns a Python float in [exp(-5), 1].
    """
    if rampup_length < 0:
        raise ValueError(f'rampup_length must be >= 0, got {rampup_length}')
    if rampup_length == 0:
        return 1.0
    t = min(max(current / rampup_length, 0.0), 1.0)
    return float(math.exp(-5.0 * (1.0 - t) ** 2))
