"""Datasets of 3D volumes stored one case per HDF5 file ('image' and 'label'), listed in a text file.

Layouts accepted (list = '<split>.list', one case id per line):
  (a) base_dir/<split>.list and base_dir/<subdir>/<id>/mri_norm2.h5   (LA as distributed)
  (b) base_dir/<split>.list and base_dir/<id>/mri_norm2.h5            (lists inside the h5 folder)
  (c) base_dir/../<split>.list and base_dir/<id>/mri_norm2.h5         (lists one level up)
The file name inside the h5 folder comes from `pattern` ('{id}/mri_norm2.h5' for LA, '{id}_norm.h5'
for Pancreas-NIH), so one code path serves every dataset; <subdir> is used only when it exists.

A sample is {'image': float32 (X,Y,Z), 'label': integer (X,Y,Z)}, then transform(sample, rng).
Every problem with the data (missing file, corrupt HDF5, wrong keys, shapes, NaN, labels out of range)
is raised as DatasetError with a one-line message naming the file.
"""
from pathlib import Path, PurePosixPath, PureWindowsPath

import h5py
import numpy as np
from torch.utils.data import Dataset

LA_SUBDIR = '2018LA_Seg_Training Set'
LA_PATTERN = '{id}/mri_norm2.h5'
# A corrupted header can claim an absurd shape; refuse before h5py tries to allocate it.
MAX_VOXELS = 2 ** 30


class DatasetError(ValueError):
    """A dataset folder, list file or case file is unusable; the message is one line naming it."""
    user_error = True  # utils.cli.run_cli prints the message as one line, no traceback


def _one_line(text):
    return ' '.join(str(text).split())


# ----------------------------------------------------------------------------------------------
# list files and layout

def check_case_id(case_id, where='list'):
    """Reject ids that could point outside the data folder ('..', separators, absolute, control chars)."""
    bad = (not case_id or '..' in case_id or '/' in case_id or '\\' in case_id
           or any(ord(ch) < 32 or ord(ch) == 127 for ch in case_id)
           or PurePosixPath(case_id).is_absolute() or PureWindowsPath(case_id).anchor)
    if bad:
        raise DatasetError(f'{where}: unsafe case id {case_id!r} (ids are plain names inside the data folder)')
    return case_id


def read_list(path):
    """Case ids of a list file, in order; blank lines and surrounding whitespace are ignored."""
    path = Path(path)
    if not path.is_file():
        raise DatasetError(f'list file not found: {path}')
    try:
        text = path.read_text(encoding='utf-8')
    except UnicodeDecodeError:
        raise DatasetError(f'list file {path} is not UTF-8 text') from None
    except OSError as e:
        raise DatasetError(f'cannot read list file {path}: {_one_line(e.strerror or e)}') from None
    ids = []
    for lineno, line in enumerate(text.splitlines(), 1):
        case_id = line.strip()
        if case_id:
            ids.append(check_case_id(case_id, where=f'{path} line {lineno}'))
    if not ids:
        raise DatasetError(f'list file {path} lists no case ids')
    return ids


def resolve_layout(base_dir, split='train', list_file=None, subdir=None):
    """Find (h5 folder, list file) for one of the layouts (a), (b), (c) of the module docstring."""
    base_dir = Path(base_dir)
    if not base_dir.is_dir():
        raise DatasetError(f'dataset folder not found: {base_dir}')
    data_dir = base_dir / subdir if subdir and (base_dir / subdir).is_dir() else base_dir
    if list_file is not None:
        return data_dir, Path(list_file)
    candidates = [base_dir / f'{split}.list', base_dir.parent / f'{split}.list']
    for candidate in candidates:
        if candidate.is_file():
            return data_dir, candidate
    raise DatasetError(f'no {split}.list in {base_dir} or its parent folder (pass list_file / --list_file)')


# ----------------------------------------------------------------------------------------------
# reading and validating one case

