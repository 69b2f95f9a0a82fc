"""Read one volume file (NIfTI via nibabel, NRRD via pynrrd) as (array indexed (x, y, z), spacing in mm).

A DICOM series is a folder, not a file: dicom.py reads it. The packages are optional and imported here
only when a file of their format is read.
"""
import numpy as np

from .errors import VolumeError, require
from .orient import axis_spacing, to_xyz

# Longest first: '.nii.gz' must win over '.nii'.
SUFFIXES = ('.nii.gz', '.nii', '.nrrd')


def volume_suffix(path):
    """The suffix of a file read_volume can read ('.nii.gz', '.nii', '.nrrd'), None for any other file."""
    name = str(path).lower()
    return next((s for s in SUFFIXES if name.endswith(s)), None)


def _three_d(array, path):
    """Drop a trailing axis of length 1 (some writers store (X,Y,Z,1)); refuse anything but 3-D."""
    if array.ndim == 4 and array.shape[3] == 1:
        array = array[..., 0]
    if array.ndim != 3:
        raise VolumeError(f'{path}: is {array.ndim}-D with shape {array.shape}, expected one 3-D volume '
                          '(one channel per file)')
    return array


def read_nifti(path):
    """(array as stored, 3x3 matrix whose row a is the world vector of array axis a, in mm)."""
    nib = require('nibabel', 'nibabel', path, 'NIfTI')
    try:
        image = nib.load(str(path))
        # dataobj applies the header's scl_slope/scl_inter, like get_fdata, without forcing float64
        array = np.asanyarray(image.dataobj)
    except Exception as err:  # noqa: BLE001 -- nibabel reports corrupt files with many exception types
        raise VolumeError(f'{path}: cannot read NIfTI: {" ".join(str(err).split())}') from None
    return _three_d(array, path), np.asarray(image.affine, dtype=float)[:3, :3].T


def read_nrrd(path):
    """(array as stored, sizes order, native byte order; 3x3 matrix of the axes' world vectors, in mm).

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
        return array, directions
    spacings = np.asarray(header.get('spacings', [1.0, 1.0, 1.0]), dtype=float)
    if spacings.shape != (3,) or not np.isfinite(spacings).all():
        spacings = np.ones(3)
    return array, np.diag(spacings)


def read_volume(path, reorient=True):
    """(array (X,Y,Z), spacing: 3 floats in mm) of a NIfTI or NRRD file.

    reorient: permute the axes to the world's x, y, z order (orient.to_xyz); False keeps the file's
    order (the LA recipe: the lineage indexed the stored array as (x, y, z)).
    """
    suffix = volume_suffix(path)
    if suffix is None:
        raise VolumeError(f'{path}: not a volume file ({", ".join(SUFFIXES)})')
    array, directions = (read_nrrd if suffix == '.nrrd' else read_nifti)(path)
    if reorient:
        return to_xyz(array, directions)
    return array, axis_spacing(directions)
