"""Evaluate a trained pair on the test list, or segment new volumes (docs/method.md, "Evaluation").

    python test.py --labelnum 8 --gpu 0                             # the run folder of train.py, its final.pth
    python test.py --checkpoint model/la/dual_dual_8labels/final.pth --nets a
    python test.py --vnet_ckpt vnet.pth --resnet_ckpt resnet.pth    # state dicts saved by the published code
    python test.py --labelnum 8 --overlap 0.5 --gaussian            # far fewer windows, nearly the same masks
    python test.py --labelnum 8 --input scans/                      # label maps for new volumes, no metrics
    python test.py --checkpoint RUN/final.pth --input scan.nii.gz   # through the data's import recipe

Writes into the run folder (or --out_dir): test_cases.csv (one row per case), test_summary.json (mean and
std of each metric, empty cases, settings, checkpoint, wall time) and, with --save_pred, predictions/; prints
a Markdown table of mean ± std. The architecture (method, n_filters, num_classes, patch size, file pattern)
comes from the checkpoint, so only the flags that locate the run folder need repeating. So does the import
recipe of the data it was trained on (dataset.json): --input applies it to a NIfTI, NRRD or DICOM scan and
writes the label map on the scan's own grid.
"""
import argparse
import csv
import json
import math
import sys
import time
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from dataloaders import NORMALIZE_MODES, H5Dataset, NormalizeIntensity, normalize_intensity
from dataloaders.pictures import optional_import, save_case_png
from importers.volumes import StagingDir, recipe_problems, scan_problem, to_network_grid, to_scan_grid, to_stored
from utils.checkpoint import CheckpointError, load_checkpoint, load_weights
from utils.cli import OneLineParser, UsageError, run_cli
from utils.config import (PRESETS, add_common_args, amp_dtype, build_net, resolve, select_device,
                          use_channels_last)
from utils.inference import gaussian_weight, keep_largest_components, overlap_strides, test_all_case, test_single_case
from utils.metrics import METRICS, calculate_metric_percase, summarize
from utils.seeding import set_cudnn, set_tf32
from utils.volume_io import (PredictionWriter, UniqueNames, input_files, is_scan, label_dtype, label_map_suffix,
                             nibabel_or_none, read_scan_input, read_volume, spacing_affine, volume_suffix,
                             write_label_map)

# Settings a project checkpoint fixes (its weights only fit these) ...
ARCH_KEYS = ('n_filters', 'num_classes')
# ... and settings taken from its config unless given on the command line.
DATA_KEYS = ('root_path', 'pattern', 'patch_size', 'stride_xy', 'stride_z')


# ----------------------------------------------------------------------------------------------------------
# flags

def positive_int(text):
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f'{text}: must be a positive integer')
    return value


def parse_spacing(text):
    """'0.625,0.625,0.625' or '0.625' -> a tuple of 3 positive floats (mm per voxel along X, Y, Z)."""
    try:
        values = tuple(float(v) for v in text.split(','))
    except ValueError:
        raise argparse.ArgumentTypeError(f'{text!r}: expected x,y,z in mm, e.g. 0.625,0.625,0.625') from None
    if len(values) == 1:
        values = values * 3
    if len(values) != 3 or not all(math.isfinite(v) and v > 0 for v in values):
        raise argparse.ArgumentTypeError(f'{text!r}: expected one or three positive numbers')
    return values


