"""Turn the raw 2018 Left Atrium Segmentation Challenge folders into the lineage's h5 layout.

    python -m importers.preprocess_la --raw_dir RAW --out_dir OUT [--seed 1337]

RAW holds one folder per case, RAW/<id>/lgemri.nrrd (the LGE-MRI volume) and
RAW/<id>/laendo.nrrd (the atrium mask, 0/255). Written: OUT/2018LA_Seg_Training Set/<id>/
mri_norm2.h5 ('image' float32, 'label' uint8 0/1, both (X,Y,Z), gzip), OUT/train.list
(every case id, sorted, or the ids of --list; --test_list also writes OUT/test.list) and OUT/dataset.json,
the recipe as data (volumes/recipe.py).
The NRRD files are read by pynrrd, an optional package (pip install pynrrd); without it the first
file read says so in one line. This is a recipe of the import pipeline (importers/volumes/).

What happens to each case is what the UA-MT lineage's la_heart_processing.py does:
  label = (laendo == 255) as uint8
  [lo, hi] = the label's bounding box (voxel indices) along x and along y
  pad      = max(min_extent - (hi - lo), 0) // 2         (min_extent 112: the training patch)
  crop     = [max(lo - m_lo - pad, 0), min(hi + m_hi + pad, size))   along x and along y,
             margins m_lo, m_hi drawn from the integers in [10, 20) (--margin 10 20);
             z is kept whole (the lineage draws z margins too but never crops z)
  image    = (image - mean) / std over the whole volume *before* cropping, then cropped: the
             distributed mri_norm2.h5 files hold exactly this (their cropped images have a mean
             of about 0.5-1.5, not 0). --zscore crop uses the cropped volume's mean and std.
Every case is brought to the orientation of the first one's lgemri.nrrd (sorted ids), flips included: the
challenge's files share one, so their arrays stay as stored, and dataset.json records it for segment.py.
Unlike the lineage (unseeded np.random, glob order), the four margins of a case come from
np.random.default_rng([seed, i]), i = the case's position in the sorted list of processed ids,
so the output is the same on every run.

CAVEAT: this preprocessing crops every volume, test volumes included, around its
ground-truth label. A model evaluated on such crops is told where the atrium is, so LA
numbers computed on them (the published ones included) are optimistic.
"""
from pathlib import Path

import numpy as np
from tqdm import tqdm

from dataloaders.datasets import LA_SUBDIR, DatasetError, read_list
from .volumes import (ReplacingDir, VolumeError, align_label, apply_steps, check_out_dir, constant_problem,
                      finite_problem, label_box, make_recipe, number_problems, read_scan, size_problem, write_case_h5,
                      write_list, write_recipe)
from utils.cli import OneLineParser, run_cli

from .volumes.args import command_line
from .volumes.orient import CANONICAL, axis_codes, to_orientation

IMAGE_FILE, LABEL_FILE = 'lgemri.nrrd', 'laendo.nrrd'
CAVEAT = ('Caveat: this preprocessing crops every volume, test volumes included, around its '
          'ground-truth label, so LA results on its output are optimistic.')


class PreprocessError(VolumeError):
    """A raw case or folder cannot be processed; the message is one line naming it."""


def la_crop_box(label, margins, min_extent=(112, 112)):
    """Slices (x, y, z) cropping x/y around the label's bounding box, z whole.

    label: (X,Y,Z) with at least one nonzero voxel. margins: (x_lo, x_hi, y_lo, y_hi) ints.
    Along axis a: start = max(lo - m_lo - pad, 0), stop = min(hi + m_hi + pad, size) with
    pad = max(min_extent_a - (hi - lo), 0) // 2 and hi the last label index, as the lineage
    wrote it (so m_hi - 1 + pad voxels follow the label, m_lo + pad precede it).
    """
    pairs = [(int(margins[0]), int(margins[1])), (int(margins[2]), int(margins[3]))]
    return label_box(label, pairs, min_extent, axes=(0, 1))


