"""Read a CT DICOM series (a folder, searched recursively) into Hounsfield units, indexed (x, y, z).

What the lineage's Pancreas-CT recipe does (MC-Net's Pre-processing.ipynb): keep the slices whose
Modality is CT, sort them by InstanceNumber, HU = stored value x RescaleSlope + RescaleIntercept.
Here the slope and intercept are each slice's own (the lineage took the first slice's: the same on
Pancreas-CT). pydicom is optional and imported only here.
"""
from pathlib import Path

import numpy as np

from .errors import VolumeError, require
from .orient import header_precision

DECODER_PIP = 'pip install pylibjpeg pylibjpeg-libjpeg pylibjpeg-openjpeg'


def _read_headers(folder, pydicom):
    """Every DICOM file below folder, read without pixels, in path order; other files are skipped."""
    datasets = []
    for path in sorted(p for p in Path(folder).rglob('*') if p.is_file() and not p.name.startswith('.')):
        try:
            datasets.append((path, pydicom.dcmread(path, stop_before_pixels=True)))
        except pydicom.errors.InvalidDicomError:
            continue  # a README, a checksum or a DICOMDIR-less index is not a slice
        except Exception as err:  # noqa: BLE001 -- a truncated file raises EOFError, ValueError, ...
            raise VolumeError(f'{path}: cannot read DICOM header: {" ".join(str(err).split())}') from None
    return datasets


def _hu_slice(path, pydicom):
    """(rows, cols) float32 HU of one slice; a compressed syntax without a decoder is one line."""
    ds = pydicom.dcmread(path)
    try:
        pixels = ds.pixel_array
    except Exception as err:  # noqa: BLE001 -- pydicom's decoders raise RuntimeError, NotImplementedError, ...
        meta = getattr(ds, 'file_meta', None)
        syntax = meta.get('TransferSyntaxUID') if meta is not None else None
        if syntax is not None and syntax.is_compressed:
            raise VolumeError(f'{path}: pixel data are compressed ({syntax.name}, {syntax}) and no installed '
                              f'decoder reads them: {DECODER_PIP} (or convert the series to NIfTI)') from None
        raise VolumeError(f'{path}: cannot decode pixel data: {" ".join(str(err).split())}') from None
    slope = float(ds.get('RescaleSlope', 1.0))
    intercept = float(ds.get('RescaleIntercept', 0.0))
    return pixels.astype(np.float32) * np.float32(slope) + np.float32(intercept)


def _slice_gap(first, second):
    """Distance in mm between two slices: ImagePositionPatient, else SliceLocation, else SliceThickness."""
    for key in ('ImagePositionPatient', 'SliceLocation'):
        if key in first and key in second:
            gap = float(np.linalg.norm(np.subtract(np.ravel(first.get(key)), np.ravel(second.get(key)))))
            if gap > 0:
                return gap
    return float(first.get('SliceThickness', 1.0) or 1.0)


def _affine(first, second, spacing):
    """4x4 affine in RAS mm of the (x = column, y = row, z = slice) array: ImageOrientationPatient's row
    and column directions, the slice direction from the first two ImagePositionPatient (else their
    cross product), the first slice's position; DICOM's LPS patient space turned to RAS (x and y negated).
    Without ImageOrientationPatient: the diagonal of the spacing."""
    affine = np.diag([*spacing, 1.0])
    orientation = first.get('ImageOrientationPatient')
    if orientation is None or len(orientation) != 6:
        return affine
    along_x, along_y = np.array(orientation[:3], dtype=float), np.array(orientation[3:], dtype=float)
    along_z = np.cross(along_x, along_y)
    if second is not None and 'ImagePositionPatient' in first and 'ImagePositionPatient' in second:
        step = np.subtract(np.ravel(second.ImagePositionPatient), np.ravel(first.ImagePositionPatient)).astype(float)
        if np.linalg.norm(step) > 0:  # slices sorted by InstanceNumber may run against the normal
            along_z = step / np.linalg.norm(step)
    affine[:3, :3] = np.stack([along_x, along_y, along_z], axis=1) * np.asarray(spacing, dtype=float)
    affine[:3, 3] = np.ravel(first.get('ImagePositionPatient', (0.0, 0.0, 0.0))).astype(float)
    return np.diag([-1.0, -1.0, 1.0, 1.0]) @ affine


def read_ct_scan(folder):
    """(HU float32 (X,Y,Z) = (columns, rows, slices by InstanceNumber), spacing (x, y, z) in mm
    (orient.header_precision), 4x4 affine in RAS mm (_affine)).

    Raises VolumeError naming the folder or file: no DICOM file, no CT slice, a slice without
    InstanceNumber, slices of different sizes, compressed pixel data without a decoder.
    """
    pydicom = require('pydicom', 'pydicom', folder, 'DICOM')
    folder = Path(folder)
    if not folder.is_dir():
        raise VolumeError(f'{folder}: DICOM series folder not found')
    datasets = _read_headers(folder, pydicom)
    if not datasets:
        raise VolumeError(f'{folder}: no DICOM file in the folder')
    slices = [(p, ds) for p, ds in datasets if ds.get('Modality') == 'CT']
    if not slices:
        found = sorted({str(ds.get('Modality', 'none')) for _, ds in datasets})
        raise VolumeError(f'{folder}: no CT slice among its {len(datasets)} DICOM files (Modality '
                          f'{", ".join(found)}); only CT series are read')
    missing = [p for p, ds in slices if 'InstanceNumber' not in ds]
    if missing:
        raise VolumeError(f'{missing[0]}: CT slice without InstanceNumber, cannot order the series')
    slices.sort(key=lambda item: int(item[1].InstanceNumber))
    sizes = {(int(ds.Rows), int(ds.Columns)) for _, ds in slices}
    if len(sizes) > 1:
        raise VolumeError(f'{folder}: slices of different sizes {sorted(sizes)}')
    stack = np.stack([_hu_slice(p, pydicom) for p, _ in slices], axis=-1)  # (rows, cols, slices)
    first, second = slices[0][1], slices[1][1] if len(slices) > 1 else None
    row_mm, col_mm = (float(v) for v in first.get('PixelSpacing', (1.0, 1.0)))
    z_mm = _slice_gap(first, second) if second is not None else float(first.get('SliceThickness', 1.0) or 1.0)
    # rows run along y and columns along x: (rows, cols, z) -> (x, y, z)
    spacing = header_precision((col_mm, row_mm, z_mm))
    return np.ascontiguousarray(stack.transpose(1, 0, 2)), spacing, _affine(first, second, spacing)


def read_ct_series(folder):
    """(HU float32 (X,Y,Z), spacing (x, y, z) in mm): read_ct_scan without the affine."""
    return read_ct_scan(folder)[:2]