def build_parser():
    p = OneLineParser(description=__doc__.split('\n')[0])
    add_common_args(p)
    g = p.add_argument_group('what to evaluate')
    g.add_argument('--checkpoint', default=None, help="a train.py checkpoint (default: the run folder's final.pth)")
    g.add_argument('--vnet_ckpt', default=None, help='plain VNet state dict (published format): network A')
    g.add_argument('--resnet_ckpt', default=None, help='plain ResNet34VNet state dict (published format): network B')
    g.add_argument('--nets', choices=['a', 'b', 'both'], default=None,
                   help='networks whose softmax outputs are averaged (default: both for dual, a for mt and sup)')
    g.add_argument('--split', default='test', help='evaluates <split>.list of the dataset folder (default test)')
    g.add_argument('--list_file', default=None, help='a list file of case ids instead of --split')
    g.add_argument('--input', default=None,
                   help='segment a volume or a folder of volumes (.h5 with "image", .npy, .nii/.nii.gz; with the '
                        "checkpoint's import recipe also .nrrd and a DICOM series folder) and write label maps; "
                        'no metrics. A scan goes through the recipe: its map, <name>_pred.nii.gz, has the '
                        "scan's shape, affine and label values")
    g.add_argument('--series', default=None, metavar='UID',
                   help='--input is a DICOM folder holding several CT series: read the one with this '
                        'SeriesInstanceUID')
    g.add_argument('--normalize', choices=NORMALIZE_MODES, default=None,
                   help="intensity normalisation of every volume read (default: the checkpoint's; published "
                        "state dicts: none)")
    g = p.add_argument_group('sliding window')
    g.add_argument('--stride_xy', type=positive_int, default=None, help="in-plane stride (preset's, 18 for LA)")
    g.add_argument('--stride_z', type=positive_int, default=None, help="stride along Z (preset's, 4 for LA)")
    g.add_argument('--overlap', type=float, default=None,
                   help='strides from a fractional window overlap in [0, 1) instead of --stride_xy/--stride_z')
    g.add_argument('--gaussian', action='store_true', help='weight each window by a Gaussian importance map')
    g.add_argument('--batch_windows', type=positive_int, default=1,
                   help='windows per forward pass (default 1; measure others with benchmarks/inference_speed.py)')
    g.add_argument('--amp', action='store_true', help='autocast forward passes: float16 on CUDA, bfloat16 on the CPU')
    g.add_argument('--deterministic', type=int, choices=[0, 1], default=0,
                   help="0: cuDNN's benchmark mode times its convolution algorithms once for the window size, "
                        'which every forward pass shares; 1: its deterministic algorithms, untimed, for label maps '
                        'equal to the bit from one process to the next (benchmark mode may pick another algorithm '
                        'and move a voxel at a tie)')
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
                   help='one PNG per case in pictures/ (pictures_input/ with --input): three slices through the '
                        'label\'s centre, label and prediction outlined, Dice in the title (needs matplotlib)')
    fmt = g.add_mutually_exclusive_group()
    fmt.add_argument('--nifti', action='store_true',
                     help='--save_pred and --input write .nii.gz (needs nibabel; --save_pred\'s default when found)')
    fmt.add_argument('--h5', action='store_true', help='--save_pred and --input write .h5, even with nibabel')
    g.add_argument('--no_progress', action='store_true', help='no progress bar')
    return p


def parse_args(argv=None):
    """(cfg dict, set of the settings given explicitly on the command line)."""
    parser = build_parser()
    # argparse leaves attributes already present in the namespace alone unless the flag is given, so
    # pre-filled markers tell "given" from "defaulted" (a checkpoint's value must not beat a given flag).
    unset = object()
    watched = ('dataset', 'method') + ARCH_KEYS + DATA_KEYS
    args = parser.parse_args(argv, argparse.Namespace(**{k: unset for k in watched}))
    explicit = {k for k in watched if getattr(args, k) is not unset}
    for key in watched:
        if key not in explicit:
            setattr(args, key, parser.get_default(key))
    # --input and a checkpoint's config may need no folder: main() asks for one where it reads a list
    return resolve(args, folder_required=False), explicit


# ----------------------------------------------------------------------------------------------------------
# networks

def chosen_nets(requested, available, default, source):
    wanted = {'a': ['a'], 'b': ['b'], 'both': ['a', 'b']}[requested or default]
    missing = [w for w in wanted if w not in available]
    if missing:
        raise UsageError(f'--nets {requested}: {source} has no network {missing[0].upper()} '
                         f'(it has {", ".join(w.upper() for w in available)})')
    return wanted


def missing_checkpoint_message(run_dir):
    others = sorted(p.name for p in run_dir.glob('*.pth')) if run_dir.is_dir() else []
    found = (f'; the folder holds {", ".join(others)}: pass --checkpoint {run_dir / others[0]} to use it'
             if others else '' if run_dir.is_dir() else '; that folder does not exist')
    return (f'no checkpoint {run_dir / "final.pth"}: looked in the run folder {run_dir}, where train.py writes '
            f'final.pth when training finishes{found}. Pass the training flags (--dataset, --exp, --method, '
            f'--labelnum or --snapshot_path), --checkpoint PATH, or --vnet_ckpt/--resnet_ckpt')


