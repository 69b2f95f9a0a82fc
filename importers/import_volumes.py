"""Import a folder of NIfTI/NRRD image and label volumes as h5 cases that `train.py --dataset h5` trains on.

    python -m importers.import_volumes --images imagesTr --labels labelsTr --out_dir data/MyTask \\
        --modality ct|mr [--spacing 1,1,1] [--crop nonzero|label|none] [--test_ids FILE | --test_fraction 0.2]

Pairs imagesTr/X.nii.gz (or X_0000.nii.gz, nnU-Net's channel 0; or X.nrrd) with labelsTr/X.nii.gz, the
Medical Segmentation Decathlon and nnU-Net layouts. First every pair is read and checked, one line per
problem (volumes/checks.py): the label lies on its image's grid (shape, spacing, origin, direction compared
in world space; a label stored in another orientation is turned onto the image's), label values are
non-negative integers (and among --label_values when given), voxels and header geometry are finite, every
volume at --spacing has at least 4 voxels per axis and at most 2**28 in all. Nothing is written unless all
pass, and an --out_dir holding files is refused without --overwrite, which replaces it whole. Then each case:
  reorient to --orientation (default RAS; axis order and directions, from each image's header) ->
  resample to --spacing (image linear or --order 3 cubic, label nearest; default: keep each case's spacing)
  -> crop (--crop) -> intensity (--modality ct: window [lo, hi] -> [0, 1]; mr: z-score, --nonzero over
  non-zero voxels only) -> pad to --min_size (the training patch) ->
  OUT/<id>.h5 ('image' float32, 'label' uint8 0..C-1, (X,Y,Z), gzip).
Label values are mapped in order to 0..C-1 and the mapping is printed, naming the label files that hold a
value most cases lack (a 255 among 0/1 files is a class of its own: rewrite that file, or refuse it with
--label_values). OUT/train.list and OUT/test.list
(--test_ids, or a seeded --test_fraction of the cases) follow; the first --labelnum ids of train.list are
the labeled ones in training. OUT/dataset.json records every step and its settings (volumes/recipe.py), and
each case goes through that record: segment.py applies the same steps to a new scan.

--crop nonzero (default) keeps the box of the voxels above the volume's minimum (the body or the field of
view) and needs no label. --crop label keeps --margin voxels on each side of the label's box (grown to
--min_size by the lineage's rule, crop.py), around the ground-truth label as the LA and Pancreas lineage
did: test and unlabeled cases are then cropped around a label the model should not have, so it is told
where the target is and its scores are optimistic (a warning says so).
"""
import numpy as np
from tqdm import tqdm

from dataloaders.datasets import DatasetError, check_case_id, read_list
from .volumes import (AXES, MAX_VOXELS, ProblemList, ReplacingDir, VolumeError, align_label, apply_steps,
                      check_out_dir, class_values, constant_problem, crop_box, finite_problem, label_value_problem,
                      make_recipe,
                      number_problems, pad_to, pair_files, read_scan, resample_pair, size_problem, write_case_h5,
                      write_list, write_recipe)
from utils.cli import OneLineParser, run_cli

from .volumes.args import command_line, numbers, value_list
from .volumes.orient import CANONICAL, orientation_problem, to_orientation

PROG = 'import_volumes'
# a NIfTI written with a scaling affine keeps its array, as it did before the orientation key (docs/data.md,
# "Orientation")
ORIENTATION = CANONICAL
# a label value held by at most this share of the cases is named with the files that hold it
RARE_SHARE = 0.5
SHOWN_FILES = 3
MAX_CLASSES = 255  # labels are stored as uint8
LABEL_CROP_WARNING = ('warning: --crop label crops every case, test and unlabeled ones included, around its '
                      'ground-truth label: the model is told where the target is and its test scores are '
                      'optimistic; --crop nonzero crops to the body without the label')


def _shape(shape):
    return 'x'.join(str(n) for n in shape)


def read_pair(image_path, label_path, orientation=ORIENTATION):
    """(image, label, spacing in mm) of a case: the label put on its image's voxel grid (checks.align_label:
    same box in world space, any orientation), then both brought to `orientation` (axis codes, e.g. 'LPS')
    by the image's header, flips included, so that every case shows the networks one anatomy."""
    image, image_affine = read_scan(image_path)
    label, label_affine = read_scan(label_path)
    label = align_label(label, label_affine, image.shape, image_affine, label_path, image_path)
    (image, label), spacing, _ = to_orientation([image, label], image_affine, orientation, image_path)
    return image, label, spacing


