"""Orientation: which way each array axis runs through the patient, and bringing a volume to a named one.

An orientation is three axis codes, nibabel's: 'RAS' means array axis 0 runs toward the patient's Right,
axis 1 toward Anterior, axis 2 toward Superior; 'LPS' is ITK's and DICOM's frame. Every importer brings each
volume to its recipe's orientation, flips included (reorientation, reorient), so the networks see one
anatomy however a file is stored: a mirrored scan is another picture to a V-Net trained without flips
(train.py's default, --rotflip off). The arithmetic is nibabel.orientations' (io_orientation, ornt_transform,
apply_orientation, inv_ornt_aff); nibabel is optional elsewhere, so it is imported where it is needed.

xyz_order (with permutation) is the reorientation of recipes of format_version 1: the axes permuted to world
x, y, z order and never flipped; it is kept so that a model trained on such a recipe sees new scans as it saw
its cases (apply.network_axes). to_xyz applies it to an array (read.read_with_spacing).
"""
import numpy as np

from dataloaders.pictures import OPPOSITE  # a valid orientation takes one letter of each pair of opposites

from .errors import VolumeError

# NIfTI's world frame and nibabel's canonical orientation (as_closest_canonical); checks.canonical compares a
# label with its image in it. import_volumes' default: a NIfTI written with a scaling affine keeps its array.
CANONICAL = 'RAS'


def _orientations(what):
    """nibabel.orientations, or VolumeError naming `what` needed it and the pip line."""
    try:
        from nibabel import orientations
    except ImportError:
        raise VolumeError(f'{what}: reorienting a volume needs the optional package nibabel: '
                          'pip install nibabel') from None
    return orientations


def orientation_problem(codes, name='--orientation'):
    """One line naming `name` when codes is not an orientation (three letters, one of L/R, A/P and S/I, in
    any order), else None."""
    text = codes if isinstance(codes, str) else repr(codes)
    if (not isinstance(codes, str) or len(codes) != 3 or not set(codes) <= set(OPPOSITE)
            or len({frozenset((c, OPPOSITE[c])) for c in codes}) != 3):
        return (f'{name} {text}: not an orientation: three letters, one of L/R, one of A/P and one of S/I, '
                'e.g. RAS or LPS')
    return None


def axis_codes(affine, name='volume'):
    """The orientation of an array whose voxel-to-world (RAS mm) affine is `affine`, e.g. 'LPS': for each
    array axis, the world direction it points along most (nibabel's io_orientation)."""
    nio = _orientations(name)
    return ''.join(nio.ornt2axcodes(nio.io_orientation(np.asarray(affine, dtype=float))))


def reorientation(affine, codes, name='volume'):
    """nibabel's ornt (3x2: output axis and flip of each stored axis) taking an array with `affine` to the
    orientation `codes`."""
    nio = _orientations(name)
    return nio.ornt_transform(nio.io_orientation(np.asarray(affine, dtype=float)), nio.axcodes2ornt(tuple(codes)))


def permutation(order):
    """The ornt of np.transpose(array, order), no flip: to_xyz's reorientation (format_version 1)."""
    return np.array([[int(np.argsort(order)[a]), 1] for a in range(len(order))], dtype=float)


def inverse(ornt):
    """The ornt undoing `ornt`: the output axis each one went to comes back, flipped as it was."""
    back = np.zeros_like(np.asarray(ornt, dtype=float))
    for axis, (to, flip) in enumerate(np.asarray(ornt, dtype=float)):
        back[int(to)] = (axis, flip)
    return back


def reorient(array, ornt, name='volume'):
    """array with its axes flipped and permuted by `ornt` (nibabel's apply_orientation), contiguous."""
    return np.ascontiguousarray(_orientations(name).apply_orientation(np.asarray(array), ornt))


def reoriented_affine(affine, ornt, shape, name='volume'):
    """The affine of an array of stored `shape` once reoriented by `ornt`: the same voxels in the world."""
    return np.asarray(affine, dtype=float) @ _orientations(name).inv_ornt_aff(ornt, tuple(shape))


def to_orientation(arrays, affine, codes, name='volume'):
    """(arrays reoriented to `codes`, their voxel size in mm per new axis, their affine): arrays are volumes
    stored on one grid whose affine is `affine` (an image and its label)."""
    ornt = reorientation(affine, codes, name)
    shape = np.shape(arrays[0])
    new_affine = reoriented_affine(affine, ornt, shape, name)
    return [reorient(a, ornt, name) for a in arrays], axis_spacing(new_affine[:3, :3].T), new_affine


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
