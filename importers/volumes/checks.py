"""Checks every importer and segment.py make before any work: finite voxels, a usable header geometry,
a label on its image's grid, label values, numeric flags, and volume sizes.

Tolerances (docs/data.md, "What is checked"), chosen near nnU-Net's image/label geometry check and above
the precision of a NIfTI header (float32):
    spacing    relative difference up to SPACING_RTOL (1e-3) per axis
    origin     up to ORIGIN_MM (0.1 mm) between the first voxels' centres, both volumes in canonical order
    direction  up to DIRECTION_DEG (0.1 degree) between each pair of axis vectors
Sizes: every volume, after resampling, holds at least MIN_AXIS voxels per axis and at most MAX_VOXELS.
"""
import math

import numpy as np

from .errors import VolumeError
from .orient import world_axes

SPACING_RTOL = 1e-3
ORIGIN_MM = 0.1
DIRECTION_DEG = 0.1
# Cubic interpolation (--order 3) needs 4 voxels of support along an axis; fewer is a slice stack, not a volume.
MIN_AXIS = 4
# 2**28 voxels: 1 GiB as float32, 2 GiB for the float64 z-score statistics, about 645^3.
MAX_VOXELS = 2 ** 28
# A 3x3 whose determinant is this small against the product of its column lengths has (nearly) parallel axes.
SINGULAR = 1e-6


def _shape(shape):
    return 'x'.join(str(int(n)) for n in shape)


def finite_problem(array, name):
    """One line naming `name` when array holds NaN or infinite values, else None."""
    array = np.asarray(array)
    if array.dtype.kind not in 'fc':
        return None
    bad = int(array.size - np.count_nonzero(np.isfinite(array)))
    return f'{name}: {bad} voxels are NaN or infinite (of {array.size})' if bad else None


def constant_problem(array, name):
    """One line naming `name` when every voxel of array holds one value (a blank or constant scan: no body to
    crop, nothing to normalise or segment), else None."""
    array = np.asarray(array)
    if array.size and np.all(array == array.flat[0]):
        name = f'{name}: ' if name else ''
        return f'{name}the image is blank: every voxel is {float(array.flat[0]):g}, nothing to segment'
    return None


def affine_problem(affine, name):
    """One line naming `name` when a 4x4 voxel-to-world affine is not finite or its axes are zero or
    parallel (a singular matrix: no voxel size, no orientation), else None."""
    affine = np.asarray(affine, dtype=float)
    name = f'{name}: ' if name else ''
    if affine.shape != (4, 4) or not np.isfinite(affine).all():
        return f'{name}the header\'s geometry (affine) holds NaN or infinite values: {affine[:3].tolist()}'
    columns = affine[:3, :3]
    lengths = np.linalg.norm(columns, axis=0)
    if lengths.min() == 0 or abs(np.linalg.det(columns)) < SINGULAR * float(np.prod(lengths)):
        return (f'{name}the header\'s geometry (affine) is singular (a zero voxel size or parallel axes): '
                f'{np.round(columns, 6).tolist()}')
    return None


def check_affine(affine, name):
    """affine, or VolumeError (affine_problem)."""
    problem = affine_problem(affine, name)
    if problem:
        raise VolumeError(problem)
    return affine


def canonical(shape, affine):
    """(flips, order, canonical affine): flip the array axes in `flips` (a tuple of bools), then transpose
    by `order`, and axis i runs along world axis i in its positive direction; None when the axes are oblique
    (two near one world axis: no one canonical order)."""
    affine = np.asarray(affine, dtype=float)
    directions = affine[:3, :3].T
    axes = world_axes(directions)
    if axes is None:
        return None
    flips = tuple(bool(directions[a, axes[a]] < 0) for a in range(3))
    flipped = affine.copy()
    for a, flip in enumerate(flips):
        if flip:
            flipped[:3, 3] += flipped[:3, a] * (shape[a] - 1)
            flipped[:3, a] = -flipped[:3, a]
    order = tuple(axes.index(world) for world in range(3))
    out = np.eye(4)
    out[:3, :3] = flipped[:3, list(order)]
    out[:3, 3] = flipped[:3, 3]
    return flips, order, out


def _to_canonical(array, flips, order):
    index = tuple(slice(None, None, -1) if f else slice(None) for f in flips)
    return np.transpose(array[index], order)


def _from_canonical(array, flips, order):
    array = np.transpose(array, np.argsort(order))
    return array[tuple(slice(None, None, -1) if f else slice(None) for f in flips)]