def load_project(cfg, explicit, notes):
    """Load a train.py checkpoint; merge its config into cfg. Returns ({which: net}, checkpoint info)."""
    if cfg['checkpoint'] is not None:
        path = Path(cfg['checkpoint'])
        if not path.is_file():
            raise CheckpointError(f'--checkpoint {path}: file not found')
    else:
        path = Path(cfg['snapshot_path']) / 'final.pth'
        if not path.is_file():
            raise CheckpointError(missing_checkpoint_message(Path(cfg['snapshot_path'])))
    ckpt = load_checkpoint(path)
    if not isinstance(ckpt, dict) or 'net_a' not in ckpt or not isinstance(ckpt.get('config'), dict):
        if isinstance(ckpt, dict) and ckpt and all(torch.is_tensor(v) for v in ckpt.values()):
            raise CheckpointError(f'{path}: a plain state dict, not a train.py checkpoint; '
                                  f'pass it as --vnet_ckpt or --resnet_ckpt')
        raise CheckpointError(f'{path}: not a train.py checkpoint (expected a dict with config and net_a)')
    saved = ckpt['config']
    method = ckpt.get('method') or saved.get('method', 'dual')
    if 'method' in explicit and method != cfg['method']:
        notes.append(f'--method {cfg["method"]} ignored: {path} is a {method} checkpoint')
    cfg['method'] = method

    if 'dataset' not in explicit and saved.get('dataset') in PRESETS:
        cfg['dataset'] = saved['dataset']
    same_dataset = saved.get('dataset') == cfg['dataset']
    for key in ARCH_KEYS:
        if key in saved:
            if key in explicit and cfg[key] != saved[key]:
                notes.append(f'--{key} {cfg[key]} ignored: {path} was trained with {key} {saved[key]}')
            cfg[key] = saved[key]
    for key in DATA_KEYS:
        if key in explicit:
            continue
        value = saved.get(key) if same_dataset else None
        cfg[key] = value if value is not None else PRESETS[cfg['dataset']].get(key, cfg[key])
    cfg['patch_size'] = tuple(int(v) for v in cfg['patch_size'])

    if cfg['normalize'] is None:  # checkpoints from before the flag trained on the stored values
        cfg['normalize'] = saved.get('normalize', 'none')
    recipe = saved.get('recipe')
    if recipe is not None:
        problems = recipe_problems(recipe)
        if not problems and recipe['num_classes'] != cfg['num_classes']:
            problems = [f'num_classes {recipe["num_classes"]}, but the networks have {cfg["num_classes"]}']
        if problems:
            raise CheckpointError(f'{path}: its import recipe (the data folder\'s dataset.json): {problems[0]}')
    available = ['a', 'b'] if 'net_b' in ckpt else ['a']
    which = chosen_nets(cfg['nets'], available, 'both' if method == 'dual' else 'a', f'{path} ({method})')
    nets = {}
    for w in which:
        net = build_net(w, cfg['num_classes'], cfg['n_filters'])
        load_weights(net, ckpt[f'net_{w}'], f'{path} [net_{w}]')
        nets[w] = net
    return nets, {'checkpoint': str(path), 'iteration': ckpt.get('iteration'), 'run_dir': str(path.parent),
                  'label': method, 'recipe': recipe}


