"""A trained pair ready to run, for test.py and segment.py: their shared flags, the networks of a train.py
checkpoint (its settings merged with the flags) or of the published state dicts, the device, the sliding
window, and the case pictures.

The merge: every setting a checkpoint records defaults to None on the command line, meaning "as trained".
An unset one takes the checkpoint's value (the preset's where the checkpoint has none); a given one wins,
except where it contradicts the architecture the weights were trained with (method, n_filters,
num_classes): that flag is ignored with a note.
"""
import argparse
import math
import sys
from pathlib import Path

import torch

from dataloaders import NORMALIZE_MODES
from dataloaders.pictures import optional_import, save_case_png
from importers.volumes import recipe_problems
from utils.checkpoint import CheckpointError, load_checkpoint, load_weights
from utils.cli import UsageError
from utils.config import PRESETS, add_common_args, amp_dtype, build_net, resolve, select_device, use_channels_last
from utils.inference import gaussian_weight, overlap_strides
from utils.metrics import calculate_metric_percase
from utils.seeding import set_cudnn, set_tf32
from utils.volume_io import UniqueNames, nibabel_or_none

# Settings the weights fix: a given flag that differs is ignored with a note.
ARCH_KEYS = ('n_filters', 'num_classes')
# Settings a given flag overrides; unset, the checkpoint's value when it was trained on the same dataset.
DATA_KEYS = ('root_path', 'pattern', 'patch_size', 'stride_xy', 'stride_z')


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


def train_default(key):
    """train.py's default of a flag that this module's parsers leave unset (None) until the checkpoint is read."""
    parser = argparse.ArgumentParser()
    add_common_args(parser)
    return parser.get_default(key)


def add_trained_args(parser):
    """The flags of test.py and segment.py that choose the networks, the device and the sliding window."""
    add_common_args(parser)
    parser.set_defaults(dataset=None, method=None)  # as trained
    g = parser.add_argument_group('networks')
    g.add_argument('--checkpoint', default=None, help="a train.py checkpoint (default: the run folder's final.pth)")
    g.add_argument('--vnet_ckpt', default=None, help='plain VNet state dict (published format): network A')
    g.add_argument('--resnet_ckpt', default=None, help='plain ResNet34VNet state dict (published format): network B')
    g.add_argument('--nets', choices=['a', 'b', 'both'], default=None,
                   help='networks whose softmax outputs are averaged (default: both for dual, a for mt and sup)')
    g.add_argument('--normalize', choices=NORMALIZE_MODES, default=None,
                   help="intensity normalisation of every volume read (default: the checkpoint's; published "
                        "state dicts: none)")
    g = parser.add_argument_group('sliding window')
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


def read_flags(parser, argv):
    """The flags as a dict, refusing combinations that are wrong whatever the checkpoint holds."""
    cfg = dict(vars(parser.parse_args(argv)))
    given = [f'--{k}' for k in ('stride_xy', 'stride_z') if cfg[k] is not None]
    if cfg['overlap'] is not None and given:
        raise UsageError(f'--overlap and {" / ".join(given)} are alternatives: pass one of them')
    if cfg['checkpoint'] and (cfg['vnet_ckpt'] or cfg['resnet_ckpt']):
        raise UsageError('pass either --checkpoint (a train.py checkpoint) or --vnet_ckpt/--resnet_ckpt, not both')
    return cfg


def prepare_device(cfg):
    """The device of --gpu, with --channels_last resolved on it and cuDNN and TF32 set as the flags say."""
    device = select_device(cfg['gpu'])
    cfg['channels_last'] = use_channels_last(cfg['channels_last'], device)
    set_cudnn(cfg['deterministic'])
    set_tf32(cfg['tf32'])
    return device


def complete(cfg):
    """Fill every setting still unset from --dataset's preset (train.py's defaults where that is unset too)."""
    for key in ('dataset', 'method'):
        if cfg[key] is None:
            cfg[key] = train_default(key)
    cfg.update(resolve(argparse.Namespace(**cfg), folder_required=False))
    cfg['patch_size'] = tuple(int(v) for v in cfg['patch_size'])


def load_networks(cfg, device, notes):
    """({'a'/'b': network in eval mode on device}, info) of --checkpoint, the run folder's final.pth or
    --vnet_ckpt/--resnet_ckpt; cfg completed in place. info: checkpoint (a path, or {'a'/'b': path}),
    iteration, run_dir, label (the method, or 'published') and recipe (the data's import recipe or None)."""
    if cfg['vnet_ckpt'] or cfg['resnet_ckpt']:
        complete(cfg)
        nets, info = load_published(cfg)
    else:
        nets, info = load_project(cfg, notes)
    for net in nets.values():
        net.to(device).eval()
    return nets, info


def chosen_nets(requested, available, default, source):
    wanted = {'a': ['a'], 'b': ['b'], 'both': ['a', 'b']}[requested or default]
    missing = [w for w in wanted if w not in available]
    if missing:
        raise UsageError(f'--nets {requested}: {source} has no network {missing[0].upper()} '
                         f'(it has {", ".join(w.upper() for w in available)})')
    return wanted


