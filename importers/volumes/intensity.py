"""Intensity steps: the CT window scaled to [0, 1], and the z-score; a recipe's list of them.

A recipe (recipe.py) lists its steps in order, each a dict:
    {'step': 'window', 'window': [lo, hi], 'on': 'volume' | 'crop'}
    {'step': 'zscore', 'voxels': 'all' | 'nonzero', 'on': 'volume' | 'crop'}
'on' says whether the step sees the whole (resampled) volume, before the crop, or the crop.
"""
import numpy as np

from .errors import VolumeError


def ct_window(hu, lo, hi):
    """HU clipped to [lo, hi] and scaled to [0, 1]: (clip(hu, lo, hi) - lo) / (hi - lo), float32.

    The lineage's Pancreas-CT window is lo -125, hi 275 (level 75, width 400: soft tissue).
    """
    if not hi > lo:
        raise VolumeError(f'CT window [{lo}, {hi}]: the upper bound must exceed the lower one')
    hu = np.clip(np.asarray(hu, dtype=np.float32), lo, hi)
    return ((hu - np.float32(lo)) / np.float32(hi - lo)).astype(np.float32)


def zscore(image, nonzero=False, name='image'):
    """(image - mean) / std as float32, the statistics in float64.

    nonzero: the statistics of the non-zero voxels only, and only those are changed (zero stays zero:
    background outside an MR field of view). Raises VolumeError naming `name` for a constant image.
    """
    image = np.asarray(image)
    if nonzero:
        mask = image != 0
        if not mask.any():
            raise VolumeError(f'{name}: has no non-zero voxel to z-score')
        values = image[mask].astype(np.float64)
        std = values.std()
        if std == 0:
            raise VolumeError(f'{name}: its non-zero voxels are constant, cannot z-score them')
        out = np.zeros(image.shape, dtype=np.float32)
        out[mask] = ((values - values.mean()) / std).astype(np.float32)
        return out
    image = image.astype(np.float64)
    std = image.std()
    if std == 0:
        raise VolumeError(f'{name}: is constant, cannot z-score it')
    return ((image - image.mean()) / std).astype(np.float32)


STAGES = ('volume', 'crop')


def apply_steps(image, steps, on, name='image'):
    """image through each of a recipe's intensity `steps` whose 'on' is `on` (module docstring), in order."""
    for step in steps:
        if step['on'] != on:
            continue
        if step['step'] == 'window':
            image = ct_window(image, *step['window'])
        else:
            image = zscore(image, nonzero=step['voxels'] == 'nonzero', name=name)
    return image