def load_published(cfg):
    """Plain state dicts of the published code: --vnet_ckpt (A) and/or --resnet_ckpt (B), built from flags."""
    files = {w: f for w, f in (('a', cfg['vnet_ckpt']), ('b', cfg['resnet_ckpt'])) if f}
    if cfg['normalize'] is None:  # the published code trained on the stored values
        cfg['normalize'] = 'none'
    which = chosen_nets(cfg['nets'], list(files), 'both' if len(files) == 2 else next(iter(files)),
                        '--vnet_ckpt/--resnet_ckpt')
    nets = {}
    for w in which:
        path = Path(files[w])
        flag = '--vnet_ckpt' if w == 'a' else '--resnet_ckpt'
        if not path.is_file():
            raise CheckpointError(f'{flag} {path}: file not found')
        state = load_checkpoint(path)
        if isinstance(state, dict) and 'net_a' in state and 'config' in state:
            raise CheckpointError(f'{flag} {path}: a train.py checkpoint, not a plain state dict; '
                                  f'pass it as --checkpoint')
        if isinstance(state, dict) and isinstance(state.get('state_dict'), dict):
            state = state['state_dict']  # some releases wrap the weights once
        net = build_net(w, cfg['num_classes'], cfg['n_filters'])
        load_weights(net, state, f'{flag} {path}')
        nets[w] = net
    return nets, {'checkpoint': {w: str(Path(files[w])) for w in which}, 'iteration': None,
                  'run_dir': cfg['snapshot_path'], 'label': 'published', 'recipe': None}


# ----------------------------------------------------------------------------------------------------------
# the test list

class PictureWriter:
    """save_fn for test_all_case: <case id>.png with the label and prediction outlined and the Dice in its title."""

    def __init__(self, folder, spacing):
        self.folder, self.spacing = Path(folder), spacing
        self.names = UniqueNames()
        self.folder.mkdir(parents=True, exist_ok=True)

    def __call__(self, case_id, pred, image, label, score=None, spacing=None):
        """label None (a volume of --input): the prediction alone, no Dice. spacing: this case's voxel size
        (default the writer's)."""
        if label is None:
            title = f'{case_id} (no label)'
        else:
            title = f'{case_id}: Dice {100 * calculate_metric_percase(pred, label)[0]:.1f} %'
        path = self.folder / (self.names(str(case_id), '.png') + '.png')
        save_case_png(path, image, label, pred, title, self.spacing if spacing is None else spacing,
                      flag='--save_png')


def each(savers):
    """One save_fn that calls every one of `savers` in turn; None when there is none."""
    if not savers:
        return None

    def save(*case):
        for saver in savers:
            saver(*case)
    return save


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

def window_settings(cfg, explicit):
    """(stride_xy, stride_z, weight or None): --overlap, else the given strides, else the preset's."""
    patch = cfg['patch_size']
    if cfg['overlap'] is not None:
        given = [f'--{k}' for k in ('stride_xy', 'stride_z') if k in explicit]
        if given:
            raise UsageError(f'--overlap and {" / ".join(given)} are alternatives: pass one of them')
        try:
            stride_xy, stride_z = overlap_strides(patch, cfg['overlap'])
        except ValueError as e:
            raise UsageError(f'--overlap {cfg["overlap"]}: {e}') from None
    else:
        stride_xy, stride_z = int(cfg['stride_xy']), int(cfg['stride_z'])
    weight = gaussian_weight(patch) if cfg['gaussian'] else None
    return stride_xy, stride_z, weight


def check_inputs(sources, recipe, checkpoint, nib, series=None):
    """Refuse, before any work, an --input volume that cannot be segmented with this checkpoint."""
    if series is not None and not any(path.is_dir() for path in sources):
        raise UsageError(f'--series {series}: --input {sources[0]} is no DICOM series folder')
    for path in sources:
        if recipe is None and (path.is_dir() or volume_suffix(path) == '.nrrd'):
            raise UsageError(f'--input {path}: NRRD and DICOM scans are read through the import recipe (dataset.json) '
                             f'of the data a checkpoint was trained on, and {checkpoint} holds none')
    if recipe is not None and nib is None and any(is_scan(p) for p in sources):
        raise UsageError(f'--input {sources[0]}: the label map of a scan is written as NIfTI, which needs nibabel: '
                         'pip install nibabel')


def segment_scan(path, recipe, segment, normalize, lcc, series=None):
    """(label map as the scan stores it, the scan, its affine, its voxel size) of a scan through the import
    recipe: onto the network's grid, the sliding window segment(image) -> (label, scores), and back.
    normalize: the checkpoint's --normalize, applied after the recipe as training applied it to the cases."""
    image, affine, spacing = read_scan_input(path, series)
    problem = scan_problem(image, recipe, affine)
    if problem is not None:
        raise UsageError(f'--input {path}: {problem}')
    network_image, grid = to_network_grid(image, affine, recipe, name=str(path))
    _, score = segment(normalize_intensity(network_image, normalize))
    classes = to_scan_grid(score, grid, recipe)
    if lcc:
        classes = keep_largest_components(classes, recipe['num_classes'])
    return to_stored(classes, grid, recipe), image, affine, spacing


