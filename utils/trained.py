"""A trained pair ready to run, for test.py and segment.py: their shared flags, the networks of a train.py
checkpoint (its settings merged with the flags) or of the published state dicts, the device and the sliding window.

The merge: every setting a checkpoint records defaults to None on the command line, meaning "as trained". An unset
one takes the checkpoint's value; a given one wins, except where it contradicts the architecture the weights were
trained with (method, n_filters, num_classes): that flag is ignored with a note. Published state dicts record
nothing: they are evaluated with the paper's LA settings (PUBLISHED) unless flags say otherwise.
"""
import argparse
import math
import sys
from pathlib import Path

from dataloaders.datasets import LA_PATTERN
from dataloaders.transforms import NORMALIZE_MODES
from networks import build_net
from utils.checkpoint import CheckpointError, load_checkpoint, load_weights
from utils.cli import UsageError, parse_patch
from utils.device import amp_dtype, device_of, set_cudnn, set_tf32, use_channels_last
from utils.inference import gaussian_weight, overlap_strides

# Settings the weights fix: a given flag that differs is ignored with a note.
ARCH_KEYS = ('n_filters', 'num_classes')
# Settings a given flag overrides; unset, the checkpoint's value.
DATA_KEYS = ('root_path', 'pattern', 'patch_size', 'stride_xy', 'stride_z')
# The published networks' setting (LA, the paper's evaluation protocol), for state dicts that record none.
PUBLISHED = dict(dataset='la', root_path='data/LA', pattern=LA_PATTERN, patch_size=(112, 112, 80), stride_xy=18,
                 stride_z=4, n_filters=16, num_classes=2)


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


def add_trained_args(parser):
    """The flags of test.py and segment.py that find the run and choose the networks, device and sliding window."""
    g = parser.add_argument_group('the run (default: as trained)')
    g.add_argument('--dataset', default=None, help='with --exp, --method, --labelnum: the run folder of train.py '
                   '(default la)')
    g.add_argument('--exp', default='dual')
    g.add_argument('--method', choices=['dual', 'mt', 'sup'], default=None)
    g.add_argument('--labelnum', type=int, default=None,
                   help='default: the one run folder model/<dataset>/<exp>_<method>_<N>labels there is')
    g.add_argument('--snapshot_path', default=None, help='the run folder instead')
    g.add_argument('--root_path', default=None, help='dataset folder')
    g.add_argument('--pattern', default=None, help='h5 path of a case id, e.g. "{id}_norm.h5"')
    g.add_argument('--patch_size', type=parse_patch, default=None)
    g.add_argument('--n_filters', type=int, default=None)
    g.add_argument('--num_classes', type=int, default=None)
    g = parser.add_argument_group('networks')
    g.add_argument('--checkpoint', default=None, help="a train.py checkpoint (default: the run folder's final.pth)")
    g.add_argument('--vnet_ckpt', default=None, help='plain VNet state dict (published format): network A')
    g.add_argument('--resnet_ckpt', default=None, help='plain ResNet34VNet state dict (published format): network B')
    g.add_argument('--nets', choices=['a', 'b', 'both'], default=None,
                   help='networks whose softmax outputs are averaged (default: both for dual, a for mt and sup)')
    g.add_argument('--normalize', choices=NORMALIZE_MODES, default=None,
                   help="intensity normalisation of every volume read (default: the checkpoint's; published "
                        "state dicts: none)")
    g = parser.add_argument_group('sliding window and device')
    g.add_argument('--stride_xy', type=positive_int, default=None, help='in-plane stride (as trained; LA: 18)')
    g.add_argument('--stride_z', type=positive_int, default=None, help='stride along Z (as trained; LA: 4)')
    g.add_argument('--overlap', type=float, default=None,
                   help='strides from a fractional window overlap in [0, 1) instead of --stride_xy/--stride_z')
    g.add_argument('--gaussian', action='store_true', help='weight each window by a Gaussian importance map')
    g.add_argument('--batch_windows', type=positive_int, default=1, help='windows per forward pass')
    g.add_argument('--gpu', default='0', help='CUDA index; -1 or cpu for the CPU')
    g.add_argument('--amp', action='store_true', help='autocast forward passes: float16 on CUDA, bfloat16 on the CPU')
    g.add_argument('--channels_last', type=int, choices=[0, 1], nargs='?', const=1, default=None,
                   help='channels_last_3d networks and inputs (default: 1 on the CPU, 0 on CUDA)')
    g.add_argument('--tf32', type=int, choices=[0, 1], default=0, help='TensorFloat-32 on CUDA (as train.py)')
    g.add_argument('--deterministic', type=int, choices=[0, 1], default=0,
                   help="0: cuDNN's benchmark mode times its algorithms once for the window size; 1: its "
                        'deterministic algorithms, for label maps equal to the bit from one process to the next')
    g.add_argument('--debug', action='store_true', help='show full tracebacks')


