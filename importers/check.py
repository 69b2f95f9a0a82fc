"""Check a dataset folder before training: lists, files, keys, shapes, dtypes, label values, NaN, intensities,
and the import recipe (dataset.json) when the folder has one.

    python -m importers.check --root_path data/LA [--split train] [--list_file F] [--num_classes 2]
    python -m importers.check --root_path data/LA --stats --png pictures/

Prints one plain line per problem and exits 1 if there is any; otherwise prints a short summary and
exits 0. A case whose intensity scale is far from the others' is reported as a warning (exit 0): a model
trained on the others tends to miss it. Files are opened read-only.
"""
import sys
from pathlib import Path

import numpy as np

from dataloaders.datasets import LA_PATTERN, LA_SUBDIR, DatasetError, H5Dataset, inspect_case
from dataloaders.pictures import optional_import, save_case_png
from utils.cli import OneLineParser, run_cli
from .volumes import RECIPE_FILE, VolumeError, read_recipe

PERCENTILES = (1, 50, 99)
# Fewer cases than this have no majority to call one of them far from the others.
MIN_CASES_TO_COMPARE = 3


def intensity_stats(image):
    """Mean, std, percentiles and scale (99th minus 1st percentile: robust to a few extreme voxels)."""
    p1, p50, p99 = np.percentile(image, PERCENTILES)
    return {'mean': float(image.mean()), 'std': float(image.std()), 'p1': float(p1), 'p50': float(p50),
            'p99': float(p99), 'scale': float(p99 - p1)}


def scale_warnings(stats, factor):
    """One line per case whose scale is more than `factor` times smaller or larger than the median case's."""
    if len(stats) < MIN_CASES_TO_COMPARE:
        return []
    median = float(np.median([s['scale'] for s in stats.values()]))
    lines = []
    for case_id, s in stats.items():
        ratio = s['scale'] / median if median > 0 else 1.0
        if not 1 / factor <= ratio <= factor:
            how = f'{1 / ratio:.1f}x smaller' if ratio < 1 else f'{ratio:.1f}x larger'
            lines.append(f'warning: case {case_id}: intensity scale (99th - 1st percentile) {s["scale"]:.3g} is '
                         f'{how} than the median case\'s {median:.3g}; check its normalisation')
    return lines


def stats_table(stats):
    """Per-case intensity statistics as aligned text lines."""
    width = max([len('case')] + [len(c) for c in stats])
    lines = [f'{"case":<{width}} ' + ' '.join(f'{k:>8}' for k in ('mean', 'std', 'p1', 'p50', 'p99', 'scale'))]
    for case_id, s in stats.items():
        lines.append(f'{case_id:<{width}} ' + ' '.join(f'{s[k]:8.3f}' for k in ('mean', 'std', 'p1', 'p50', 'p99',
                                                                                  'scale')))
    return lines


def recipe_check(root_path, num_classes):
    """(problems of the folder's dataset.json, one line each; whether it has one)."""
    try:
        recipe = read_recipe(root_path)
    except VolumeError as err:
        return getattr(err, 'lines', [str(err)]), True
    if recipe is not None and num_classes is not None and recipe['num_classes'] != num_classes:
        return [f'{Path(root_path) / RECIPE_FILE}: num_classes {recipe["num_classes"]}, but --num_classes is '
                f'{num_classes}'], True
    return [], recipe is not None


def case_orientation(root_path):
    """The axis codes the folder's cases are stored in (its recipe's 'orientation'), for the pictures' edges;
    None for a recipe of format_version 1, which recorded none."""
    return read_recipe(root_path).get('orientation')