def segment_inputs(cfg, nets, device, stride_xy, stride_z, weight, out_dir, nib, info):
    """--input: one label map per volume into <out_dir>/predictions_input, written only once every volume is
    segmented. With the checkpoint's import recipe, a scan (NIfTI, NRRD, DICOM series) goes through it and
    its map <name>_pred.nii.gz has the scan's shape, affine and label values; other volumes (.h5 and .npy,
    cases already imported) and every volume without a recipe are segmented as stored, their map <name>_pred
    in the volume's format (or --nifti / --h5's)."""
    recipe = info['recipe']
    sources = input_files(cfg['input'], series=recipe is not None)
    check_inputs(sources, recipe, info['checkpoint'], nib, cfg['series'])
    if recipe is not None and recipe['crop'] == 'label' and any(is_scan(p) for p in sources):
        print('note: the import recipe crops around the ground-truth label, which a new scan lacks: the whole scan '
              'is segmented', file=sys.stderr)

    def segment(image):
        return test_single_case(list(nets.values()), image, stride_xy, stride_z, cfg['patch_size'], cfg['num_classes'],
                                device=device, batch_size=cfg['batch_windows'], weight=weight,
                                channels_last=cfg['channels_last'], amp=amp_dtype(device) if cfg['amp'] else None)
    names = UniqueNames()
    with StagingDir(out_dir) as stage:
        folder = stage.path / 'predictions_input'
        folder.mkdir()
        pictures = PictureWriter(stage.path / 'pictures_input', cfg['spacing']) if cfg['save_png'] else None
        for path in tqdm(sources, desc='segment', unit='volume', disable=cfg['no_progress']):
            stem = path.name if path.is_dir() else path.name[:-len(volume_suffix(path))]
            if recipe is not None and is_scan(path):
                pred, image, affine, spacing = segment_scan(path, recipe, segment, cfg['normalize'], cfg['lcc'],
                                                            cfg['series'])
                kind = '.nii.gz'
            else:
                image, affine = read_volume(path)
                mean, std = float(image.mean()), float(image.std())
                # the normalisation the networks were trained with, exactly as training applied it
                image = normalize_intensity(image, cfg['normalize'])
                if cfg['normalize'] == 'none' and (abs(mean) > 1.0 or not 0.2 < std < 5.0):
                    tqdm.write(f'note: {path.name}: mean {mean:.3g}, std {std:.3g}, but the networks were trained on '
                               f'z-scored volumes; pass --normalize zscore if it is not normalised', file=sys.stderr)
                pred, _ = segment(image)
                if cfg['lcc']:
                    pred = keep_largest_components(pred, cfg['num_classes'])
                pred = pred.astype(label_dtype(cfg['num_classes']))
                kind = label_map_suffix(volume_suffix(path), cfg['nifti'], cfg['h5'])
                affine, spacing = (affine if affine is not None else spacing_affine(cfg['spacing'])), None
            write_label_map(pred, folder / (names(stem + '_pred', kind) + kind), nib, affine, source=path)
            if pictures is not None:
                pictures(stem, pred, image, None, spacing=spacing)
        stage.commit()
    print(f'wrote {len(sources)} label map(s) to {out_dir / "predictions_input"}'
          + (f', pictures to {out_dir / "pictures_input"}' if pictures else ''))


