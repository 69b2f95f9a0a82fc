"""Volumes in and label maps out, for segment.py and test.py --save_pred: .h5, .npy, NIfTI, and the scans an
import recipe reads (NIfTI, NRRD, a DICOM series folder).

NIfTI, NRRD and DICOM are read by the import pipeline's readers (importers.volumes), the project's only
ones. nibabel is optional: without it, h5 is written and reading a NIfTI file says how to install it. Every
unusable file raises UsageError (or the readers' VolumeError) with one line naming it.
"""
from pathlib import Path

import h5py
import numpy as np

from importers.volumes import VolumeError, read_ct_scan, read_scan
from importers.volumes.orient import axis_spacing
from utils.cli import UsageError
from utils.trained import UniqueNames

VOLUME_SUFFIXES = ('.nii.gz', '.nii', '.nrrd', '.h5', '.hdf5', '.npy')
# what an import recipe reads; a folder of none of VOLUME_SUFFIXES is a DICOM series
SCAN_SUFFIXES = ('.nii.gz', '.nii', '.nrrd')


def nibabel_or_none():
    try:
        import nibabel
    except ImportError:
        return None
    return nibabel


def volume_suffix(path):
    name = Path(path).name.lower()
    return next((s for s in VOLUME_SUFFIXES if name.endswith(s)), None)


def input_files(path, series=False):
    """The volume --input names, or the volumes of the folder it names, sorted by name. series: a folder
    holding no volume is returned itself, as a DICOM series."""
    path = Path(path)
    if path.is_file():
        if volume_suffix(path) is None:
            raise UsageError(f'--input {path}: not a volume ({", ".join(VOLUME_SUFFIXES)})')
        return [path]
    if not path.is_dir():
        raise UsageError(f'--input {path}: no such file or folder')
    files = sorted(p for p in path.iterdir() if p.is_file() and volume_suffix(p) is not None)
    if files or series:
        return files or [path]
    raise UsageError(f'--input {path}: the folder holds no volume ({", ".join(VOLUME_SUFFIXES)})')


def is_scan(path):
    """A NIfTI or NRRD file or a folder (a DICOM series): what an import recipe reads."""
    return Path(path).is_dir() or volume_suffix(path) in SCAN_SUFFIXES


def read_scan_input(path, series=None):
    """(array as stored, float32; 4x4 affine in RAS mm; voxel size in mm per stored axis) of a NIfTI or NRRD
    file or a CT DICOM series folder (series: the SeriesInstanceUID to read, --series)."""
    if Path(path).is_dir():
        image, _, affine = read_ct_scan(path, series)
    else:
        image, affine = read_scan(path)
    return np.asarray(image, dtype=np.float32), affine, axis_spacing(affine[:3, :3].T)


def read_volume(path):
    """(image float32 (X,Y,Z), NIfTI affine or None)."""
    suffix = volume_suffix(path)
    affine = None
    try:
        if suffix in ('.h5', '.hdf5'):
            with h5py.File(path, 'r') as f:
                if not isinstance(f.get('image'), h5py.Dataset):
                    raise UsageError(f'{path}: no "image" dataset (found: {", ".join(sorted(f)) or "nothing"})')
                image = f['image'][()]
        elif suffix == '.npy':
            image = np.load(path, allow_pickle=False)
        else:
            image, affine = read_scan(path)
    except VolumeError as e:
        raise UsageError(str(e)) from None
    except UsageError:
        raise
    except Exception as e:  # noqa: BLE001 -- h5py, numpy and nibabel report corrupt files with many types
        raise UsageError(f'{path}: cannot read ({type(e).__name__}: {" ".join(str(e).split())[:200]})') from None
    while image.ndim > 3 and image.shape[-1] == 1:  # NIfTI often stores (X,Y,Z,1)
        image = image[..., 0]
    if image.ndim != 3 or image.dtype.kind not in 'biuf' or 0 in image.shape:
        raise UsageError(f'{path}: expected a 3-D numeric volume, found {image.dtype} of shape {image.shape}')
    image = image.astype(np.float32)
    if not np.isfinite(image).all():
        raise UsageError(f'{path}: the volume has NaN or Inf voxels')
    return image, affine


def save_nifti(nib, array, path, affine):
    nib.save(nib.Nifti1Image(array, np.eye(4) if affine is None else affine), str(path))


def spacing_affine(spacing):
    return None if spacing is None else np.diag([*spacing, 1.0])


def label_dtype(num_classes):
    return np.uint8 if num_classes <= 256 else np.int32


def label_map_suffix(source_suffix, nifti=False, h5=False):
    """The suffix of an --input volume's label map: the volume's own format unless nifti or h5 asks for another."""
    if nifti:
        return '.nii.gz'
    if h5:
        return '.h5'
    if source_suffix in ('.nii', '.nii.gz'):
        return '.nii.gz'
    return '.h5' if source_suffix in ('.h5', '.hdf5') else '.npy'


def write_label_map(pred, path, nib=None, affine=None, source=None):
    """Write one label map in the format of path's suffix (.nii.gz needs nib); h5 keeps it as 'label'."""
    path = Path(path)
    if path.name.endswith('.nii.gz'):
        save_nifti(nib, pred, path, affine)
    elif path.suffix == '.npy':
        np.save(path, pred)
    else:
        with h5py.File(path, 'w') as f:
            f.create_dataset('label', data=pred, compression='gzip')
            if source is not None:
                f.attrs['source'] = str(source)


class PredictionWriter:
    """save_fn for test_all_case: <case id>_pred/_img/_gt.nii.gz, or one <case id>.h5 holding all three."""

    def __init__(self, folder, nib, spacing, num_classes):
        self.folder, self.nib, self.spacing, self.num_classes = Path(folder), nib, spacing, num_classes
        self.names = UniqueNames()
        self.folder.mkdir(parents=True, exist_ok=True)

    def __call__(self, case_id, pred, image, label, score):
        stem = self.names(str(case_id))
        pred = pred.astype(label_dtype(self.num_classes))
        label = np.asarray(label).astype(label_dtype(self.num_classes))
        image = np.asarray(image, dtype=np.float32)
        if self.nib is not None:
            affine = spacing_affine(self.spacing)
            for suffix, array in (('pred', pred), ('img', image), ('gt', label)):
                save_nifti(self.nib, array, self.folder / f'{stem}_{suffix}.nii.gz', affine)
        else:
            with h5py.File(self.folder / f'{stem}.h5', 'w') as f:
                for key, array in (('prediction', pred), ('image', image), ('label', label)):
                    f.create_dataset(key, data=array, compression='gzip')
                f.attrs['case'] = str(case_id)
