"""Crop boxes (around a mask, along some axes) and padding up to a minimum size.

The box is the lineage's (UA-MT's la_heart_processing.py, MC-Net's and CoraNet's Pancreas notebooks):
along a cropped axis with mask extent [lo, hi] (hi the last mask index),
    pad   = max(min_size - (hi - lo), 0) // 2
    box   = [max(lo - m_lo - pad, 0), min(hi + m_hi + pad, size))
so m_lo + pad voxels precede the mask and m_hi - 1 + pad follow it (the lineage's off-by-one, kept so
that its files are reproduced), clipped to the volume. Axes not cropped are kept whole.
"""
import numpy as np

AXES = {'xy': (0, 1), 'xyz': (0, 1, 2)}


def bounding_box(mask):
    """[(lo, hi), ...] per axis, hi the last index where mask is non-zero (inclusive); None if empty."""
    nonzero = np.nonzero(mask)
    if len(nonzero[0]) == 0:
        return None
    return [(int(idx.min()), int(idx.max())) for idx in nonzero]


def label_box(mask, margins, min_size, axes=(0, 1)):
    """Slices (x, y, z) of the lineage's box around the non-zero voxels of mask (module docstring).

    mask: (X,Y,Z), at least one non-zero voxel. axes: the cropped axes; margins: one (m_lo, m_hi) pair
    and min_size one int per cropped axis, in voxels.
    """
    extent = bounding_box(mask)
    if extent is None:
        raise ValueError('label_box: the mask is empty')
    box = [slice(0, n) for n in mask.shape]
    for (m_lo, m_hi), least, axis in zip(margins, min_size, axes):
        lo, hi = extent[axis]
        pad = max(int(least) - (hi - lo), 0) // 2
        box[axis] = slice(max(lo - int(m_lo) - pad, 0), min(hi + int(m_hi) + pad, mask.shape[axis]))
    return tuple(box)


def body_mask(image):
    """Voxels above the volume's minimum: the body and the air around it in a CT, the head or the organ
    in an MR whose background is 0. The crop that needs no label (`--crop nonzero`)."""
    image = np.asarray(image)
    return image > image.min()


def crop_box(image, label, rule, axes, margin, min_size):
    """Slices (x, y, z) of a recipe's crop, or None for rule 'none'.

    rule 'nonzero': the box of body_mask(image), no margin; 'label': the label's box with `margin` voxels
    of context on each side (label_box's stop is exclusive from the last mask index: one more after than
    the lineage's). Either box grows to min_size (3 ints) along the cropped `axes` by label_box's rule.
    """
    if rule == 'none':
        return None
    mask, keep = (label, margin) if rule == 'label' else (body_mask(image), 0)
    return label_box(mask, [(keep, keep + 1)] * len(axes), [min_size[a] for a in axes], axes)


def padding(shape, min_size):
    """[(before, after)] per axis that pad_to adds to an array of `shape`: the extra split evenly, one more
    voxel after than before when odd."""
    extra = [max(int(m) - n, 0) for m, n in zip(min_size, shape)]
    return [(e // 2, e - e // 2) for e in extra]


def pad_to(array, min_size, value):
    """array padded with `value` to at least min_size (3 ints) per axis (padding()); an array already large
    enough is returned as it is."""
    pads = padding(array.shape, min_size)
    if not any(a or b for a, b in pads):
        return array
    return np.pad(array, pads, mode='constant', constant_values=value)