def main(argv=None):
    cfg, explicit = parse_args(argv)
    notes = []
    nib = nibabel_or_none()
    if cfg['nifti'] and nib is None:
        raise UsageError('--nifti needs nibabel, which is not installed: pip install nibabel')
    if cfg['series'] is not None and cfg['input'] is None:
        raise UsageError(f'--series {cfg["series"]}: chooses a DICOM series of --input, which is not given')
    if cfg['save_png']:
        optional_import('matplotlib.figure', '--save_png', 'matplotlib')  # before any case is segmented
    published = bool(cfg['vnet_ckpt'] or cfg['resnet_ckpt'])
    if published and cfg['checkpoint']:
        raise UsageError('pass either --checkpoint (a train.py checkpoint) or --vnet_ckpt/--resnet_ckpt, not both')
    device = select_device(cfg['gpu'])
    cfg['channels_last'] = use_channels_last(cfg['channels_last'], device)
    set_cudnn(cfg['deterministic'])
    set_tf32(cfg['tf32'])

    nets, info = load_published(cfg) if published else load_project(cfg, explicit, notes)
    for net in nets.values():
        net.to(device).eval()
    stride_xy, stride_z, weight = window_settings(cfg, explicit)
    out_dir = Path(cfg['out_dir'] if cfg['out_dir'] is not None else info['run_dir'])
    for note in notes:
        print(f'note: {note}', file=sys.stderr)
    names = '+'.join(w.upper() for w in nets)
    if cfg['input'] is not None:
        segment_inputs(cfg, nets, device, stride_xy, stride_z, weight, out_dir, nib, info)
        return
    out_dir.mkdir(parents=True, exist_ok=True)

    if cfg['root_path'] is None:
        raise UsageError(f'--dataset {cfg["dataset"]} has no default folder: pass --root_path')
    pattern = cfg['pattern'] or PRESETS[cfg['dataset']]['pattern']
    dataset = H5Dataset(cfg['root_path'], split=cfg['split'], list_file=cfg['list_file'], pattern=pattern,
                        num_classes=cfg['num_classes'], transform=NormalizeIntensity(cfg['normalize']))
    savers = []
    if cfg['save_pred']:
        savers.append(PredictionWriter(out_dir / 'predictions', None if cfg['h5'] else nib, cfg['spacing'],
                                       cfg['num_classes']))
    if cfg['save_png']:
        savers.append(PictureWriter(out_dir / 'pictures', cfg['spacing']))
    source = info['checkpoint'] if isinstance(info['checkpoint'], str) else ' and '.join(info['checkpoint'].values())
    print(f'{info["label"]}: networks {names} of {source} on {len(dataset)} cases of '
          f'{dataset.list_file}, patch {"x".join(map(str, cfg["patch_size"]))}, stride {stride_xy}/{stride_z}'
          f'{", Gaussian weights" if weight is not None else ""}, device {device}')

    start = time.perf_counter()
    rows = test_all_case(list(nets.values()), Cases(dataset), cfg['num_classes'], cfg['patch_size'], stride_xy,
                         stride_z, device=device, lcc=cfg['lcc'], spacing=cfg['spacing'],
                         lineage_empty=cfg['lineage_empty'], save_fn=each(savers), batch_size=cfg['batch_windows'],
                         weight=weight, progress=not cfg['no_progress'], channels_last=cfg['channels_last'],
                         amp=amp_dtype(device) if cfg['amp'] else None)
    wall = time.perf_counter() - start

    summary = summarize(rows)
    summary['n_gt_empty'] = int(sum(bool(r['gt_empty']) for r in rows))
    for c in range(1, cfg['num_classes']) if cfg['num_classes'] > 2 else ():
        summary[f'n_empty_{c}'] = int(sum(bool(r[f'empty_{c}']) for r in rows))
    units = 'mm' if cfg['spacing'] is not None else 'voxels'
    label = f'{info["label"]} ({names})'
    table = format_table(summary, label, units, cfg['num_classes'], cfg['lineage_empty'])

    settings = {k: cfg[k] for k in ('dataset', 'root_path', 'split', 'method', 'n_filters', 'num_classes',
                                    'normalize', 'patch_size', 'overlap', 'gaussian', 'lcc', 'spacing', 'lineage_empty',
                                    'batch_windows')}
    settings.update(list_file=str(dataset.list_file), pattern=pattern, nets=list(nets), stride_xy=stride_xy,
                    stride_z=stride_z, device=str(device), torch=torch.__version__)
    settings.update(channels_last=cfg['channels_last'], amp=cfg['amp'], tf32=cfg['tf32'],
                    deterministic=cfg['deterministic'])
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
