"""NIH Pancreas-CT from its download (TCIA DICOM series + NIH label NIfTI) to the lineage's h5 files.

    python -m importers.preprocess_pancreas --dicom_dir Pancreas-CT --label_dir TCIA_pancreas_labels-02-05-2017 \\
        --out_dir data/Pancreas [--recipe mcnet|coranet]
    python -m importers.preprocess_pancreas --nifti_dir images --label_dir labels --out_dir data/Pancreas

Cases: label{NNNN}.nii.gz in --label_dir (searched recursively) with the DICOM folder PANCREAS_{NNNN} below
--dicom_dir, or image{NNNN}.nii.gz / PANCREAS_{NNNN}.nii.gz in --nifti_dir. The label gives the geometry:
its voxel order and spacing are the image's (MC-Net stacks the slices by InstanceNumber and gives them
the label's header); every case is brought to the orientation of the first label file (flips included), so
the lineage's cases keep their arrays and one stored another way joins them. Written:
OUT/image{NNNN}_norm.h5 ('image' float32, 'label' uint8 0/1, (X,Y,Z), gzip),
what `python train.py --dataset pancreas` reads, and the lineage's lists (pancreas_lists.py):
OUT/mcnet_train.list, mcnet_test.list (62/20), coranet_train.list (12 labeled then 50 unlabeled),
coranet_test.list (18), and train.list/test.list, a copy of the --lists set (default: the recipe's), and
OUT/dataset.json, the recipe as data (volumes/recipe.py), whose intensity steps each case goes through.

Recipes (HU window [-125, 275] -> [0, 1] in both, after resampling to 1 x 1 x 1 mm, image linear
(--order 3: cubic) and label nearest):
  mcnet    crop x and y to the label's box + 25 voxels each side (at least 96), z whole; z-score the crop.
           MC-Net's Pre-processing.ipynb (its resampling is SimpleITK's B-spline, --order 3 here).
  coranet  crop x, y and z to the label's box + 25 voxels (at least 96); no z-score. CoraNet also sets
           every spacing to the in-plane one before resampling, so its z is scaled by the wrong factor:
           not reproduced, z is resampled with the true slice spacing.
Both pad a crop smaller than 96 voxels (a volume smaller than the patch) with the crop's minimum.
Cases 0025 and 0070 are duplicate scans: a warning names them; MC-Net's lists keep them, CoraNet's not.

CAVEAT: both recipes crop every volume, test volumes included, around its ground-truth label, as the
lineage did: a model evaluated on these crops is told where the pancreas is, so its scores are optimistic.
"""
import re
from pathlib import Path

import numpy as np
from tqdm import tqdm

from .pancreas_lists import DUPLICATES, LIST_SETS
from .volumes import (ProblemList, ReplacingDir, VolumeError, apply_steps, check_out_dir, constant_problem,
                      finite_problem, label_box, make_recipe, number_problems, pad_to, read_ct_series, read_scan,
                      read_with_spacing, resample_pair, size_problem, write_case_h5, write_list, write_recipe)
from utils.cli import OneLineParser, run_cli

from .volumes.args import command_line, numbers
from .volumes.checks import geometry_difference
from .volumes.orient import CANONICAL, axis_codes, axis_spacing, to_orientation

PROG = 'preprocess_pancreas'
WINDOW = (-125.0, 275.0)  # HU: level 75, width 400
MARGIN = 25               # voxels around the label's box
PATCH = 96                # the lineage's Pancreas patch: every crop is at least this big
# recipe -> (cropped axes, z-score the crop)
RECIPES = {'mcnet': ((0, 1), True), 'coranet': ((0, 1, 2), False)}
CAVEAT = ('Caveat: the lineage\'s Pancreas recipes crop every volume, test volumes included, around its '
          'ground-truth label, so results on this output are optimistic.')