def read_flags(parser, argv):
    """The flags as a dict, refusing combinations that are wrong whatever the checkpoint holds."""
    cfg = dict(vars(parser.parse_args(argv)))
    given = [f'--{k}' for k in ('stride_xy', 'stride_z') if cfg[k] is not None]
    if cfg['overlap'] is not None and given:
        raise UsageError(f'--overlap and {" / ".join(given)} are alternatives: pass one of them')
    if cfg['checkpoint'] and (cfg['vnet_ckpt'] or cfg['resnet_ckpt']):
        raise UsageError('pass either --checkpoint (a train.py checkpoint) or --vnet_ckpt/--resnet_ckpt, not both')
    return cfg


def open_trained(cfg):
    """What test.py and segment.py do first: the device (cuDNN and TF32 as the flags say), the trained networks in
    eval mode (cfg completed in place; notes of the merge printed) and the sliding window. Returns (nets, info,
    window, device): nets {'a'/'b': module}; info: checkpoint (a path, or {'a'/'b': path}), iteration, run folder
    (snapshot_path), label (the method, or 'published') and recipe (the data's import recipe, or None); window:
    keyword arguments of utils.inference.test_single_case."""
    device = device_of(cfg['gpu'])
    cfg['channels_last'] = use_channels_last(cfg['channels_last'], device)
    set_cudnn(cfg['deterministic'])
    set_tf32(cfg['tf32'])
    notes = []
    nets, info = load_published(cfg) if cfg['vnet_ckpt'] or cfg['resnet_ckpt'] else load_project(cfg, notes)
    for net in nets.values():
        net.to(device).eval()
    for note in notes:
        print(f'note: {note}', file=sys.stderr)
    return nets, info, window_settings(cfg, device), device


def chosen_nets(requested, available, default, source):
    wanted = {'a': ['a'], 'b': ['b'], 'both': ['a', 'b']}[requested or default]
    missing = [w for w in wanted if w not in available]
    if missing:
        raise UsageError(f'--nets {requested}: {source} has no network {missing[0].upper()} '
                         f'(it has {", ".join(w.upper() for w in available)})')
    return wanted


def run_folder(cfg):
    """--snapshot_path, else model/<dataset>/<exp>_<method>_<labelnum>labels as train.py names it; without
    --labelnum the one such folder there is."""
    if cfg['snapshot_path'] is not None:
        return Path(cfg['snapshot_path'])
    parent, stem = Path('model') / (cfg['dataset'] or 'la'), f'{cfg["exp"]}_{cfg["method"] or "dual"}'
    if cfg['labelnum'] is not None:
        return parent / f'{stem}_{cfg["labelnum"]}labels'
    found = sorted(parent.glob(f'{stem}_*labels'))
    if len(found) > 1:
        raise UsageError(f'{len(found)} run folders {parent}/{stem}_*labels ({", ".join(p.name for p in found)}): '
                         f'pass --labelnum')
    return found[0] if found else parent / f'{stem}_<N>labels'


