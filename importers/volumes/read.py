"""Read one volume file (NIfTI via nibabel, NRRD via pynrrd) as (array indexed (x, y, z), spacing in mm).

A DICOM series is a folder, not a file: dicom.py reads it. The packages are optional and imported here
only when a file of their format is read. This is the project's one reader of these formats: segment.py
reads through it too (read_scan keeps the stored order and the file's affine).
"""
import numpy as np

from .checks import check_affine
from .errors import VolumeError, require
from .orient import axis_spacing, to_xyz

# Longest first: '.nii.gz' must win over '.nii'.
SUFFIXES = ('.nii.gz', '.nii', '.nrrd')


def scan_suffix(path):
    """The suffix of a file read_with_spacing can read ('.nii.gz', '.nii', '.nrrd'), None for any other file."""
    name = str(path).lower()
    return next((s for s in SUFFIXES if name.endswith(s)), None)


def _three_d(array, path):
    """Drop trailing axes of length 1 (some writers store (X,Y,Z,1) or (X,Y,Z,1,1)); refuse anything but 3-D,
    and anything but numbers (an RGB NIfTI holds records of three bytes, a complex one two floats per voxel)."""
    if array.dtype.kind not in 'biuf':
        raise VolumeError(f'{path}: holds {array.dtype} voxels, expected one number per voxel (a grey-level scan)')
    while array.ndim > 3 and array.shape[-1] == 1:
        array = array[..., 0]
    if array.ndim != 3:
        raise VolumeError(f'{path}: is {array.ndim}-D with shape {array.shape}, expected one 3-D volume '
                          '(one channel per file)')
    return array


def read_nifti(path):
    """(array as stored, 4x4 affine: voxel index (i, j, k, 1) -> world mm, RAS as NIfTI defines it)."""
    nib = require('nibabel', 'nibabel', path, 'NIfTI')
    try:
        image = nib.load(str(path))
        # dataobj applies the header's scl_slope/scl_inter, like get_fdata, without forcing float64
        array = np.asanyarray(image.dataobj)
    except Exception as err:  # noqa: BLE001 -- nibabel reports corrupt files with many exception types
        raise VolumeError(f'{path}: cannot read NIfTI: {" ".join(str(err).split())}') from None
    return _three_d(array, path), np.asarray(image.affine, dtype=float)


# NRRD spaces whose x (and y) axes point the other way from NIfTI's RAS: the sign of each world axis
RAS_SIGNS = {'left-posterior-superior': (-1, -1, 1), 'lps': (-1, -1, 1), 'left-anterior-superior': (-1, 1, 1),
             'las': (-1, 1, 1)}


def nrrd_affine(header, directions):
    """4x4 affine in RAS mm from a NRRD header: columns the axes' world vectors, then 'space origin'
    (0 without one), x and y negated for an LPS (Slicer's, ITK's) or LAS space."""
    affine = np.eye(4)
    affine[:3, :3] = np.asarray(directions, dtype=float).T
    origin = np.asarray(header.get('space origin', np.zeros(3)), dtype=float)
    if origin.shape == (3,) and np.isfinite(origin).all():
        affine[:3, 3] = origin
    signs = RAS_SIGNS.get(str(header.get('space', '')).lower(), (1, 1, 1))
    return np.diag([*signs, 1.0]) @ affine


def read_nrrd(path):
    """(array as stored, sizes order, native byte order; 4x4 affine in RAS mm, nrrd_affine).

    pynrrd's default index order 'F' gives array.shape == the header's sizes, fastest axis first: the
    (x, y, z) indexing the LA lineage used. Without 'space directions', 'spacings' (or 1 mm) is used.
    """
    nrrd = require('nrrd', 'pynrrd', path, 'NRRD')
    try:
        array, header = nrrd.read(str(path))
    except Exception as err:  # noqa: BLE001 -- pynrrd raises NRRDError, ValueError, OSError, zlib.error
        raise VolumeError(f'{path}: cannot read NRRD: {" ".join(str(err).split())}') from None
    array = _three_d(array, path)
    array = array.astype(array.dtype.newbyteorder('='), copy=False)  # a big-endian file stays big-endian
    directions = header.get('space directions')
    if directions is not None:
        directions = np.asarray(directions, dtype=float)
        if directions.shape != (3, 3) or not np.isfinite(directions).all():
            raise VolumeError(f'{path}: space directions {directions.tolist()} are not three 3-D vectors')
        return array, nrrd_affine(header, directions)
    spacings = np.asarray(header.get('spacings', [1.0, 1.0, 1.0]), dtype=float)
    if spacings.shape != (3,) or not np.isfinite(spacings).all():
        spacings = np.ones(3)
    return array, nrrd_affine(header, np.diag(spacings))


def read_scan(path):
    """(array as stored, 4x4 affine in RAS mm) of a NIfTI or NRRD file: what a label map written over the
    scan must keep. Row a of affine[:3, :3].T is the world vector of array axis a. A header whose affine
    is not finite or is singular is refused (checks.affine_problem): its spacing would be 0 or NaN."""
    suffix = scan_suffix(path)
    if suffix is None:
        raise VolumeError(f'{path}: not a volume file ({", ".join(SUFFIXES)})')
    array, affine = (read_nrrd if suffix == '.nrrd' else read_nifti)(path)
    return array, check_affine(affine, path)


def read_with_spacing(path, reorient=True):
    """(array (X,Y,Z), spacing: 3 floats in mm) of a NIfTI or NRRD file.

    reorient: permute the axes to the world's x, y, z order (orient.to_xyz); False keeps the file's
    order (the LA recipe: the lineage indexed the stored array as (x, y, z)).
    """
    array, affine = read_scan(path)
    directions = affine[:3, :3].T
    if reorient:
        return to_xyz(array, directions)
    return array, axis_spacing(directions)
