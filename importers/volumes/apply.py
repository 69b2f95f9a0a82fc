"""An import recipe at prediction time: a scan onto the network's grid, and class scores back onto the scan's.

Forward, what the importer did to every case minus anything that needs a label:
    axes to x, y, z (recipe 'reorient') -> resample to 'spacing' ('order') -> intensity steps on the volume
    -> crop 'nonzero' (a 'label' crop needs the ground truth: the whole volume is kept) -> intensity steps
    on the crop -> pad to 'min_size' with the crop's minimum
Inverse, on the class scores (C, X', Y', Z') of that padded crop, every geometric step undone in reverse:
    unpad -> uncrop into the resampled volume (outside the crop: background, score 1 for class 0) ->
    each class's score resampled linearly to the scan's own spacing and shape -> argmax -> the original
    label values -> the stored axis order.
"""
from dataclasses import dataclass

import numpy as np

from .checks import affine_problem, size_problem
from .crop import AXES, crop_box, pad_to, padding
from .intensity import apply_steps
from .orient import axis_spacing, xyz_order
from .recipe import class_values
from .resample import resample

# Air is about -1000 HU; a CT in Hounsfield units holds some, an MR image nothing this low.
CT_BELOW = -200.0
MR_ABOVE = -500.0


@dataclass(frozen=True)
class Grid:
    """Where a scan went on its way to the network: enough to bring scores back onto it."""
    order: tuple            # stored axis along x, y, z
    spacing: tuple          # the scan's voxel size in mm, (x, y, z)
    shape: tuple            # the scan's voxels, (x, y, z)
    resampled_shape: tuple  # after resampling
    box: tuple              # the crop's slices in the resampled volume, or None
    pads: tuple             # ((before, after), ...) added by pad_to


def scan_problem(image, recipe, affine=None):
    """One line when a scan's values are not finite, its header geometry (affine) is NaN or singular, its
    grid at the recipe's spacing is too small or too large (checks.size_problem), or its values do not fit
    the recipe's modality; else None."""
    if not np.isfinite(image).all():
        return 'holds NaN or infinite values'
    if affine is not None:
        problem = affine_problem(affine, '')
        if problem:
            return problem
        directions = np.asarray(affine, dtype=float)[:3, :3].T
        order = xyz_order(directions) if recipe['reorient'] else (0, 1, 2)
        spacing = tuple(axis_spacing(directions)[a] for a in order)
        shape = tuple(np.shape(image)[a] for a in order)
        problem = size_problem(shape, '', spacing, recipe['spacing'], "the recipe's spacing")
        if problem:
            return problem
    low, high = float(np.min(image)), float(np.max(image))
    if recipe['modality'] == 'ct' and low > CT_BELOW:
        return (f'values {low:g} .. {high:g} hold nothing below {CT_BELOW:g}: not a CT in Hounsfield units '
                '(air is about -1000), which the recipe\'s modality ct expects')
    if recipe['modality'] == 'mr' and low < MR_ABOVE:
        return f'values down to {low:g} look like CT Hounsfield units, but the recipe\'s modality is mr'
    return None


def to_network_grid(stored, affine, recipe, name='scan'):
    """(image float32 (X',Y',Z') for the sliding window, Grid) of a scan: stored array and its 4x4 affine
    (read.read_scan, dicom.read_ct_scan). name: the scan in error messages."""
    directions = np.asarray(affine, dtype=float)[:3, :3].T
    order = xyz_order(directions) if recipe['reorient'] else (0, 1, 2)
    spacing = tuple(axis_spacing(directions)[a] for a in order)
    image = np.transpose(np.asarray(stored, dtype=np.float32), order)
    shape = image.shape
    if recipe['spacing'] is not None:
        image, _ = resample(image, spacing, recipe['spacing'], recipe['order'])
    image = apply_steps(image, recipe['intensity'], 'volume', name)
    box = crop_box(image, None, 'nonzero', AXES[recipe['crop_axes']], 0, recipe['min_size']) \
        if recipe['crop'] == 'nonzero' else None
    cropped = apply_steps(image if box is None else image[box], recipe['intensity'], 'crop', name)
    grid = Grid(order, spacing, shape, image.shape, box, tuple(padding(cropped.shape, recipe['min_size'])))
    return pad_to(cropped, recipe['min_size'], float(cropped.min())).astype(np.float32, copy=False), grid


def to_scan_grid(score, grid, recipe):
    """Classes (X,Y,Z) on the scan's grid, axes still in x, y, z order, of class scores (C, X', Y', Z') on
    the network's grid (module docstring's inverse, up to the argmax)."""
    score = score[(slice(None),) + tuple(slice(b, n - a) for (b, a), n in zip(grid.pads, score.shape[1:]))]
    if grid.box is not None:
        full = np.zeros((len(score),) + tuple(grid.resampled_shape), dtype=np.float32)
        full[0] = 1.0
        full[(slice(None),) + tuple(grid.box)] = score
        score = full
    if recipe['spacing'] is not None:
        score = np.stack([resample(s, recipe['spacing'], grid.spacing, order=1, shape=grid.shape)[0]
                          for s in score])
    return score.argmax(axis=0)


def to_stored(classes, grid, recipe):
    """A class map (X,Y,Z) of to_scan_grid as the scan stores it: original label values (uint8 when they fit,
    else int32), stored axis order."""
    values = class_values(recipe)
    dtype = np.uint8 if values.min() >= 0 and values.max() <= 255 else np.int32
    return np.transpose(values.astype(dtype)[classes], np.argsort(grid.order))