def checkpoint_path(cfg):
    """--checkpoint, else final.pth of the run folder."""
    if cfg['checkpoint'] is not None:
        path = Path(cfg['checkpoint'])
        if not path.is_file():
            raise CheckpointError(f'--checkpoint {path}: file not found')
        return path
    snapshot_path = run_folder(cfg)
    path = snapshot_path / 'final.pth'
    if not path.is_file():
        others = sorted(p.name for p in snapshot_path.glob('*.pth')) if snapshot_path.is_dir() else []
        found = (f'; the folder holds {", ".join(others)}: pass --checkpoint {snapshot_path / others[0]} to use it'
                 if others else '' if snapshot_path.is_dir() else '; that folder does not exist')
        raise CheckpointError(f'no checkpoint {path}: looked in the run folder {snapshot_path}, where train.py '
                              f'writes final.pth when training finishes{found}. Pass the training flags (--dataset, '
                              f'--exp, --method, --labelnum or --snapshot_path), --checkpoint PATH, or '
                              f'--vnet_ckpt/--resnet_ckpt')
    return path


def as_trained(cfg, saved, method, path, notes):
    """Merge a checkpoint's config `saved` into the flags `cfg` (None: not given), as the module says."""
    if cfg['method'] not in (None, method):
        notes.append(f'--method {cfg["method"]} ignored: {path} is a {method} checkpoint')
    cfg['method'] = method
    saved = {**PUBLISHED, **{k: v for k, v in saved.items() if v is not None}}  # older configs lack some keys
    for key in ARCH_KEYS:
        if cfg[key] not in (None, saved[key]):
            notes.append(f'--{key} {cfg[key]} ignored: {path} was trained with {key} {saved[key]}')
        cfg[key] = saved[key]
    if cfg['dataset'] not in (None, saved['dataset']) and cfg['root_path'] is None:
        raise UsageError(f'--dataset {cfg["dataset"]}: {path} was trained on {saved["dataset"]}; pass --root_path')
    cfg['dataset'] = cfg['dataset'] or saved['dataset']
    for key in DATA_KEYS:
        if cfg[key] is None:
            cfg[key] = saved[key]
    cfg['patch_size'] = tuple(cfg['patch_size'])
    if cfg['normalize'] is None:  # checkpoints from before the flag trained on the stored values
        cfg['normalize'] = saved.get('normalize', 'none')


def load_project(cfg, notes):
    """A train.py checkpoint: its networks, its settings merged into cfg."""
    path = checkpoint_path(cfg)
    ckpt = load_checkpoint(path)
    if not isinstance(ckpt, dict) or 'net_a' not in ckpt or not isinstance(ckpt.get('config'), dict):
        if isinstance(ckpt, dict) and ckpt and all(hasattr(v, 'shape') for v in ckpt.values()):
            raise CheckpointError(f'{path}: a plain state dict, not a train.py checkpoint; '
                                  f'pass it as --vnet_ckpt or --resnet_ckpt')
        raise CheckpointError(f'{path}: not a train.py checkpoint (expected a dict with config and net_a)')
    saved = ckpt['config']
    method = ckpt.get('method') or saved.get('method', 'dual')
    as_trained(cfg, saved, method, path, notes)
    available = ['a', 'b'] if 'net_b' in ckpt else ['a']
    which = chosen_nets(cfg['nets'], available, 'both' if method == 'dual' else 'a', f'{path} ({method})')
    nets = {}
    for w in which:
        nets[w] = build_net(w, cfg['num_classes'], cfg['n_filters'])
        load_weights(nets[w], ckpt[f'net_{w}'], f'{path} [net_{w}]')
    return nets, {'checkpoint': str(path), 'iteration': ckpt.get('iteration'), 'snapshot_path': str(path.parent),
                  'label': method, 'recipe': saved.get('recipe')}


