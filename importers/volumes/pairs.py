"""Pair image and label files by name: the Medical Segmentation Decathlon and nnU-Net layouts.

    imagesTr/la_003.nii.gz       with labelsTr/la_003.nii.gz        (MSD)
    imagesTr/la_003_0000.nii.gz  with labelsTr/la_003.nii.gz        (nnU-Net: _0000 = channel 0)
    images/case7.nrrd            with labels/case7.nrrd
Hidden files (macOS's ._la_003.nii.gz beside MSD's files) and files of other types are not volumes.
"""
import re
from pathlib import Path

from .errors import VolumeError
from .read import SUFFIXES, scan_suffix

CHANNEL = re.compile(r'^(?P<id>.+)_(?P<channel>\d{4})$')


def volume_files(folder):
    """{case name: path} of the volume files directly in folder (name = file name without suffix)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise VolumeError(f'{folder}: folder not found')
    files = {}
    for path in sorted(folder.iterdir()):
        suffix = scan_suffix(path)
        if suffix and path.is_file() and not path.name.startswith('.'):
            files[path.name[:-len(suffix)]] = path
    if not files:
        raise VolumeError(f'{folder}: no volume files ({", ".join(SUFFIXES)}) in the folder')
    return files


def pair_files(images_dir, labels_dir):
    """({case id: (image path, label path)} sorted by id, problems: one line each).

    An image's trailing _0000 (nnU-Net's channel 0) is not part of its id; another channel
    (_0001, ...) is a problem (one channel per case), as is an image without a label or a label
    without an image.
    """
    images, labels = volume_files(images_dir), volume_files(labels_dir)
    pairs, problems, by_id = {}, [], {}
    for name, path in images.items():
        match = CHANNEL.match(name)
        if match and name not in labels:
            if match['channel'] != '0000':
                problems.append(f'{path}: channel {match["channel"]} of case {match["id"]}: only one channel '
                                'per case is imported (the _0000 files)')
                continue
            name = match['id']
        by_id[name] = path
    for case_id, path in sorted(by_id.items()):
        if case_id in labels:
            pairs[case_id] = (path, labels[case_id])
        else:
            problems.append(f'{path}: image without a label (no {case_id} with {", ".join(SUFFIXES)} in '
                            f'{labels_dir})')
    for case_id, path in sorted(labels.items()):
        if case_id not in by_id:
            problems.append(f'{path}: label without an image (no {case_id} or {case_id}_0000 in {images_dir})')
    return pairs, problems