def inspect_case(path, num_classes=None):
    """Read one case file read-only and check it.

    Returns (image float32 (X,Y,Z) or None, label integer (X,Y,Z) or None, problems: list of str).
    The arrays are returned only when there is no problem. Never raises for bad data.
    """
    path = Path(path)
    if not path.is_file():
        return None, None, ['file not found' if not path.exists() else 'not a regular file']
    try:
        with h5py.File(path, 'r') as f:
            problems = []
            arrays = {}
            for key in ('image', 'label'):
                if key not in f:
                    found = ', '.join(sorted(f.keys())) or 'nothing'
                    problems.append(f"missing dataset '{key}' (found: {found})")
                elif isinstance(f.get(key, getlink=True), h5py.ExternalLink):
                    problems.append(f"'{key}' is a link to another file, not an array stored in this file")
                elif not isinstance(f[key], h5py.Dataset):
                    problems.append(f"'{key}' is a group, not an array")
                else:
                    arrays[key] = f[key]
            for key, ds in arrays.items():
                if ds.dtype.kind not in 'biuf':
                    problems.append(f"'{key}' has dtype {ds.dtype}, expected numbers")
                if len(ds.shape) != 3:
                    # a label of another shape than a 3-D image is reported once, as a shape mismatch
                    if key == 'image' or 'image' not in arrays:
                        problems.append(f"'{key}' is {len(ds.shape)}-D with shape {ds.shape}, "
                                        'expected 3-D (X,Y,Z)')
                elif 0 in ds.shape or ds.size > MAX_VOXELS:
                    problems.append(f"'{key}' has unusable shape {ds.shape}")
            if len(arrays) == 2 and len(arrays['image'].shape) == 3:
                image_shape, label_shape = arrays['image'].shape, arrays['label'].shape
                if image_shape != label_shape:
                    problems.append(f'image shape {image_shape} differs from label shape {label_shape}')
            if problems:
                return None, None, problems
            image = arrays['image'][()]
            label = arrays['label'][()]
    except Exception as e:  # noqa: BLE001 -- h5py reports corrupt files with many exception types
        return None, None, [f'cannot read as HDF5 ({type(e).__name__}: {_one_line(e)})']

    problems = []
    with np.errstate(over='ignore'):  # float64 beyond float32's range becomes Inf, reported just below
        image = image.astype(np.float32, copy=False)
    if not np.isfinite(image).all():
        n_nan, n_inf = int(np.isnan(image).sum()), int(np.isinf(image).sum())
        problems.append(f'image has {n_nan} NaN and {n_inf} Inf voxels')
    if label.dtype.kind == 'b':
        label = label.astype(np.uint8)
    elif label.dtype.kind == 'f':
        if not np.isfinite(label).all() or (label != np.round(label)).any():
            problems.append(f'label has non-integer values (dtype {label.dtype}); labels must be class indices')
            return None, None, problems
    low, high = label.min(), label.max()
    if low < 0 or high > np.iinfo(np.int32).max:
        problems.append(f'label values span {low:g}..{high:g}; labels must be class indices 0, 1, ...')
    elif num_classes is not None and high > num_classes - 1:
        problems.append(f'label has value {high:g}, outside 0..{num_classes - 1} for num_classes={num_classes}')
    if problems:
        return None, None, problems
    if label.dtype.kind == 'f':
        label = label.astype(np.int64)
    return image, label, []


def read_case(path, num_classes=None):
    """(image float32 (X,Y,Z), label integer (X,Y,Z)) of one case file; DatasetError on the first problem."""
    image, label, problems = inspect_case(path, num_classes)
    if problems:
        raise DatasetError(f'{path}: {problems[0]}')
    return image, label


def validate_case(path, num_classes=None):
    """Raise DatasetError naming the file if the case is unusable; return None otherwise."""
    read_case(path, num_classes)


# ----------------------------------------------------------------------------------------------
# datasets

class H5Dataset(Dataset):
    """Any folder of per-case .h5 volumes with a list file; any number of classes.

    dataset[key]: key = index, or (index, seed, iteration) so the sample's randomness comes from
    np.random.default_rng([seed, iteration, index]) -- the same crop for any num_workers and on resume.
    num keeps the first `num` ids (the labeled set is the first labelnum ids of train.list).
    num_classes, when given, makes every read check labels lie in 0..num_classes-1.
    subdir: the h5 folder inside base_dir when that folder exists (layout (a)); LA's by default, so
    a plain H5Dataset reads the LA folder as distributed. subdir=None: the h5 files are in base_dir.
    """

    def __init__(self, base_dir, split='train', num=None, transform=None, list_file=None,
                 pattern=LA_PATTERN, num_classes=None, subdir=LA_SUBDIR):
        if '{id}' not in pattern or '..' in pattern or Path(pattern).is_absolute():
            raise DatasetError(f"pattern {pattern!r} must be a relative file name containing '{{id}}'")
        self.data_dir, self.list_file = resolve_layout(base_dir, split, list_file, subdir)
        ids = read_list(self.list_file)
        if num is not None:
            if not 1 <= num <= len(ids):
                raise DatasetError(f'num={num} but {self.list_file} lists {len(ids)} ids')
            ids = ids[:num]
        self.ids = ids
        self.pattern = pattern
        self.transform = transform
        self.num_classes = num_classes

    def __len__(self):
        return len(self.ids)

    def case_path(self, i):
        return self.data_dir / self.pattern.format(id=self.ids[i])

    def __getitem__(self, key):
        if isinstance(key, tuple):
            index, seed, iteration = (int(k) for k in key)
            rng = np.random.default_rng([seed, iteration, index])
        else:
            index, rng = int(key), np.random.default_rng()
        if not -len(self) <= index < len(self):
            raise IndexError(f'index {index} out of range for {len(self)} cases')
        image, label = read_case(self.case_path(index), self.num_classes)
        sample = {'image': image, 'label': label}
        if self.transform is not None:
            sample = self.transform(sample, rng)
        return sample

    def validate(self, num_classes=None):
        """Read every case once; raise DatasetError on the first unusable one (run before training)."""
        num_classes = self.num_classes if num_classes is None else num_classes
        for i in range(len(self)):
            validate_case(self.case_path(i), num_classes)

    def __repr__(self):
        return (f'{type(self).__name__}({len(self)} cases from {self.list_file}, '
                f'files {self.data_dir / self.pattern})')


class LAHeart(H5Dataset):
    """2018 Left Atrium challenge, preprocessed as in the UA-MT lineage: <id>/mri_norm2.h5."""

    def __init__(self, base_dir, split='train', num=None, transform=None, list_file=None, num_classes=None):
        super().__init__(base_dir, split=split, num=num, transform=transform, list_file=list_file,
                         pattern=LA_PATTERN, num_classes=num_classes, subdir=LA_SUBDIR)
