"""Read one CT DICOM series (a folder, searched recursively) into Hounsfield units, indexed (x, y, z).

What the lineage's Pancreas-CT recipe does (MC-Net's Pre-processing.ipynb): keep the slices whose
Modality is CT, stack them by InstanceNumber, HU = stored value x RescaleSlope + RescaleIntercept.
Here the slope and intercept are each slice's own (the lineage took the first slice's: the same on
Pancreas-CT), and the series is checked before it is stacked, because a folder of files is easy to get
wrong and the stack looks plausible either way:
  - slices are grouped by SeriesInstanceUID: a folder with several CT series is refused, listing them,
    unless `series` names one (--series UID); series of other modalities beside it are left alone;
  - slices are sorted by their position along the normal of their planes (ImagePositionPatient on the
    cross product of ImageOrientationPatient's two directions), not by InstanceNumber or file name; the
    stack runs the way InstanceNumber runs, the lineage's voxel order;
  - refused: fewer than MIN_SLICES slices, two slices at one position (0.01 mm apart or less), an
    increment that exceeds the smallest by more than slice_tolerance (a missing slice), slices shifted
    across their planes (a gantry-tilted series), mixed orientations, sizes or pixel spacings, missing, NaN
    or degenerate geometry (zero spacing, orientation vectors that are not orthogonal unit vectors);
  - a DICOM file that cannot be read, or lacks what every DICOM object has, is named, never skipped.
pydicom is optional and imported only here (docs/data.md says why not SimpleITK).
"""
from pathlib import Path

import numpy as np

from .errors import VolumeError, require
from .orient import header_precision

DECODER_PIP = 'pip install pylibjpeg pylibjpeg-libjpeg pylibjpeg-openjpeg'
MIN_SLICES = 3        # fewer cannot show a missing slice, and are no volume to segment
MEDIA_DIRECTORY = '1.2.840.10008.1.3.10'  # a DICOMDIR: an index of the files, not an image
# Written as decimal strings, the same direction may differ in the last digits from slice to slice.
ORIENTATION_TOLERANCE = 1e-3
SPACING_TOLERANCE = 1e-4  # mm: PixelSpacing of two slices of one series


def slice_tolerance(spacing):
    """mm by which a slice increment may exceed the smallest one: 1 % of the spacing, at least 0.02 mm
    (positions are decimal strings in mm, often rounded to 0.01 mm: two increments then differ by up to
    0.02 mm)."""
    return max(0.02, 0.01 * abs(spacing))


def _one_line(err):
    return " ".join(str(err).split())


def _joined(values):
    """A multi-valued DICOM element as DICOM writes it: 1\\0\\0."""
    return '\\'.join(f'{v:g}' for v in values)


def _has_preamble(path):
    """Whether the file holds 'DICM' after its 128-byte preamble: a DICOM Part 10 file."""
    with open(path, 'rb') as f:
        return f.read(132)[128:] == b'DICM'


def _read_headers(folder, pydicom):
    """(path, dataset without pixels) of every DICOM file below folder, in path order. Other files (a
    README, checksums) are skipped; a DICOM file that does not parse, or parses without Modality and
    SeriesInstanceUID (pydicom reads a truncated header as far as it goes), is named."""
    datasets = []
    for path in sorted(p for p in Path(folder).rglob('*') if p.is_file() and not p.name.startswith('.')):
        try:
            ds = pydicom.dcmread(path, stop_before_pixels=True)
        except pydicom.errors.InvalidDicomError:
            if path.suffix.lower() == '.dcm' or _has_preamble(path):
                raise VolumeError(f'{path}: damaged DICOM file: no DICOM header could be read') from None
            continue
        except Exception as err:  # noqa: BLE001 -- a damaged file raises EOFError, ValueError, ...
            raise VolumeError(f'{path}: damaged DICOM file: {_one_line(err)}') from None
        meta = getattr(ds, 'file_meta', None)
        if meta is not None and meta.get('MediaStorageSOPClassUID') == MEDIA_DIRECTORY:
            continue
        missing = [key for key in ('Modality', 'SeriesInstanceUID') if key not in ds]
        if missing:
            raise VolumeError(f'{path}: damaged DICOM file: no {" and no ".join(missing)} (truncated?)')
        datasets.append((path, ds))
    return datasets


def _describe(uid, slices):
    """'UID (CT, 512x512x120 voxels, "ABDOMEN 2.5mm")', columns x rows x slices: how a series is listed."""
    ds = slices[0][1]
    description = str(ds.get('SeriesDescription', '')).strip()
    return (f'{uid} ({ds.get("Modality")}, {ds.get("Columns", "?")}x{ds.get("Rows", "?")}x{len(slices)} voxels'
            + (f', "{description}"' if description else '') + ')')