def geometry_difference(shape_a, affine_a, shape_b, affine_b, name_a):
    """None when grid b (shape, 4x4 affine) is grid a's, named name_a, within the module's tolerances (both in
    canonical order); else what differs, and by how much (voxels, mm, degrees), as a phrase."""
    if tuple(shape_a) != tuple(shape_b):
        return f'shape {_shape(shape_b)} but its image {name_a} is {_shape(shape_a)}'
    cols_a, cols_b = affine_a[:3, :3], affine_b[:3, :3]
    mm_a, mm_b = np.linalg.norm(cols_a, axis=0), np.linalg.norm(cols_b, axis=0)
    if not np.allclose(mm_b, mm_a, rtol=SPACING_RTOL, atol=0):
        return (f'spacing {"x".join(f"{s:g}" for s in mm_b)} mm but its image {name_a} has '
                f'{"x".join(f"{s:g}" for s in mm_a)} mm')
    cosines = np.clip(np.sum(cols_a * cols_b, axis=0) / (mm_a * mm_b), -1.0, 1.0)
    degrees = float(np.degrees(np.arccos(cosines)).max())
    if degrees > DIRECTION_DEG:
        return (f'its axes point {degrees:.3g} degrees away from those of its image {name_a} '
                f'(tolerance {DIRECTION_DEG:g} degrees)')
    offset = float(np.linalg.norm(affine_b[:3, 3] - affine_a[:3, 3]))
    if offset > ORIGIN_MM:
        return (f'its origin lies {offset:.3g} mm from that of its image {name_a} (tolerance {ORIGIN_MM:g} mm, '
                'both in canonical orientation)')
    return None


def align_label(label, label_affine, image_shape, image_affine, label_name, image_name):
    """The label array on its image's stored voxel grid. Both are brought to canonical order (flips and axis
    order from their own affines) and compared in world space; a label stored in another orientation is
    flipped and transposed onto the image's grid. Raises VolumeError naming both files and the difference."""
    image_canon = canonical(image_shape, image_affine)
    label_canon = canonical(label.shape, label_affine)
    if image_canon is None or label_canon is None:  # oblique: compared as stored
        difference = geometry_difference(image_shape, np.asarray(image_affine, float), label.shape,
                                         np.asarray(label_affine, float), image_name)
        aligned = label
    else:
        image_flips, image_order, image_world = image_canon
        label_flips, label_order, label_world = label_canon
        canon_shape = tuple(image_shape[a] for a in image_order)
        canon_label = _to_canonical(label, label_flips, label_order)
        difference = geometry_difference(canon_shape, image_world, canon_label.shape, label_world, image_name)
        aligned = None if difference else _from_canonical(canon_label, image_flips, image_order)
    if difference:
        raise VolumeError(f'{label_name}: {difference}')
    return np.ascontiguousarray(aligned)


def label_value_problem(values, name, expected=None):
    """One line naming `name` when a label's distinct values (np.unique) hold a NaN, a non-integer, a negative
    value, or (expected: the values the user stated) another value; else None. 0.0 and 1.0 are integers."""
    values = np.asarray(values)
    if values.dtype.kind in 'fc':
        bad = values[~np.isfinite(values) | (values != np.round(values))]
        if bad.size:
            return f'{name}: label values are not all integers (e.g. {bad[0]:g}): a label holds class numbers'
    negative = values[values < 0]
    if negative.size:
        return f'{name}: label value {negative[0]:g} is negative: a label holds class numbers 0, 1, ...'
    if expected is not None:
        other = [v for v in values.tolist() if v not in set(expected)]
        if other:
            return (f'{name}: label value {other[0]:g} is not among --label_values '
                    f'{",".join(f"{v:g}" for v in expected)}')
    return None


def size_problem(shape, name, spacing=None, target=None, flag='--spacing'):
    """One line naming `name` when a volume of `shape` voxels (resampled from `spacing` to `target` mm when
    both are given) has fewer than MIN_AXIS voxels along an axis or more than MAX_VOXELS in all; else None."""
    if spacing is not None and target is not None:
        shape = tuple(int(n * s / t) for n, s, t in zip(shape, spacing, target))
        where = f' at {flag} {",".join(f"{t:g}" for t in target)}'
    else:
        where = ''
    name = f'{name}: ' if name else ''
    if min(shape) < MIN_AXIS:
        return (f'{name}{_shape(shape)} voxels{where}, fewer than the minimum of {MIN_AXIS} along an axis '
                '(a slice stack, not a volume)')
    if math.prod(shape) > MAX_VOXELS:
        return (f'{name}{_shape(shape)} voxels{where}, more than the maximum of {MAX_VOXELS} '
                f'(2**{int(math.log2(MAX_VOXELS))}) voxels that fit in memory')
    return None


def number_problems(flag, values, low=None, low_open=True, integer=False):
    """One line per numeric flag value that is not finite, or not above (low_open) / at least `low`."""
    values = values if isinstance(values, (tuple, list)) else (values,)
    shown = ','.join(f'{v:g}' if isinstance(v, float) else str(v) for v in values)
    if not all(math.isfinite(v) for v in values):
        return [f'{flag} {shown}: every value must be a finite number']
    if low is not None and any(v <= low if low_open else v < low for v in values):
        what = f'above {low:g}' if low_open else f'at least {low:g}'
        return [f'{flag} {shown}: every value must be {what}']
    if integer and not all(float(v).is_integer() for v in values):
        return [f'{flag} {shown}: every value must be an integer']
    return []