def check_pair(image_path, label_path, modality, crop, target=None, expected=None, orientation=ORIENTATION):
    """(problems: one line each naming the file, label values of the case: sorted floats).
    target: the --spacing the case will be resampled to; expected: --label_values."""
    try:
        image, label, spacing = read_pair(image_path, label_path, orientation)
    except VolumeError as err:
        return [str(err)], []
    problems = []
    values = np.unique(label)
    value_problem = label_value_problem(values, label_path, expected)
    if value_problem:
        problems.append(value_problem)
    elif crop == 'label' and len(values) < 2:
        problems.append(f'{label_path}: label holds only the value {values[0]:g}: nothing to crop around '
                        '(--crop label)')
    size = size_problem(image.shape, image_path, spacing, target)
    if size:
        problems.append(size)
    image_problem = finite_problem(image, image_path) or constant_problem(image, image_path)
    if image_problem:
        problems.append(image_problem)
    return problems, [] if value_problem else [float(v) for v in values]


def rare_values(holders, cases):
    """'; 255 only in c3.nii.gz (1 of 5 labels)' for each label value held by at most RARE_SHARE of the `cases`
    labels (holders: {value: [label files holding it]}), '' when every value is common: a value few files hold
    is more often a file saved another way (0/255 among 0/1) than a class."""
    parts = []
    for value, files in sorted(holders.items()):
        if len(files) < cases and len(files) <= RARE_SHARE * cases:
            names = ', '.join(str(f.name) for f in files[:SHOWN_FILES])
            more = f' and {len(files) - SHOWN_FILES} more' if len(files) > SHOWN_FILES else ''
            parts.append(f'; {value:g} only in {names}{more} ({len(files)} of {cases} labels)')
    return ''.join(parts)


def label_classes(values, holders=None, cases=0):
    """Sorted distinct label values of all cases -> (lookup values, one-line description of the mapping, naming
    the files of the rarer values: rare_values of holders {value: [files]} among `cases` labels)."""
    values = np.array(sorted(set(values)))
    rare = rare_values(holders, cases) if holders else ''
    if np.array_equal(values, np.arange(len(values))):
        return values, f'labels: values 0..{len(values) - 1} kept ({len(values)} classes){rare}'
    shown = ', '.join(f'{v:g}' for v in values[:10]) + (', ...' if len(values) > 10 else '')
    return values, (f'labels: values {shown} mapped in order to 0..{len(values) - 1} ({len(values)} classes; '
                    f'{values[0]:g} is the background){rare}')


def split_ids(ids, test_ids=None, test_fraction=0.2, seed=0):
    """(train ids, test ids, problems): test_ids as given, else round(fraction x n) ids drawn with the seed
    (at least one when the fraction is above 0 and there are two cases); both lists sorted."""
    if test_ids is not None:
        unknown = [i for i in test_ids if i not in ids]
        problems = [f'--test_ids: case {i} is not among the imported cases' for i in unknown]
        test = set(test_ids)
    else:
        count = int(round(test_fraction * len(ids)))
        if test_fraction > 0 and len(ids) > 1:
            count = max(count, 1)
        count = min(count, len(ids) - 1)
        test = set(np.random.default_rng(seed).permutation(sorted(ids))[:count].tolist())
        problems = []
    return sorted(i for i in ids if i not in test), sorted(i for i in ids if i in test), problems


def volumes_recipe(modality, values, target=None, order=1, crop='nonzero', crop_axes='xyz', margin=25,
                   min_size=(96, 96, 96), window=(-125.0, 275.0), nonzero=False, command='', orientation=ORIENTATION):
    """The recipe (volumes/recipe.py) of an import with these settings; values: the sorted label values of
    all cases (label_classes). The intensity step comes after the crop: ct the window, mr the z-score."""
    step = ({'step': 'window', 'window': [float(window[0]), float(window[1])], 'on': 'crop'} if modality == 'ct'
            else {'step': 'zscore', 'voxels': 'nonzero' if nonzero else 'all', 'on': 'crop'})
    return make_recipe(modality, orientation, target, order, [step], crop, crop_axes, margin, min_size, values, command)