def _choose_series(folder, datasets, series):
    """The (path, dataset) slices of the one series to read (module docstring).

    series: None, a SeriesInstanceUID, or a collection of them (preprocess_pancreas's --series, one
    per case that needs it). A UID (str) must be in the folder; of a collection, the folder's series it
    names is read, and a folder it names none of is read as if series were None.
    """
    groups = {}
    for path, ds in datasets:
        groups.setdefault(str(ds.SeriesInstanceUID), []).append((path, ds))
    ct = {uid: slices for uid, slices in groups.items() if slices[0][1].Modality == 'CT'}
    listing = '; '.join(_describe(uid, slices) for uid, slices in (ct or groups).items())
    if series is not None:
        wanted = {series} if isinstance(series, str) else set(series)
        named = [uid for uid in groups if uid in wanted]
        if len(named) > 1:
            raise VolumeError(f'{folder}: --series names {len(named)} of its series ({", ".join(named)}); '
                              'name one')
        if named:
            slices = groups[named[0]]
            if slices[0][1].Modality != 'CT':
                raise VolumeError(f'{folder}: --series {named[0]} is {_describe(named[0], slices)}; only CT '
                                  'series are read')
            return slices
        if isinstance(series, str):
            raise VolumeError(f'{folder}: no series {series} (--series) in the folder; its '
                              f'{"CT " if ct else ""}series: {listing}')
    if not ct:
        found = sorted({str(ds.Modality) for _, ds in datasets})
        raise VolumeError(f'{folder}: no CT slice among its {len(datasets)} DICOM files (Modality '
                          f'{", ".join(found)}); only CT series are read')
    if len(ct) > 1:
        raise VolumeError(f'{folder}: holds {len(ct)} CT series, choose one with --series UID: {listing}')
    return next(iter(ct.values()))


def _numbers(ds, key, count, path):
    """The `count` finite floats of ds's key, else VolumeError naming the file."""
    value = ds.get(key)
    try:
        numbers = np.array([float(v) for v in value], dtype=float) if value is not None else None
    except (TypeError, ValueError):
        numbers = None
    if numbers is None or numbers.shape != (count,) or not np.isfinite(numbers).all():
        found = 'missing' if value is None else f'{value}'
        raise VolumeError(f'{path}: {key} is {found}, expected {count} finite numbers: cannot place the slice')
    return numbers


def _plane(path, ds):
    """(rows, columns, (row spacing, column spacing) mm, 6 orientation numbers, position mm) of one slice."""
    spacing = _numbers(ds, 'PixelSpacing', 2, path)
    if (spacing <= 0).any():
        raise VolumeError(f'{path}: PixelSpacing {_joined(spacing)} mm is not positive')
    orientation = _numbers(ds, 'ImageOrientationPatient', 6, path)
    along_x, along_y = orientation[:3], orientation[3:]
    if (abs(np.linalg.norm(along_x) - 1) > ORIENTATION_TOLERANCE or abs(np.linalg.norm(along_y) - 1)
            > ORIENTATION_TOLERANCE or abs(along_x @ along_y) > ORIENTATION_TOLERANCE):
        raise VolumeError(f'{path}: ImageOrientationPatient {_joined(orientation)} is not '
                          'two orthogonal unit vectors')
    if 'Rows' not in ds or 'Columns' not in ds:
        raise VolumeError(f'{path}: CT slice without Rows or Columns')
    return int(ds.Rows), int(ds.Columns), spacing, orientation, _numbers(ds, 'ImagePositionPatient', 3, path)


def _stack_order(folder, slices):
    """(slices in stack order, signed step along the normal in mm, normal, row spacing, column spacing):
    the checks of the module docstring, each refusal one line naming the folder or a file."""
    if len(slices) < MIN_SLICES:
        raise VolumeError(f'{folder}: the CT series has {len(slices)} slice{"s" if len(slices) != 1 else ""}; '
                          f'at least {MIN_SLICES} make a volume')
    planes = [_plane(path, ds) for path, ds in slices]
    rows, columns, pixel_mm, orientation, _ = planes[0]
    for (path, _), (r, c, mm, o, _) in zip(slices, planes):
        if (r, c) != (rows, columns):
            raise VolumeError(f'{folder}: slices of different sizes: {path.name} is {r}x{c}, '
                              f'{slices[0][0].name} {rows}x{columns}')
        if np.abs(mm - pixel_mm).max() > SPACING_TOLERANCE:
            raise VolumeError(f'{folder}: slices of different PixelSpacing: {path.name} '
                              f'{_joined(mm)} mm, {slices[0][0].name} {_joined(pixel_mm)} mm')
        if np.abs(o - orientation).max() > ORIENTATION_TOLERANCE:
            raise VolumeError(f'{folder}: slices of different orientations: {path.name} {_joined(o)}, '
                              f'{slices[0][0].name} {_joined(orientation)}')
    normal = np.cross(orientation[:3] / np.linalg.norm(orientation[:3]),
                      orientation[3:] / np.linalg.norm(orientation[3:]))
    normal /= np.linalg.norm(normal)
    positions = np.array([plane[4] for plane in planes])
    along = positions @ normal
    order = np.argsort(along, kind='stable')
    names = [slices[i][0].name for i in order]
    steps = np.diff(along[order])
    for i in np.flatnonzero(steps <= 0.01)[:1]:
        raise VolumeError(f'{folder}: two slices at one position ({along[order][i]:g} mm along the normal): '
                          f'{names[i]} and {names[i + 1]}')
    spacing = float(steps.min())  # a missing slice makes one increment larger, never smaller
    for i in np.flatnonzero(np.abs(steps - spacing) > slice_tolerance(spacing))[:1]:
        raise VolumeError(f'{folder}: slices {names[i]} and {names[i + 1]} are {steps[i]:g} mm apart but the '
                          f'series\' spacing is {spacing:g} mm (a missing slice?); increments may differ by '
                          f'{slice_tolerance(spacing):g} mm')
    across = positions[order] - np.outer(along[order], normal)
    shift = float(np.linalg.norm(across - across[0], axis=1).max())
    if shift > slice_tolerance(spacing):
        raise VolumeError(f'{folder}: slices shift by up to {shift:g} mm across their planes from one to the next '
                          '(a gantry-tilted series): not read as a volume; resample it to an orthogonal grid first')
    ordered = [slices[i] for i in order]
    numbers = [ds.get('InstanceNumber') for _, ds in ordered]
    step = (along[order][-1] - along[order][0]) / (len(order) - 1)
    if None not in numbers and int(numbers[0]) > int(numbers[-1]):  # the lineage stacks by InstanceNumber
        ordered, step = ordered[::-1], -step
    return ordered, step, normal, pixel_mm, orientation


