"""An import recipe at prediction time: a scan onto the network's grid, and class scores back onto the scan's.

Forward, what the importer did to every case minus anything that needs a label:
    reorient to the recipe's 'orientation', flips included (format_version 1: its 'reorient', a permutation
    to x, y, z or none) -> resample to 'spacing' ('order') -> intensity steps on the volume
    -> crop 'nonzero' (a 'label' crop needs the ground truth: the whole volume is kept) -> intensity steps
    on the crop -> pad to 'min_size' with the crop's minimum
Inverse, on the class scores (C, X', Y', Z') of that padded crop, every geometric step undone in reverse:
    unpad -> uncrop into the resampled volume (outside the crop: background, score 1 for class 0) ->
    each class's score resampled linearly to the scan's own spacing and shape -> argmax -> the original
    label values -> the stored axis order and directions.

Before any of it, scan_problem refuses what the recipe cannot be applied to, each refusal one line: values
that are not finite, a singular header, a blank (constant) scan, a grid too small or too large, and values
whose distribution does not fit the recipe's modality (modality_problem: a heuristic, so its line names the
figure it looked at and the flag that goes past it).
"""
from dataclasses import dataclass

import numpy as np

from .checks import affine_problem, constant_problem, size_problem
from .crop import AXES, crop_box, pad_to, padding
from .intensity import apply_steps
from .orient import axis_spacing, inverse, permutation, reorient, reorientation, reoriented_affine, xyz_order
from .recipe import class_values
from .resample import resample

# Below any soft tissue (fat is about -100 HU): air (-1000), lung, bowel gas, and the padding outside a CT's field
# of view. A CT in Hounsfield units holds some of them; an MR image holds at most a few noise voxels this low
# (nibabel's anatomical.nii, a real MR: 0.08 % of its voxels negative, down to -610).
LOW_HU = -200.0
CT_LEAST = 0.001  # a CT with less than 0.1 % of its voxels at or below LOW_HU is not in Hounsfield units
MR_MOST = 0.01    # an MR with more than 1 % of its voxels there looks like a CT
SKIP_FLAG = '--skip_modality_check'
SKIP_HINT = f'; {SKIP_FLAG} segments it anyway'


@dataclass(frozen=True)
class Grid:
    """Where a scan went on its way to the network: enough to bring scores back onto it."""
    ornt: tuple             # nibabel ornt taking the stored array to the network's orientation
    spacing: tuple          # the scan's voxel size in mm, in the network's orientation
    shape: tuple            # the scan's voxels, in the network's orientation
    resampled_shape: tuple  # after resampling
    box: tuple              # the crop's slices in the resampled volume, or None
    pads: tuple             # ((before, after), ...) added by pad_to


def network_axes(shape, affine, recipe, name='scan'):
    """(ornt, shape, spacing in mm) of a scan of stored `shape` with `affine` once in the recipe's orientation:
    the ornt reorient applies, and the scan's voxels and voxel size along the network's axes."""
    if 'orientation' in recipe:
        ornt = reorientation(affine, recipe['orientation'], name)
    else:  # format_version 1 (recipe.legacy_warning): a permutation to x, y, z, or the stored order
        ornt = permutation(xyz_order(np.asarray(affine, dtype=float)[:3, :3].T) if recipe['reorient'] else (0, 1, 2))
    new_affine = reoriented_affine(affine, ornt, shape, name)
    new_shape = tuple(int(n) for n in np.asarray(shape)[np.argsort(ornt[:, 0])])  # output axis j: input ornt[i, 0] == j
    return ornt, new_shape, axis_spacing(new_affine[:3, :3].T)


def modality_problem(image, modality):
    """One line when the share of voxels at or below LOW_HU does not fit `modality` (fewer than CT_LEAST for a
    CT, more than MR_MOST for an MR), naming the share; else None. Never the minimum alone: a
    real MR holds a few negative noise voxels, a CT cropped to the body little air."""
    share = float(np.count_nonzero(np.asarray(image) <= LOW_HU)) / max(np.size(image), 1)
    p1 = float(np.percentile(image, 1))
    figure = f'{100 * share:.3g} % of its voxels are at or below {LOW_HU:g} (1st percentile {p1:g})'
    if modality == 'ct' and share < CT_LEAST:
        return (f'{figure}, fewer than {100 * CT_LEAST:g} %: not a CT in Hounsfield units (air is about -1000), '
                'which the recipe\'s modality ct expects')
    if modality == 'mr' and share > MR_MOST:
        return (f'{figure}, more than {100 * MR_MOST:g} %: it looks like a CT in Hounsfield units, but the '
                'recipe\'s modality is mr')
    return None


def scan_problem(image, recipe, affine=None, check_modality=True):
    """One line when a scan's values are not finite, it is blank (constant), its header geometry (affine) is NaN
    or singular, its grid at the recipe's spacing is too small or too large (checks.size_problem), or (unless
    check_modality is False: SKIP_FLAG) its values do not fit the recipe's modality; else None."""
    if not np.isfinite(image).all():
        return 'holds NaN or infinite values'
    if affine is not None:
        problem = affine_problem(affine, '')
        if problem:
            return problem
        _, shape, spacing = network_axes(np.shape(image), affine, recipe)
        problem = size_problem(shape, '', spacing, recipe['spacing'], "the recipe's spacing")
        if problem:
            return problem
    blank = constant_problem(image, '')
    if blank:
        return blank
    mismatch = modality_problem(image, recipe['modality']) if check_modality else None
    return None if mismatch is None else mismatch + SKIP_HINT


def to_network_grid(stored, affine, recipe, name='scan'):
    """(image float32 (X',Y',Z') for the sliding window, Grid) of a scan: stored array and its 4x4 affine
    (read.read_scan, dicom.read_ct_scan). name: the scan in error messages."""
    ornt, shape, spacing = network_axes(np.shape(stored), affine, recipe, name)
    image = reorient(np.asarray(stored, dtype=np.float32), ornt, name)
    if recipe['spacing'] is not None:
        image, _ = resample(image, spacing, recipe['spacing'], recipe['order'])
    image = apply_steps(image, recipe['intensity'], 'volume', name)
    box = crop_box(image, None, 'nonzero', AXES[recipe['crop_axes']], 0, recipe['min_size']) \
        if recipe['crop'] == 'nonzero' else None
    cropped = apply_steps(image if box is None else image[box], recipe['intensity'], 'crop', name)
    grid = Grid(tuple(map(tuple, ornt)), spacing, shape, image.shape, box,
                tuple(padding(cropped.shape, recipe['min_size'])))
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


def label_values(classes, recipe):
    """A class map as the original label values (uint8 when they fit, else int32), in its own orientation."""
    values = class_values(recipe)
    dtype = np.uint8 if values.min() >= 0 and values.max() <= 255 else np.int32
    return values.astype(dtype)[classes]


def to_stored(classes, grid, recipe):
    """A class map of to_scan_grid (the network's orientation) as the scan stores it: original label values,
    stored axis order and directions."""
    return reorient(label_values(classes, recipe), inverse(np.array(grid.ornt)))
