"""Volume files written by the tests themselves: NIfTI (nibabel), NRRD (pynrrd), a CT DICOM series (pydicom).

Each writer imports its optional package through conftest.require_extra: a test without it skips,
except under CI=true where it fails.
"""
from pathlib import Path

import numpy as np

from conftest import require_extra


def write_nifti(path, array, spacing=(1.0, 1.0, 1.0), affine=None):
    """array stored as (x, y, z) with a diagonal affine of `spacing` mm (or the given affine)."""
    nib = require_extra('nibabel')
    affine = np.diag(list(spacing) + [1.0]) if affine is None else affine
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(np.asarray(array), affine), str(path))
    return path


def write_nrrd(path, array, spacing=(1.0, 1.0, 1.0)):
    nrrd = require_extra('nrrd')
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    nrrd.write(str(path), np.asarray(array), header={'encoding': 'gzip', 'space': 'left-posterior-superior',
                                                      'space directions': np.diag(spacing).tolist()})
    return path


def write_ct_series(folder, stored, slope=1.0, intercept=-1024.0, pixel_mm=(0.7, 0.7), slice_mm=2.5,
                    modality='CT', syntax=None, order=None, series_uid=None, description=None, edit=None):
    """One DICOM file per slice of stored (x, y, z) int16 values: rows = y, columns = x, InstanceNumber
    z + 1, axial (ImageOrientationPatient 1,0,0,0,1,0) at ImagePositionPatient (0, 0, z x slice_mm). Files
    are named so that their name order is `order` (default reversed; leave a z out for a missing slice):
    reading must not go by name. syntax: a compressed transfer syntax UID, whose pixel data are fake.
    series_uid, description: SeriesInstanceUID (default a new one) and SeriesDescription. edit(z, ds):
    called on each slice's dataset before it is saved, to break one."""
    require_extra('pydicom')  # skips without it, fails under CI=true
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.encaps import encapsulate
    from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    depth = stored.shape[2]
    order = list(reversed(range(depth))) if order is None else order
    series = series_uid or generate_uid()
    for position, z in enumerate(order):
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = CTImageStorage
        meta.MediaStorageSOPInstanceUID = generate_uid()
        meta.TransferSyntaxUID = syntax or ExplicitVRLittleEndian
        ds = Dataset()
        ds.file_meta = meta
        ds.SOPClassUID, ds.SOPInstanceUID = CTImageStorage, meta.MediaStorageSOPInstanceUID
        ds.SeriesInstanceUID = series
        if description is not None:
            ds.SeriesDescription = description
        ds.Modality = modality
        ds.InstanceNumber = z + 1
        ds.Rows, ds.Columns = stored.shape[1], stored.shape[0]
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, 'MONOCHROME2'
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
        ds.RescaleSlope, ds.RescaleIntercept = slope, intercept
        ds.PixelSpacing = [pixel_mm[1], pixel_mm[0]]  # row spacing (along y), column spacing (along x)
        ds.ImageOrientationPatient = [1.0, 0.0, 0.0, 0.0, 1.0, 0.0]
        ds.ImagePositionPatient = [0.0, 0.0, z * slice_mm]
        ds.SliceThickness = slice_mm
        if syntax is None:
            ds.PixelData = np.ascontiguousarray(stored[:, :, z].T.astype('<i2')).tobytes()  # (rows, cols)
        else:
            ds.PixelData = encapsulate([b'\xff\xd8 not really compressed \xff\xd9'])
            ds['PixelData'].VR = 'OB'
        if edit is not None:
            edit(z, ds)
        ds.save_as(folder / f'slice{position:03d}.dcm', enforce_file_format=True)
    return folder