def preprocess_case(image, laendo, rng, margin=(10, 20), min_extent=(112, 112), zscore='volume',
                    name='case'):
    """One case: (image (X,Y,Z), laendo (X,Y,Z) 0/255) -> (image float32, label uint8, box).

    rng draws the four margins from the integers in [margin[0], margin[1]).
    zscore: 'volume' (the lineage: statistics of the uncropped volume) or 'crop'.
    """
    if image.ndim != 3:
        raise PreprocessError(f"{name}: {IMAGE_FILE} is {image.ndim}-D, expected 3-D")
    if image.shape != laendo.shape:
        raise PreprocessError(f"{name}: {IMAGE_FILE} is {'x'.join(map(str, image.shape))} but "
                              f"{LABEL_FILE} is {'x'.join(map(str, laendo.shape))}")
    for problem in (finite_problem(image, f"{name}: {IMAGE_FILE}"), finite_problem(laendo, f"{name}: {LABEL_FILE}"),
                    constant_problem(image, f"{name}: {IMAGE_FILE}"),
                    size_problem(image.shape, f"{name}: {IMAGE_FILE}")):
        if problem:
            raise PreprocessError(problem)
    label = (laendo == 255).astype(np.uint8)
    if not label.any():
        raise PreprocessError(f"{name}: {LABEL_FILE} has no voxel equal to 255 (the atrium)")
    box = la_crop_box(label, rng.integers(margin[0], margin[1], size=4), min_extent)
    if zscore not in ('volume', 'crop'):
        raise PreprocessError(f"zscore must be 'volume' or 'crop', got {zscore!r}")
    steps = la_recipe(margin, zscore)['intensity']
    image = apply_steps(image, steps, 'volume', name=f"{name}: {IMAGE_FILE}")[box]
    image = apply_steps(image, steps, 'crop', name=f"{name}: {IMAGE_FILE}")
    return np.ascontiguousarray(image), np.ascontiguousarray(label[box]), box


def la_recipe(margin=(10, 20), zscore='volume', command='', orientation=CANONICAL):
    """The record of this preprocessing (volumes/recipe.py): MR, the orientation of the cases (their files'
    own, read_raw_case), no resampling, the z-score on the volume or the crop, x/y cropped around the label
    (not done to a new scan), laendo's 255 as class 1."""
    steps = [{'step': 'zscore', 'voxels': 'all', 'on': zscore}]
    return make_recipe('mr', orientation, None, 1, steps, 'label', 'xy', list(margin), (1, 1, 1), (0, 255), command)


def _read_ids(path):
    try:
        return read_list(path)
    except DatasetError as e:
        raise PreprocessError(str(e)) from None


def read_raw_case(case_dir, orientation=None):
    """(image, laendo, orientation) of a case folder, both brought to `orientation` (axis codes) by the
    image's header, flips included; None: the image file's own orientation, which keeps the arrays as stored
    (the lineage indexes the stored array as (x, y, z)). The two headers are compared in world space
    (checks.align_label): a laendo.nrrd stored in another orientation of the image's box is put on the
    image's grid, one off it is refused."""
    image_path, label_path = Path(case_dir) / IMAGE_FILE, Path(case_dir) / LABEL_FILE
    image, image_affine = read_scan(image_path)
    laendo, label_affine = read_scan(label_path)
    laendo = align_label(laendo, label_affine, image.shape, image_affine, label_path, image_path)
    orientation = orientation or axis_codes(image_affine, image_path)
    (image, laendo), _, _ = to_orientation([image, laendo], image_affine, orientation, image_path)
    return image, laendo, orientation


def find_la_cases(raw_dir):
    """Sorted ids of the folders in raw_dir holding lgemri.nrrd and/or laendo.nrrd.

    A folder with only one of the two files is an error (named), folders with neither are
    not cases and are skipped.
    """
    raw_dir = Path(raw_dir)
    if not raw_dir.is_dir():
        raise PreprocessError(f"raw dir {raw_dir} does not exist or is not a folder")
    ids = []
    for folder in sorted(p for p in raw_dir.iterdir() if p.is_dir()):
        present = [(folder / f).is_file() for f in (IMAGE_FILE, LABEL_FILE)]
        if all(present):
            ids.append(folder.name)
        elif any(present):
            missing = IMAGE_FILE if not present[0] else LABEL_FILE
            raise PreprocessError(f"case {folder.name} in {raw_dir} has no {missing}")
    if not ids:
        raise PreprocessError(f"no case folders with {IMAGE_FILE} and {LABEL_FILE} in {raw_dir}")
    return ids


