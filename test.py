"""Evaluate a trained pair on a list of labeled cases (docs/method.md, "Evaluation").

    python test.py --labelnum 8 --gpu 0                             # the run folder of train.py, its final.pth
    python test.py --checkpoint model/la/dual_dual_8labels/final.pth --nets a
    python test.py --vnet_ckpt vnet.pth --resnet_ckpt resnet.pth    # state dicts saved by the published code
    python test.py --labelnum 8 --overlap 0.5 --gaussian            # far fewer windows, nearly the same masks

Writes into the run folder (or --out_dir): test_cases.csv (one row per case), test_summary.json (mean and
std of each metric, empty cases, settings, checkpoint, wall time) and, with --save_pred, predictions/; prints
a Markdown table of mean ± std. Every setting the checkpoint records (method, n_filters, num_classes, patch
size, dataset folder and file pattern, strides) is taken from it unless given, so only the flags that locate
the run folder need repeating. New scans without labels: segment.py.
"""
import csv
import json
import math
import sys
import time
from pathlib import Path

import numpy as np
import torch

from dataloaders.datasets import H5Dataset
from dataloaders.transforms import NormalizeIntensity
from utils.cli import OneLineParser, UsageError, run_cli
from utils.evaluation import test_all_case
from utils.metrics import METRICS, summarize
from utils.trained import PictureWriter, add_trained_args, open_trained, parse_spacing, read_flags, require_matplotlib

SEGMENT = 'test.py evaluates a list; segment new scans with python segment.py --checkpoint ... --input ...'


def build_parser():
    p = OneLineParser(description=__doc__.split('\n')[0])
    add_trained_args(p)
    g = p.add_argument_group('cases')
    g.add_argument('--split', default='test', help='evaluates <split>.list of the dataset folder (default test)')
    g.add_argument('--list_file', default=None, help='a list file of case ids instead of --split')
    g = p.add_argument_group('metrics')
    g.add_argument('--lcc', action='store_true', help='keep the largest connected component of each class')
    g.add_argument('--spacing', type=parse_spacing, default=None, help='x,y,z mm per voxel: distances in mm')
    g.add_argument('--lineage_empty', action='store_true',
                   help="score an empty prediction (0, 0, 0, 0) as the lineage does, instead of leaving its "
                        "distances out")
    g = p.add_argument_group('output')
    g.add_argument('--out_dir', default=None, help='default: the run folder (the checkpoint\'s folder)')
    g.add_argument('--save_pred', action='store_true', help='write prediction, image and label of every case')
    g.add_argument('--save_png', action='store_true',
                   help='one PNG per case in pictures/: three slices through the label\'s centre, label and '
                        'prediction outlined, Dice in the title (needs matplotlib)')
    fmt = g.add_mutually_exclusive_group()
    fmt.add_argument('--nifti', action='store_true',
                     help='--save_pred writes .nii.gz (needs nibabel; the default when found)')
    fmt.add_argument('--h5', action='store_true', help='--save_pred writes .h5, even with nibabel')
    g.add_argument('--no_progress', action='store_true', help='no progress bar')
    return p


def parse_args(argv=None):
    """The flags as a dict; None where a setting is to come from the checkpoint."""
    argv = sys.argv[1:] if argv is None else list(argv)
    if any(a == '--input' or a.startswith('--input=') for a in argv):
        raise UsageError(SEGMENT)
    return read_flags(build_parser(), argv)


class Cases:
    """(case id, image, label) of every case of a dataset, read one at a time; has a length for tqdm."""

    def __init__(self, dataset):
        self.dataset = dataset

    def __len__(self):
        return len(self.dataset)

    def __iter__(self):
        for i in range(len(self.dataset)):
            sample = self.dataset[i]
            yield self.dataset.ids[i], sample['image'], sample['label']


def each(savers):
    """One save_fn that calls every one of `savers` in turn; None when there is none."""
    if not savers:
        return None

    def save(*case):
        for saver in savers:
            saver(*case)
    return save


# ----------------------------------------------------------------------------------------------------------
# the table and the files

def fmt_stat(stat, scale):
    if stat['n'] == 0 or not math.isfinite(stat['mean']):
        return 'n/a'
    return f'{stat["mean"] * scale:.2f} ± {stat["std"] * scale:.2f}'


def format_table(summary, label, units, num_classes, lineage_empty):
    """Markdown table: Dice and Jaccard in %, 95HD and ASD in `units`; one row per class when > 2 classes."""
    lines = [f'| | Dice (%) | Jaccard (%) | 95HD ({units}) | ASD ({units}) |', '|---|---|---|---|---|']
    rows = [(label, '')] + ([(f'class {c}', f'_{c}') for c in range(1, num_classes)] if num_classes > 2 else [])
    for name, suffix in rows:
        cells = [fmt_stat(summary[m + suffix], 100.0 if m in ('dice', 'jaccard') else 1.0) for m in METRICS]
        lines.append(f'| {name} | ' + ' | '.join(cells) + ' |')
    n, empty = summary['n_cases'], summary['n_empty']
    if empty:
        how = ('scored (0, 0, 0, 0) as the lineage does' if lineage_empty
               else 'Dice 0; 95HD and ASD undefined and left out of their means')
        lines.append(f'{empty} of {n} cases empty ({how})')
    for c in range(1, num_classes) if num_classes > 2 else ():
        if summary.get(f'n_empty_{c}'):
            lines.append(f'class {c}: {summary[f"n_empty_{c}"]} of {n} cases empty')
    if summary.get('n_gt_empty'):
        lines.append(f'{summary["n_gt_empty"]} of {n} cases have an empty ground truth (distances undefined)')
    return '\n'.join(lines)