def _hu_slice(path, pydicom):
    """(rows, cols) float32 HU of one slice; a compressed syntax without a decoder is one line."""
    try:
        ds = pydicom.dcmread(path)
    except Exception as err:  # noqa: BLE001 -- its header was read: the file changed or is cut in its pixels
        raise VolumeError(f'{path}: damaged DICOM file: {_one_line(err)}') from None
    try:
        pixels = ds.pixel_array
    except Exception as err:  # noqa: BLE001 -- pydicom's decoders raise RuntimeError, NotImplementedError, ...
        meta = getattr(ds, 'file_meta', None)
        syntax = meta.get('TransferSyntaxUID') if meta is not None else None
        if syntax is not None and syntax.is_compressed:
            raise VolumeError(f'{path}: pixel data are compressed ({syntax.name}, {syntax}) and no installed '
                              f'decoder reads them: {DECODER_PIP} (or convert the series to NIfTI)') from None
        raise VolumeError(f'{path}: damaged DICOM file: cannot decode pixel data: {_one_line(err)}') from None
    slope = float(ds.get('RescaleSlope', 1.0))
    intercept = float(ds.get('RescaleIntercept', 0.0))
    return pixels.astype(np.float32) * np.float32(slope) + np.float32(intercept)


def read_ct_scan(folder, series=None):
    """(HU float32 (X,Y,Z) = (columns, rows, slices along the normal), spacing (x, y, z) in mm
    (orient.header_precision), 4x4 affine in RAS mm: ImageOrientationPatient's row and column directions
    and the normal, the first slice's ImagePositionPatient, DICOM's LPS patient space turned to RAS).

    series: which series to read when the folder holds several CT series (_choose_series). Raises
    VolumeError, one line naming the folder or file, for everything the module docstring refuses.
    """
    pydicom = require('pydicom', 'pydicom', folder, 'DICOM')
    folder = Path(folder)
    if not folder.is_dir():
        raise VolumeError(f'{folder}: DICOM series folder not found')
    datasets = _read_headers(folder, pydicom)
    if not datasets:
        raise VolumeError(f'{folder}: no DICOM file in the folder')
    slices, step, normal, (row_mm, col_mm), orientation = _stack_order(folder, _choose_series(folder, datasets,
                                                                                               series))
    # slices first, each written whole: stacking along a last axis of 512x512 slices took 5x longer
    stack = np.empty((len(slices), int(slices[0][1].Rows), int(slices[0][1].Columns)), dtype=np.float32)
    for k, (path, _) in enumerate(slices):
        stack[k] = _hu_slice(path, pydicom)
    # rows run along y and columns along x: (z, rows, cols) -> (x, y, z)
    spacing = header_precision((col_mm, row_mm, abs(step)))
    affine = np.eye(4)
    affine[:3, :3] = np.stack([orientation[:3], orientation[3:], normal * np.sign(step)], axis=1) * spacing
    affine[:3, 3] = np.array([float(v) for v in slices[0][1].ImagePositionPatient])
    return np.ascontiguousarray(stack.transpose(2, 1, 0)), spacing, np.diag([-1.0, -1.0, 1.0, 1.0]) @ affine


def read_ct_series(folder, series=None):
    """(HU float32 (X,Y,Z), spacing (x, y, z) in mm): read_ct_scan without the affine."""
    return read_ct_scan(folder, series)[:2]