def check_folder(root_path, split='train', list_file=None, num_classes=None, pattern=LA_PATTERN,
                 subdir=LA_SUBDIR, png_dir=None):
    """(problems: list of one-line str, summary: str, intensity stats {case id: dict} of the good cases).

    Reads every case once; with png_dir, writes <png_dir>/<case id>.png of each good case on the way.
    """
    recipe_problems, has_recipe = recipe_check(root_path, num_classes)
    orientation = case_orientation(root_path) if has_recipe and not recipe_problems else None
    try:
        dataset = H5Dataset(root_path, split=split, list_file=list_file, pattern=pattern, subdir=subdir)
    except DatasetError as e:
        return recipe_problems + [str(e)], '', {}
    problems, shapes, stats, top_label = list(recipe_problems), [], {}, 0
    for i, case_id in enumerate(dataset.ids):
        path = dataset.case_path(i)
        image, label, case_problems = inspect_case(path, num_classes)
        problems += [f'case {case_id}: {path}: {p}' for p in case_problems]
        if case_problems:
            continue
        shapes.append(image.shape)
        top_label = max(top_label, int(label.max()))
        stats[case_id] = s = intensity_stats(image)
        if png_dir is not None:
            save_case_png(Path(png_dir) / f'{case_id}.png', image, label,
                          title=f'{case_id}: intensity mean {s["mean"]:.2f}, std {s["std"]:.2f}, '
                                f'1st-99th percentile {s["p1"]:.2f} .. {s["p99"]:.2f}', orientation=orientation)
    n = len(dataset)
    if problems:
        bad = n - len(shapes)
        return problems, (f'{bad} of {n} cases in {dataset.list_file} have problems' if bad else
                          f'the {n} cases of {dataset.list_file} are OK, {Path(root_path) / RECIPE_FILE} is not'), stats
    recipe = f'; recipe {RECIPE_FILE} OK' if has_recipe else ''
    lo = 'x'.join(str(min(s[d] for s in shapes)) for d in range(3))
    hi = 'x'.join(str(max(s[d] for s in shapes)) for d in range(3))
    classes = f'num_classes {num_classes}' if num_classes is not None else 'num_classes not checked'
    scales = [s['scale'] for s in stats.values()]
    return [], (f'{n} cases OK ({dataset.list_file}; files {dataset.data_dir}; sizes {lo} .. {hi}; '
                f'labels 0..{top_label}; {classes}; intensity scale {min(scales):.3g} .. {max(scales):.3g}, '
                f'median {float(np.median(scales)):.3g}){recipe}'), stats


def main(argv=None):
    parser = OneLineParser(prog='python -m importers.check', description=__doc__.split('\n')[0])
    parser.add_argument('--root_path', required=True, help='dataset folder (any of the three layouts)')
    parser.add_argument('--split', default='train', help='list name: <split>.list (default train)')
    parser.add_argument('--list_file', default=None, help='explicit list file (overrides --split)')
    parser.add_argument('--num_classes', type=int, default=2,
                        help='labels must lie in 0..num_classes-1 (default 2)')
    parser.add_argument('--pattern', default=LA_PATTERN,
                        help=f'case file inside the h5 folder (default {LA_PATTERN})')
    parser.add_argument('--subdir', default=LA_SUBDIR,
                        help=f'h5 folder inside root_path, used when present (default "{LA_SUBDIR}")')
    parser.add_argument('--stats', action='store_true',
                        help='print each case\'s intensity mean, std and 1st/50th/99th percentiles')
    parser.add_argument('--scale_factor', type=float, default=2.0,
                        help='warn about a case whose intensity scale (99th - 1st percentile) is more than this '
                             'many times smaller or larger than the median case\'s (default 2)')
    parser.add_argument('--png', default=None, metavar='DIR',
                        help='write DIR/<case id>.png: three slices through the label\'s centre, the label '
                             'outlined (needs matplotlib)')
    parser.add_argument('--debug', action='store_true', help='show the traceback of an error (utils.cli.run_cli)')
    args = parser.parse_args(argv)
    if args.num_classes < 1:
        parser.error(f'--num_classes must be >= 1, got {args.num_classes}')
    if not args.scale_factor > 1:
        parser.error(f'--scale_factor must be more than 1, got {args.scale_factor}')
    if args.png is not None:
        optional_import('matplotlib.figure', '--png', 'matplotlib')  # before reading a single case
        Path(args.png).mkdir(parents=True, exist_ok=True)

    problems, summary, stats = check_folder(args.root_path, args.split, args.list_file, args.num_classes,
                                            args.pattern, args.subdir, args.png)
    for line in problems + (stats_table(stats) if args.stats and stats else []):
        print(line)
    for line in scale_warnings(stats, args.scale_factor):
        print(line)
    if summary:
        print(summary)
    if args.png is not None and stats:
        print(f'wrote {len(stats)} pictures to {args.png}')
    return 1 if problems else 0


if __name__ == '__main__':
    sys.exit(run_cli(main))