def import_case(image, label, spacing, recipe, name='image'):
    """One checked case -> (image float32, label uint8 in 0..C-1), both (X,Y,Z), through the recipe:
    resample, map the label values to their classes, crop, intensity, pad."""
    image, label, _ = resample_pair(image, label, spacing, recipe['spacing'], recipe['order'])
    label = np.searchsorted(class_values(recipe), label).astype(np.uint8)
    if recipe['crop'] == 'label' and not label.any():
        raise VolumeError(f'{name}: no labelled voxel is left after resampling to --spacing '
                          f'{",".join(f"{t:g}" for t in recipe["spacing"])}: nothing to crop around (--crop label)')
    box = crop_box(image, label, recipe['crop'], AXES[recipe['crop_axes']], recipe['margin'], recipe['min_size'])
    if box is not None:
        image, label = image[box], label[box]
    image = apply_steps(image, recipe['intensity'], 'crop', name)
    return pad_to(image, recipe['min_size'], float(image.min())), pad_to(label, recipe['min_size'], 0)


def import_volumes(images, labels, out_dir, modality, target=None, crop='nonzero', test_ids=None,
                   test_fraction=0.2, seed=0, warn=print, progress=True, overwrite=False, label_values=None,
                   **case_options):
    """Check every pair, then write OUT/<id>.h5, train.list, test.list and dataset.json (module docstring).

    case_options go to volumes_recipe (order, crop_axes, margin, min_size, window, nonzero, command,
    orientation).
    overwrite: replace an out_dir that holds files (else refused); label_values: the values every label may
    hold (--label_values). Returns (train ids, test ids, number of classes). Raises ProblemList (a
    VolumeError) whose .lines name every problem; nothing is written then.
    """
    check_out_dir(out_dir, overwrite)
    pairs, problems = pair_files(images, labels)
    for case_id in pairs:
        try:
            check_case_id(case_id, where=str(images))
        except DatasetError as err:
            problems.append(str(err))
    values, holders = [], {}
    orientation = case_options.get('orientation', ORIENTATION)
    for case_id, (image_path, label_path) in tqdm(pairs.items(), desc=f'{PROG}: check', unit='case',
                                                  disable=not progress):
        case_problems, case_values = check_pair(image_path, label_path, modality, crop, target, label_values,
                                                orientation)
        problems += case_problems
        values += case_values
        for value in case_values:
            holders.setdefault(value, []).append(label_path)
    if label_values is not None and values:  # the stated values are the classes, present in the cases or not
        values = list(label_values)
    classes, mapping = label_classes(values, holders, len(pairs)) if values else (np.zeros(0), '')
    if not problems and len(classes) < 2:
        problems.append(f'{labels}: every label holds only the value {classes[0]:g}: nothing to segment')
    if len(classes) > MAX_CLASSES:
        problems.append(f'{labels}: {len(classes)} distinct label values, more than {MAX_CLASSES} classes '
                        '(is --labels a folder of images?)')
    train, test, split_problems = split_ids(list(pairs), test_ids, test_fraction, seed)
    problems += split_problems
    if problems:
        raise ProblemList(problems)
    warn(f'{PROG}: {mapping}')
    if crop == 'label':
        warn(LABEL_CROP_WARNING)
    recipe = volumes_recipe(modality, classes, target, crop=crop, **case_options)
    with ReplacingDir(out_dir) as stage:
        for case_id, (image_path, label_path) in tqdm(pairs.items(), desc=PROG, unit='case', disable=not progress):
            image, label, spacing = read_pair(image_path, label_path, orientation)
            image, label = import_case(image, label, spacing, recipe, name=str(image_path))
            write_case_h5(stage.path / f'{case_id}.h5', image, label)
        write_recipe(stage.path, recipe)
        write_list(stage.path / 'train.list', train)
        if test:
            write_list(stage.path / 'test.list', test)
        stage.commit()
    return train, test, len(classes)


def flag_problems(args):
    """One line per numeric flag out of its range, before any file is read."""
    problems = []
    if args.spacing is not None:
        problems += number_problems('--spacing', args.spacing, low=0)
    problems += number_problems('--window', args.window)
    if not problems and not args.window[0] < args.window[1]:
        problems.append(f'--window {args.window[0]:g},{args.window[1]:g}: LO must be below HI')
    problems += number_problems('--margin', args.margin, low=0, low_open=False)
    problems += number_problems('--min_size', args.min_size, low=1, low_open=False)
    if np.prod(args.min_size, dtype=float) > MAX_VOXELS:
        problems.append(f'--min_size {",".join(map(str, args.min_size))}: more than {MAX_VOXELS} voxels')
    if not 0 <= args.test_fraction < 1:
        problems.append(f'--test_fraction {args.test_fraction:g}: must be in [0, 1)')
    problems += number_problems('--seed', args.seed, low=0, low_open=False)
    orientation = orientation_problem(args.orientation)
    if orientation:
        problems.append(orientation)
    if args.label_values is not None:
        problems += [p.replace(': label value', ': value') for p in
                     [label_value_problem(np.array(args.label_values), '--label_values')] if p]
        if len(set(args.label_values)) < 2:
            problems.append(f'--label_values {",".join(f"{v:g}" for v in args.label_values)}: name at least two '
                            'values (the background and one class)')
    return problems