def preprocess_la(raw_dir, out_dir, seed=1337, margin=(10, 20), min_extent=(112, 112),
                  zscore='volume', train_ids=None, test_ids=None, progress=True, command='', overwrite=False):
    """Preprocess every case of raw_dir (or those of train_ids + test_ids) into out_dir.

    Writes out_dir/2018LA_Seg_Training Set/<id>/mri_norm2.h5, out_dir/train.list (train_ids,
    default all cases sorted) and, when test_ids is given, out_dir/test.list.
    Returns the ids processed, sorted. Raises PreprocessError (a ValueError) naming the
    case or file at fault; nrrd read errors are ValueErrors naming the file. An out_dir holding files is
    refused unless overwrite, and then replaced whole.
    """
    raw_dir, out_dir = Path(raw_dir), Path(out_dir)
    if not 0 <= margin[0] < margin[1]:
        raise PreprocessError(f"--margin must be LOW HIGH with 0 <= LOW < HIGH, got {tuple(margin)}")
    problems = (number_problems('--seed', seed, low=0, low_open=False)
                + number_problems('--min_extent', tuple(min_extent), low=0, low_open=False))
    if problems:
        raise PreprocessError(problems[0])
    check_out_dir(out_dir, overwrite)
    available = find_la_cases(raw_dir)
    train_ids = list(available) if train_ids is None else list(train_ids)
    wanted = train_ids + list(test_ids or [])
    unknown = [i for i in wanted if i not in available]
    if unknown:
        raise PreprocessError(f"case {unknown[0]} is listed but {raw_dir / unknown[0]} has no "
                              f"{IMAGE_FILE}/{LABEL_FILE} ({len(unknown)} such ids)")
    ids = sorted(set(wanted))
    # every case is written to a staging folder first: an error in the last case leaves out_dir as it was
    orientation = None  # the first case's own: the lineage's files keep their arrays, any other case comes to it
    with ReplacingDir(out_dir) as stage:
        for index, case_id in enumerate(tqdm(ids, desc='preprocess_la', unit='case', disable=not progress)):
            image, laendo, orientation = read_raw_case(raw_dir / case_id, orientation)
            image, label, _ = preprocess_case(image, laendo, np.random.default_rng([seed, index]),
                                              margin, min_extent, zscore, name=f"case {case_id}")
            write_case_h5(stage.path / LA_SUBDIR / case_id / 'mri_norm2.h5', image, label)
        write_list(stage.path / 'train.list', train_ids)
        if test_ids is not None:
            write_list(stage.path / 'test.list', test_ids)
        write_recipe(stage.path, la_recipe(margin, zscore, command, orientation))
        stage.commit()
    return ids


def main(argv=None):
    parser = OneLineParser(
        prog='python -m importers.preprocess_la',
        description='Raw 2018 LA challenge folders (<id>/lgemri.nrrd, <id>/laendo.nrrd) -> '
                    f'OUT/{LA_SUBDIR}/<id>/mri_norm2.h5 and OUT/train.list, cropped '
                    'in x/y around the label with seeded random margins as the UA-MT lineage did. '
                    + CAVEAT)
    parser.add_argument('--raw_dir', required=True, help='folder of case folders')
    parser.add_argument('--out_dir', required=True, help='output folder (LA layout)')
    parser.add_argument('--seed', type=int, default=1337, help='seeds the crop margins')
    parser.add_argument('--margin', type=int, nargs=2, default=[10, 20], metavar=('LOW', 'HIGH'),
                        help='margins drawn from the integers in [LOW, HIGH) (default 10 20)')
    parser.add_argument('--min_extent', type=int, nargs=2, default=[112, 112], metavar=('X', 'Y'),
                        help='pad the box to at least this extent before the margins (default 112 112)')
    parser.add_argument('--zscore', choices=('volume', 'crop'), default='volume',
                        help="statistics of the whole volume (the lineage's files) or of the crop")
    parser.add_argument('--list', dest='list_file', help='ids for train.list (default: all cases)')
    parser.add_argument('--test_list', help='ids for test.list (processed too)')
    parser.add_argument('--overwrite', action='store_true',
                        help='replace --out_dir whole when it holds files (an earlier import); without it, refused')
    parser.add_argument('--debug', action='store_true', help='show the traceback of an error (utils.cli.run_cli)')
    args = parser.parse_args(argv)
    try:
        train_ids = _read_ids(args.list_file) if args.list_file else None
        test_ids = _read_ids(args.test_list) if args.test_list else None
        ids = preprocess_la(args.raw_dir, args.out_dir, args.seed, tuple(args.margin),
                            tuple(args.min_extent), args.zscore, train_ids, test_ids,
                            command=command_line('importers.preprocess_la', argv), overwrite=args.overwrite)
    except MemoryError:
        raise PreprocessError(f"out of memory importing into {args.out_dir}") from None
    print(f"preprocess_la: wrote {len(ids)} cases to {Path(args.out_dir) / LA_SUBDIR}")
    print(f"preprocess_la: {CAVEAT}")
    return 0


if __name__ == '__main__':
    run_cli(main)