def case_files(folder, pattern, want_dirs):
    """{NNNN: path} of the files (or folders) below folder whose name matches pattern (group 1 = NNNN)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise VolumeError(f'{folder}: folder not found')
    found = {}
    for path in sorted(folder.rglob('*')):
        match = re.fullmatch(pattern, path.name, flags=re.IGNORECASE)
        if match and (path.is_dir() if want_dirs else path.is_file()) and not path.name.startswith('.'):
            found.setdefault(match.group(1), path)
    return found


def find_pancreas_cases(label_dir, dicom_dir=None, nifti_dir=None):
    """({NNNN: (image source, label path)} sorted, problems: one line per unpaired file)."""
    labels = case_files(label_dir, r'label(\d{4})\.nii(?:\.gz)?', want_dirs=False)
    if dicom_dir is not None:
        images, source = case_files(dicom_dir, r'PANCREAS_(\d{4})', want_dirs=True), dicom_dir
        expected = 'DICOM folder PANCREAS_{}'
    else:
        images = case_files(nifti_dir, r'(?:image|PANCREAS_)(\d{4})\.nii(?:\.gz)?', want_dirs=False)
        source, expected = nifti_dir, 'image{}.nii.gz'
    if not labels:
        raise VolumeError(f'{label_dir}: no label files label{{NNNN}}.nii.gz in the folder')
    if not images:
        raise VolumeError(f'{source}: no {expected.format("{NNNN}")} in the folder')
    problems = [f'{labels[n]}: label without an image (no {expected.format(n)} in {source})'
                for n in sorted(labels) if n not in images]
    problems += [f'{images[n]}: image without a label (no label{n}.nii.gz in {label_dir})'
                 for n in sorted(images) if n not in labels]
    return {n: (images[n], labels[n]) for n in sorted(labels) if n in images}, problems


def read_pancreas_case(image_source, label_path, from_dicom, series=None, orientation=None):
    """(HU float32 (X,Y,Z), label uint8 0/1 (X,Y,Z), spacing mm, orientation): both brought to `orientation`
    (axis codes) by the label file's header, flips included; None: the label file's own orientation, which
    keeps its voxel order (the lineage's). series: SeriesInstanceUIDs (--series) choosing among a case
    folder's CT series (dicom.read_ct_scan).

    The image's array is taken to be in the label's voxel order (the DICOM stack runs the way InstanceNumber
    runs), and the two are compared in shape and voxel size only, not in world space: the NIH label files do
    not carry the DICOM series' world geometry (MC-Net gives the image the label's header; registration
    users report the labels flipped in y against a converted image), so a world-space comparison would
    refuse, or flip, every correctly matched case. docs/data.md, "What is checked".
    """
    label, affine = read_scan(label_path)
    spacing = axis_spacing(affine[:3, :3].T)
    hu, image_spacing = read_ct_series(image_source, series) if from_dicom else read_with_spacing(image_source,
                                                                                             reorient=False)
    if hu.shape != label.shape:
        raise VolumeError(f'{image_source}: image is {"x".join(map(str, hu.shape))} voxels but its label '
                          f'{label_path} is {"x".join(map(str, label.shape))}')
    difference = geometry_difference(hu.shape, np.diag([*image_spacing, 1.0]), label.shape,
                                     np.diag([*spacing, 1.0]), image_source)
    if difference:
        raise VolumeError(f'{label_path}: {difference}')
    for problem in (finite_problem(hu, image_source), constant_problem(hu, image_source),
                    finite_problem(label, label_path)):
        if problem:
            raise VolumeError(problem)
    values = np.unique(label)
    if not set(values.tolist()) <= {0, 1}:
        raise VolumeError(f'{label_path}: label values {values[:8].tolist()}, expected 0 and 1')
    if values.max(initial=0) == 0:
        raise VolumeError(f'{label_path}: label has no pancreas voxel')
    orientation = orientation or axis_codes(affine, label_path)
    (hu, label), spacing, _ = to_orientation([hu.astype(np.float32, copy=False), label.astype(np.uint8)], affine,
                                             orientation, label_path)
    return hu, label, spacing, orientation


def pancreas_recipe(recipe='mcnet', target=(1.0, 1.0, 1.0), order=1, command='', orientation=CANONICAL):
    """The recipe's record (volumes/recipe.py): the cases' orientation (the first label file's,
    read_pancreas_case), the window on the volume, mcnet's z-score on the crop."""
    axes, standardise = RECIPES[recipe]
    steps = [{'step': 'window', 'window': list(WINDOW), 'on': 'volume'}]
    steps += [{'step': 'zscore', 'voxels': 'all', 'on': 'crop'}] if standardise else []
    return make_recipe('ct', orientation, target, order, steps, 'label', 'xyz' if len(axes) == 3 else 'xy', MARGIN,
                       (PATCH,) * 3, (0, 1), command)


