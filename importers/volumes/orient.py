"""Reorient a volume to (x, y, z) axis order, keeping each axis's spacing.

Only the order of the axes changes, never their direction: flipping an axis would change the arrays the
lineage's recipes write (they index the stored array as it is), and a V-Net is trained on flips anyway.
"""
import numpy as np


def header_precision(values):
    """Each of values (mm) as a float32 holds it, the precision of a NIfTI header: the same scan read from a
    DICOM series (decimal strings) or NRRD (text) and from its NIfTI conversion gets the same spacing."""
    return tuple(float(np.float32(v)) for v in values)


def axis_spacing(directions):
    """Voxel size in mm of each array axis: the length of its world vector (rows of `directions`), at
    header_precision."""
    return header_precision(np.linalg.norm(np.asarray(directions, dtype=float), axis=1))


def world_axes(directions):
    """For each array axis, the world axis (0 x, 1 y, 2 z) its vector points along most; None if two
    array axes point along the same world axis (an oblique volume near 45 degrees)."""
    axes = tuple(int(np.argmax(np.abs(row))) for row in np.asarray(directions, dtype=float))
    return axes if sorted(axes) == [0, 1, 2] else None


def xyz_order(directions):
    """The stored axis along world x, y, z: the transpose to_xyz applies (np.argsort of it undoes it).
    An oblique volume whose axes do not map one to one keeps the stored order (0, 1, 2)."""
    axes = world_axes(directions)
    return (0, 1, 2) if axes is None else tuple(axes.index(world) for world in range(3))


def to_xyz(array, directions):
    """(array with axes permuted so that axis i lies along world axis i, its spacing in mm).

    array: (A, B, C) as stored; directions: 3x3, row a the world vector (mm) of array axis a.
    """
    spacing = axis_spacing(directions)
    order = xyz_order(directions)
    return np.transpose(array, order), tuple(spacing[a] for a in order)