def csv_value(value):
    if isinstance(value, (list, tuple)):
        return 'x'.join(str(v) for v in value)
    return value


def write_cases_csv(rows, path):
    columns = list(rows[0]) if rows else ['case', *METRICS]
    with open(path, 'w', newline='') as f:
        writer = csv.DictWriter(f, fieldnames=columns)
        writer.writeheader()
        for row in rows:
            writer.writerow({k: csv_value(v) for k, v in row.items()})


def json_safe(obj):
    """NaN/Inf -> None (JSON has no NaN), tuples -> lists, numpy scalars -> Python numbers."""
    if isinstance(obj, dict):
        return {str(k): json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_safe(v) for v in obj]
    if isinstance(obj, np.generic):
        obj = obj.item()
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj


# ----------------------------------------------------------------------------------------------------------
# main

def main(argv=None):
    cfg = parse_args(argv)
    if cfg['save_png']:
        require_matplotlib()
    nib = None
    if cfg['nifti'] or cfg['save_pred'] and not cfg['h5']:  # .nii.gz where nibabel is installed (--nifti: required)
        from utils.volume_io import nibabel_or_none
        nib = nibabel_or_none()
        if cfg['nifti'] and nib is None:
            raise UsageError('--nifti needs nibabel, which is not installed: pip install nibabel')
    nets, info, window, device = open_trained(cfg)
    out_dir = Path(cfg['out_dir'] if cfg['out_dir'] is not None else info['snapshot_path'])
    # the cases of an import are stored in the orientation its recipe records: the pictures name their sides
    orientation = (info['recipe'] or {}).get('orientation')
    savers = [PictureWriter(out_dir / 'pictures', cfg['spacing'], orientation)] if cfg['save_png'] else []
    out_dir.mkdir(parents=True, exist_ok=True)

    dataset = H5Dataset(cfg['root_path'], split=cfg['split'], list_file=cfg['list_file'], pattern=cfg['pattern'],
                        num_classes=cfg['num_classes'], transform=NormalizeIntensity(cfg['normalize']))
    if cfg['save_pred']:
        from utils.volume_io import PredictionWriter
        savers.append(PredictionWriter(out_dir / 'predictions', nib, cfg['spacing'], cfg['num_classes']))
    names = '+'.join(w.upper() for w in nets)
    source = info['checkpoint'] if isinstance(info['checkpoint'], str) else ' and '.join(info['checkpoint'].values())
    print(f'{info["label"]}: networks {names} of {source} on {len(dataset)} cases of '
          f'{dataset.list_file}, patch {"x".join(map(str, cfg["patch_size"]))}, '
          f'stride {window["stride_xy"]}/{window["stride_z"]}'
          f'{", Gaussian weights" if window["weight"] is not None else ""}, device {device}')

    start = time.perf_counter()
    rows = test_all_case(list(nets.values()), Cases(dataset), lcc=cfg['lcc'], spacing=cfg['spacing'],
                         lineage_empty=cfg['lineage_empty'], save_fn=each(savers), progress=not cfg['no_progress'],
                         **window)
    wall = time.perf_counter() - start

    summary = summarize(rows)
    summary['n_gt_empty'] = int(sum(bool(r['gt_empty']) for r in rows))
    for c in range(1, cfg['num_classes']) if cfg['num_classes'] > 2 else ():
        summary[f'n_empty_{c}'] = int(sum(bool(r[f'empty_{c}']) for r in rows))
    units = 'mm' if cfg['spacing'] is not None else 'voxels'
    table = format_table(summary, f'{info["label"]} ({names})', units, cfg['num_classes'], cfg['lineage_empty'])

    settings = {k: cfg[k] for k in ('dataset', 'root_path', 'split', 'method', 'n_filters', 'num_classes',
                                    'normalize', 'patch_size', 'overlap', 'gaussian', 'lcc', 'spacing', 'lineage_empty',
                                    'batch_windows')}
    settings.update(list_file=str(dataset.list_file), pattern=cfg['pattern'], nets=list(nets),
                    stride_xy=window['stride_xy'], stride_z=window['stride_z'], device=str(device),
                    torch=torch.__version__)
    settings.update({k: cfg[k] for k in ('channels_last', 'amp', 'tf32', 'deterministic')})
    result = {
        'metrics': {k: v for k, v in summary.items() if isinstance(v, dict)},
        'n_cases': summary['n_cases'], 'n_empty': summary['n_empty'], 'n_gt_empty': summary['n_gt_empty'],
        'empty_cases': [r['case'] for r in rows if r['empty']],
        'units': {'dice': 'fraction', 'jaccard': 'fraction', 'hd95': units, 'asd': units},
        'checkpoint': info['checkpoint'], 'iteration': info['iteration'],
        'settings': settings, 'wall_seconds': wall, 'table': table,
    }
    write_cases_csv(rows, out_dir / 'test_cases.csv')
    (out_dir / 'test_summary.json').write_text(json.dumps(json_safe(result), indent=2, allow_nan=False) + '\n')
    print(table)
    print(f'{len(rows)} cases in {wall:.1f} s; per case: {out_dir / "test_cases.csv"}, '
          f'summary: {out_dir / "test_summary.json"}'
          + (f', predictions: {out_dir / "predictions"}' if cfg['save_pred'] else '')
          + (f', pictures: {out_dir / "pictures"}' if cfg['save_png'] else ''))


if __name__ == '__main__':
    run_cli(main)