def process_case(hu, label, spacing, recipe='mcnet', target=(1.0, 1.0, 1.0), order=1, name='case'):
    """One case through the recipe (module docstring) -> (image float32, label uint8), both (X,Y,Z).
    name: the case in error messages (its label file)."""
    axes, _ = RECIPES[recipe]
    steps = pancreas_recipe(recipe, target, order)['intensity']
    size = size_problem(hu.shape, name, spacing, target)
    if size:
        raise VolumeError(size)
    hu, label, _ = resample_pair(hu, label, spacing, target, order)
    if not label.any():
        raise VolumeError(f'{name}: no pancreas voxel is left after resampling to --spacing '
                          f'{",".join(f"{t:g}" for t in target)}')
    image = apply_steps(hu, steps, 'volume')
    box = label_box(label, [(MARGIN, MARGIN)] * len(axes), [PATCH] * len(axes), axes)
    image, label = image[box], label[box]
    image = apply_steps(image, steps, 'crop', name='the crop')
    size = (PATCH,) * 3
    return pad_to(image, size, float(image.min())), pad_to(label, size, 0)


def present_lists(list_set, written):
    """(train ids, test ids) of a published list set, as image{NNNN} ids, restricted to written cases."""
    train, test = LIST_SETS[list_set]
    return ([f'image{n}' for n in train if n in written], [f'image{n}' for n in test if n in written])


def write_lists(folder, written, chosen, warn):
    """The lists of every published set, and train.list/test.list copies of `chosen`, in folder."""
    for name in LIST_SETS:
        train, test = present_lists(name, written)
        missing = len(LIST_SETS[name][0]) + len(LIST_SETS[name][1]) - len(train) - len(test)
        if missing:
            warn(f'warning: {missing} cases of {name}\'s lists were not imported; its lists name only the '
                 f'{len(train) + len(test)} that were')
        for split, ids in (('train', train), ('test', test)):
            targets = [f'{name}_{split}.list'] + ([f'{split}.list'] if name == chosen else [])
            for target in targets:
                if ids:
                    write_list(Path(folder) / target, ids)
                else:
                    warn(f'warning: {target} not written: none of its cases was imported')