def main(argv=None):
    parser = OneLineParser(prog=f'python -m importers.{PROG}', description=__doc__.split('\n')[0])
    parser.add_argument('--images', required=True, help='folder of image volumes (.nii.gz, .nii, .nrrd)')
    parser.add_argument('--labels', required=True, help='folder of label volumes with the same names')
    parser.add_argument('--out_dir', required=True, help='output folder: <id>.h5, train.list, test.list')
    parser.add_argument('--modality', required=True, choices=('ct', 'mr'),
                        help='ct: HU window -> [0, 1]; mr: z-score')
    parser.add_argument('--window', type=numbers(2), default=(-125.0, 275.0), metavar='LO,HI',
                        help='ct: HU window (default -125,275, the lineage\'s abdominal soft tissue)')
    parser.add_argument('--nonzero', action='store_true', help='mr: z-score over the non-zero voxels only')
    parser.add_argument('--spacing', type=numbers(3), default=None, metavar='X,Y,Z',
                        help='resample to this voxel size in mm (default: keep each case\'s own)')
    parser.add_argument('--order', type=int, choices=(1, 3), default=1, help='image interpolation: 1 linear, 3 cubic')
    parser.add_argument('--orientation', type=str.upper, default=ORIENTATION, metavar='CODES',
                        help='the orientation every case is brought to, flips included: axis codes, one of L/R, '
                             f'A/P and S/I (default {ORIENTATION}, NIfTI\'s world frame)')
    parser.add_argument('--crop', choices=('nonzero', 'label', 'none'), default='nonzero',
                        help='nonzero: the body (default); label: around the ground truth (optimistic scores); none')
    parser.add_argument('--crop_axes', choices=sorted(AXES), default='xyz', help='axes to crop (default xyz)')
    parser.add_argument('--margin', type=int, default=25, help='voxels kept around the label (--crop label)')
    parser.add_argument('--min_size', type=numbers(3, int), default=(96, 96, 96), metavar='X,Y,Z',
                        help='every case at least this big, padded if smaller: the training patch (default 96,96,96)')
    split = parser.add_mutually_exclusive_group()
    split.add_argument('--test_ids', help='list file of the test cases\' ids')
    split.add_argument('--test_fraction', type=float, default=0.2, help='share of cases drawn for test.list (0.2)')
    parser.add_argument('--seed', type=int, default=0, help='seeds the --test_fraction draw')
    parser.add_argument('--label_values', type=value_list, default=None, metavar='V,V,...',
                        help='the values labels hold, e.g. 0,3: a label holding another value is refused')
    parser.add_argument('--overwrite', action='store_true',
                        help='replace --out_dir whole when it holds files (an earlier import); without it, refused')
    parser.add_argument('--debug', action='store_true', help='show the traceback of an error (utils.cli.run_cli)')
    args = parser.parse_args(argv)
    problems = flag_problems(args)
    if problems:
        raise ProblemList(problems)
    try:
        test_ids = read_list(args.test_ids) if args.test_ids else None
        train, test, classes = import_volumes(
            args.images, args.labels, args.out_dir, args.modality, args.spacing, args.crop, test_ids,
            args.test_fraction, args.seed, order=args.order, crop_axes=args.crop_axes, margin=args.margin,
            min_size=args.min_size, window=args.window, nonzero=args.nonzero, overwrite=args.overwrite,
            label_values=args.label_values, orientation=args.orientation,
            command=command_line(f'importers.{PROG}', argv))
    except MemoryError:
        raise VolumeError(f'out of memory importing into {args.out_dir}: try a coarser --spacing or fewer '
                          'cases') from None
    print(f'{PROG}: wrote {len(train) + len(test)} cases to {args.out_dir} ({len(train)} in train.list, '
          f'{len(test)} in test.list), {classes} classes')
    print(f"{PROG}: next: python -m importers.check --root_path {args.out_dir} --pattern '{{id}}.h5' "
          f'--num_classes {classes}')
    return 0


if __name__ == '__main__':
    run_cli(main)