def load_published(cfg):
    """Plain state dicts of the published code: --vnet_ckpt (A) and/or --resnet_ckpt (B), built from the flags
    (PUBLISHED where unset)."""
    for key, value in PUBLISHED.items():
        cfg[key] = value if cfg[key] is None else cfg[key]
    cfg['method'] = cfg['method'] or 'dual'
    cfg['patch_size'] = tuple(cfg['patch_size'])
    if cfg['normalize'] is None:  # the published code trained on the stored values
        cfg['normalize'] = 'none'
    files = {w: f for w, f in (('a', cfg['vnet_ckpt']), ('b', cfg['resnet_ckpt'])) if f}
    which = chosen_nets(cfg['nets'], list(files), 'both' if len(files) == 2 else next(iter(files)),
                        '--vnet_ckpt/--resnet_ckpt')
    nets = {}
    for w in which:
        path, flag = Path(files[w]), '--vnet_ckpt' if w == 'a' else '--resnet_ckpt'
        if not path.is_file():
            raise CheckpointError(f'{flag} {path}: file not found')
        state = load_checkpoint(path)
        if isinstance(state, dict) and 'net_a' in state and 'config' in state:
            raise CheckpointError(f'{flag} {path}: a train.py checkpoint, not a plain state dict; '
                                  f'pass it as --checkpoint')
        if isinstance(state, dict) and isinstance(state.get('state_dict'), dict):
            state = state['state_dict']  # some releases wrap the weights once
        nets[w] = build_net(w, cfg['num_classes'], cfg['n_filters'])
        load_weights(nets[w], state, f'{flag} {path}')
    return nets, {'checkpoint': {w: str(Path(files[w])) for w in which}, 'iteration': None,
                  'snapshot_path': str(run_folder(cfg)), 'label': 'published', 'recipe': None}


def window_settings(cfg, device):
    """The sliding window as keyword arguments of utils.inference.test_single_case: --overlap's strides, else the
    given or the checkpoint's; --gaussian, --batch_windows, --amp, --channels_last."""
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


class UniqueNames:
    """Hands out file stems never handed out before in this run (per suffix): id, id_2, id_3, ..."""

    def __init__(self):
        self.used = set()

    def __call__(self, stem, suffix=''):
        name, k = stem, 1
        while name + suffix in self.used:
            k += 1
            name = f'{stem}_{k}'
        self.used.add(name + suffix)
        return name


def require_matplotlib():
    """--save_png without matplotlib: one line naming the package, before any work."""
    from dataloaders.pictures import optional_import
    optional_import('matplotlib.figure', '--save_png', 'matplotlib')


class PictureWriter:
    """<case id>.png with the label and prediction outlined and the Dice in its title (needs matplotlib)."""

    def __init__(self, folder, spacing, orientation=None):
        """orientation: the axis codes of the arrays it is given (None: unknown, axes named x, y, z)."""
        self.folder, self.spacing, self.orientation = Path(folder), spacing, orientation
        self.names = UniqueNames()
        self.folder.mkdir(parents=True, exist_ok=True)

    def __call__(self, case_id, pred, image, label, score=None, spacing=None, orientation=None):
        """label None (a new volume): the prediction alone, no Dice. spacing: this case's voxel size (default the
        writer's); orientation: the arrays' axis codes, which the picture's edges name."""
        from dataloaders.pictures import save_case_png
        from utils.metrics import calculate_metric_percase
        title = (f'{case_id} (no label)' if label is None
                 else f'{case_id}: Dice {100 * calculate_metric_percase(pred, label)[0]:.1f} %')
        save_case_png(self.folder / (self.names(str(case_id), '.png') + '.png'), image, label, pred, title,
                      self.spacing if spacing is None else spacing, flag='--save_png',
                      orientation=orientation or self.orientation)