def preprocess_pancreas(out_dir, label_dir, dicom_dir=None, nifti_dir=None, recipe='mcnet', lists=None,
                        target=(1.0, 1.0, 1.0), order=1, progress=True, warn=print, command='', overwrite=False,
                        series=None):
    """Import every paired case into out_dir (module docstring); returns the NNNN ids written.

    Raises VolumeError naming the file at fault (the first case that fails), or ProblemList naming
    every image without a label and label without an image. Nothing is written unless every case succeeds;
    an out_dir holding files is refused unless overwrite, and then replaced whole.
    """
    if (dicom_dir is None) == (nifti_dir is None):
        raise VolumeError('give one of --dicom_dir (TCIA DICOM series) and --nifti_dir (converted NIfTI)')
    problems = number_problems('--spacing', target, low=0)
    if problems:
        raise ProblemList(problems)
    check_out_dir(out_dir, overwrite)
    cases, problems = find_pancreas_cases(label_dir, dicom_dir, nifti_dir)
    if problems:
        raise ProblemList(problems)
    duplicates = [n for n in DUPLICATES if n in cases]
    if duplicates:
        warn(f'warning: {"cases" if len(duplicates) > 1 else "case"} {" and ".join(duplicates)} '
             f'{"are duplicate scans" if len(duplicates) > 1 else "is a duplicate scan"} of Pancreas-CT (0025 and '
             '0070 repeat other cases): MC-Net\'s lists keep them (0025 in test, 0070 in train), CoraNet\'s and BCP\'s '
             'drop them')
    orientation = None  # the first label file's own: the lineage's cases keep their arrays, another comes to it
    with ReplacingDir(out_dir) as stage:
        for n, (image_source, label_path) in tqdm(cases.items(), desc=PROG, unit='case', disable=not progress):
            hu, label, spacing, orientation = read_pancreas_case(image_source, label_path, dicom_dir is not None,
                                                                 series, orientation)
            image, label = process_case(hu, label, spacing, recipe, target, order, name=str(label_path))
            write_case_h5(stage.path / f'image{n}_norm.h5', image, label)
        write_lists(stage.path, set(cases), lists or recipe, warn)
        write_recipe(stage.path, pancreas_recipe(recipe, target, order, command, orientation))
        stage.commit()
    return list(cases)


def main(argv=None):
    parser = OneLineParser(prog=f'python -m importers.{PROG}',
                                     description=__doc__.split('\n')[0] + ' ' + CAVEAT)
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument('--dicom_dir', help='TCIA download: folders PANCREAS_NNNN of DICOM series, at any depth')
    source.add_argument('--nifti_dir', help='converted images image{NNNN}.nii.gz (or PANCREAS_{NNNN}.nii.gz)')
    parser.add_argument('--label_dir', required=True, help='NIH labels label{NNNN}.nii.gz, at any depth')
    parser.add_argument('--out_dir', default='data/Pancreas', help='output folder (default data/Pancreas)')
    parser.add_argument('--recipe', choices=sorted(RECIPES), default='mcnet',
                        help='mcnet: x/y crop + z-score (default); coranet: 3-D crop, no z-score')
    parser.add_argument('--lists', choices=sorted(LIST_SETS), default=None,
                        help='which published split train.list/test.list copy (default: the recipe\'s)')
    parser.add_argument('--spacing', type=numbers(3), default=(1.0, 1.0, 1.0),
                        help='target voxel size in mm, x,y,z (default 1,1,1)')
    parser.add_argument('--order', type=int, choices=(1, 3), default=1, help='image interpolation: 1 linear, 3 cubic')
    parser.add_argument('--overwrite', action='store_true',
                        help='replace --out_dir whole when it holds files (an earlier import); without it, refused')
    parser.add_argument('--series', action='append', metavar='UID',
                        help='a case folder holding several CT series reads the one with this SeriesInstanceUID '
                             '(repeat for several cases)')
    parser.add_argument('--debug', action='store_true', help='show the traceback of an error (utils.cli.run_cli)')
    args = parser.parse_args(argv)
    try:
        cases = preprocess_pancreas(args.out_dir, args.label_dir, args.dicom_dir, args.nifti_dir, args.recipe,
                                    args.lists, args.spacing, args.order,
                                    command=command_line(f'importers.{PROG}', argv), overwrite=args.overwrite,
                                    series=args.series)
    except MemoryError:
        raise VolumeError(f'out of memory importing into {args.out_dir}: try a coarser --spacing') from None
    print(f'{PROG}: wrote {len(cases)} cases to {args.out_dir} (recipe {args.recipe}, lists '
          f'{args.lists or args.recipe} as train.list/test.list)')
    print(f'{PROG}: {CAVEAT}')
    return 0


if __name__ == '__main__':
    run_cli(main)