def checkpoint_path(cfg):
    """--checkpoint, else final.pth of the run folder that train.py's flags name."""
    if cfg['checkpoint'] is not None:
        path = Path(cfg['checkpoint'])
        if not path.is_file():
            raise CheckpointError(f'--checkpoint {path}: file not found')
        return path
    flags = dict(cfg)
    complete(flags)
    run_dir = Path(flags['snapshot_path'])
    path = run_dir / 'final.pth'
    if not path.is_file():
        others = sorted(p.name for p in run_dir.glob('*.pth')) if run_dir.is_dir() else []
        found = (f'; the folder holds {", ".join(others)}: pass --checkpoint {run_dir / others[0]} to use it'
                 if others else '' if run_dir.is_dir() else '; that folder does not exist')
        raise CheckpointError(f'no checkpoint {path}: looked in the run folder {run_dir}, where train.py writes '
                              f'final.pth when training finishes{found}. Pass the training flags (--dataset, --exp, '
                              f'--method, --labelnum or --snapshot_path), --checkpoint PATH, or '
                              f'--vnet_ckpt/--resnet_ckpt')
    return path


def as_trained(cfg, saved, method, path, notes):
    """Merge a checkpoint's config `saved` into the flags `cfg` (None: not given), as the module says."""
    if cfg['method'] not in (None, method):
        notes.append(f'--method {cfg["method"]} ignored: {path} is a {method} checkpoint')
    cfg['method'] = method
    if cfg['dataset'] is None and saved.get('dataset') in PRESETS:
        cfg['dataset'] = saved['dataset']
    for key in ARCH_KEYS:
        if key in saved:
            if cfg[key] not in (None, saved[key]):
                notes.append(f'--{key} {cfg[key]} ignored: {path} was trained with {key} {saved[key]}')
            cfg[key] = saved[key]
    if saved.get('dataset') == (cfg['dataset'] or train_default('dataset')):
        for key in DATA_KEYS:
            if cfg[key] is None:
                cfg[key] = saved.get(key)
    if cfg['normalize'] is None:  # checkpoints from before the flag trained on the stored values
        cfg['normalize'] = saved.get('normalize', 'none')
    complete(cfg)


def load_project(cfg, notes):
    """A train.py checkpoint: its networks, its settings merged into cfg."""
    path = checkpoint_path(cfg)
    ckpt = load_checkpoint(path)
    if not isinstance(ckpt, dict) or 'net_a' not in ckpt or not isinstance(ckpt.get('config'), dict):
        if isinstance(ckpt, dict) and ckpt and all(torch.is_tensor(v) for v in ckpt.values()):
            raise CheckpointError(f'{path}: a plain state dict, not a train.py checkpoint; '
                                  f'pass it as --vnet_ckpt or --resnet_ckpt')
        raise CheckpointError(f'{path}: not a train.py checkpoint (expected a dict with config and net_a)')
    saved = ckpt['config']
    method = ckpt.get('method') or saved.get('method', 'dual')
    as_trained(cfg, saved, method, path, notes)
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


def open_trained(cfg):
    """What test.py and segment.py do first: refuse an output flag whose package is missing (before any work),
    then the device, the trained networks (cfg completed in place, the notes of the merge printed) and the sliding
    window. Returns (nets, info, window, device, nib): load_networks' two, window_settings', the device, and
    nibabel (None when missing)."""
    nib = nibabel_or_none()
    if cfg['nifti'] and nib is None:
        raise UsageError('--nifti needs nibabel, which is not installed: pip install nibabel')
    if cfg['save_png']:
        optional_import('matplotlib.figure', '--save_png', 'matplotlib')
    device = prepare_device(cfg)
    notes = []
    nets, info = load_networks(cfg, device, notes)
    window = window_settings(cfg, device)
    for note in notes:
        print(f'note: {note}', file=sys.stderr)
    return nets, info, window, device, nib


def window_settings(cfg, device):
    """The sliding window as keyword arguments of utils.inference's test_single_case and test_all_case:
    --overlap's strides, else the given or the checkpoint's or the preset's; --gaussian, --batch_windows,
    --amp, --channels_last."""
    patch = cfg['patch_size']
    if cfg['overlap'] is not None:
        try:
            stride_xy, stride_z = overlap_strides(patch, cfg['overlap'])
        except ValueError as e:
            raise UsageError(f'--overlap {cfg["overlap"]}: {e}') from None
    else:
        stride_xy, stride_z = int(cfg['stride_xy']), int(cfg['stride_z'])
    return dict(stride_xy=stride_xy, stride_z=stride_z, patch_size=patch, num_classes=cfg['num_classes'],
                device=device, batch_size=cfg['batch_windows'], channels_last=cfg['channels_last'],
                weight=gaussian_weight(patch) if cfg['gaussian'] else None,
                amp=amp_dtype(device) if cfg['amp'] else None)


class PictureWriter:
    """<case id>.png with the label and prediction outlined and the Dice in its title; a save_fn of
    utils.inference.test_all_case."""

    def __init__(self, folder, spacing):
        self.folder, self.spacing = Path(folder), spacing
        self.names = UniqueNames()
        self.folder.mkdir(parents=True, exist_ok=True)

    def __call__(self, case_id, pred, image, label, score=None, spacing=None, orientation=None):
        """label None (a new volume): the prediction alone, no Dice. spacing: this case's voxel size
        (default the writer's); orientation: the arrays' axis codes, which the picture's edges name."""
        if label is None:
            title = f'{case_id} (no label)'
        else:
            title = f'{case_id}: Dice {100 * calculate_metric_percase(pred, label)[0]:.1f} %'
        path = self.folder / (self.names(str(case_id), '.png') + '.png')
        save_case_png(path, image, label, pred, title, self.spacing if spacing is None else spacing,
                      flag='--save_png', orientation=orientation)
