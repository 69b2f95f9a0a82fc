"""Check a dataset folder before training: lists, files, keys, shapes, dtypes, label values, NaN.

    python -m dataloaders.check --root_path data/LA [--split train] [--list_file F] [--num_classes 2]

Prints one plain line per problem and exits 1 if there is any; otherwise prints a short summary and
exits 0. Files are opened read-only.
"""
import argparse
import sys

from .datasets import LA_PATTERN, LA_SUBDIR, DatasetError, H5Dataset, inspect_case


def check_folder(root_path, split='train', list_file=None, num_classes=None, pattern=LA_PATTERN,
                 subdir=LA_SUBDIR):
    """(problems: list of one-line str, summary: str). Reads every case once."""
    try:
        dataset = H5Dataset(root_path, split=split, list_file=list_file, pattern=pattern, subdir=subdir)
    except DatasetError as e:
        return [str(e)], ''
    problems, shapes, top_label = [], [], 0
    for i, case_id in enumerate(dataset.ids):
        path = dataset.case_path(i)
        image, label, case_problems = inspect_case(path, num_classes)
        problems += [f'case {case_id}: {path}: {p}' for p in case_problems]
        if not case_problems:
            shapes.append(image.shape)
            top_label = max(top_label, int(label.max()))
    n = len(dataset)
    if problems:
        return problems, f'{n - len(shapes)} of {n} cases in {dataset.list_file} have problems'
    lo = 'x'.join(str(min(s[d] for s in shapes)) for d in range(3))
    hi = 'x'.join(str(max(s[d] for s in shapes)) for d in range(3))
    classes = f'num_classes {num_classes}' if num_classes is not None else 'num_classes not checked'
    return [], (f'{n} cases OK ({dataset.list_file}; files {dataset.data_dir}; sizes {lo} .. {hi}; '
                f'labels 0..{top_label}; {classes})')


def main(argv=None):
    parser = argparse.ArgumentParser(prog='python -m dataloaders.check', description=__doc__.split('\n')[0])
    parser.add_argument('--root_path', required=True, help='dataset folder (any of the three layouts)')
    parser.add_argument('--split', default='train', help='list name: <split>.list (default train)')
    parser.add_argument('--list_file', default=None, help='explicit list file (overrides --split)')
    parser.add_argument('--num_classes', type=int, default=2,
                        help='labels must lie in 0..num_classes-1 (default 2)')
    parser.add_argument('--pattern', default=LA_PATTERN,
                        help=f'case file inside the h5 folder (default {LA_PATTERN})')
    parser.add_argument('--subdir', default=LA_SUBDIR,
                        help=f'h5 folder inside root_path, used when present (default "{LA_SUBDIR}")')
    args = parser.parse_args(argv)
    if args.num_classes < 1:
        parser.error(f'--num_classes must be >= 1, got {args.num_classes}')

    problems, summary = check_folder(args.root_path, args.split, args.list_file, args.num_classes,
                                     args.pattern, args.subdir)
    for line in problems:
        print(line)
    if summary:
        print(summary)
    return 1 if problems else 0


if __name__ == '__main__':
    sys.exit(main())
