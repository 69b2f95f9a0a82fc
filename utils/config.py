"""Everything train.py, test.py and segment.py agree on: dataset presets, shared flags, run folder, device, networks;
and train.py's checks of its settings.

Flags that a dataset preset may set default to None on the command line; `resolve`
fills them from the preset, then from DEFAULTS, so `--dataset synthetic` can pick a
CPU-sized run while `--dataset la` keeps the paper's settings.

A flag either defines a run (what it computes) or controls how it runs (where files are, how often
to log, which device): the latter live in the argument group titled RUN_CONTROL, and a resumed run
must match the checkpoint's value of every other flag (`run_keys`).
"""
import argparse
import math
import os
import sys
from pathlib import Path

import torch

from dataloaders.datasets import LA_PATTERN
from networks import build_network
from utils.cli import UsageError
from utils.tensorboard_log import summary_writer_class

# One row per dataset: where it lives, how it is read, and the settings that differ.
PRESETS = {
    'la': dict(root_path='data/LA', pattern=LA_PATTERN, num_classes=2,
               patch_size=(112, 112, 80), stride_xy=18, stride_z=4, labelnum=8),
    'pancreas': dict(root_path='data/Pancreas', pattern='{id}_norm.h5', num_classes=2,
                     patch_size=(96, 96, 96), stride_xy=16, stride_z=16, labelnum=12),
    # Generated phantoms, sized so the whole quick start runs in minutes on a laptop CPU.
    'synthetic': dict(root_path='data/Synthetic', pattern=LA_PATTERN, num_classes=2,
                      patch_size=(48, 48, 32), stride_xy=16, stride_z=16, labelnum=8,
                      max_iterations=300, lr_step=200, n_filters=8, batch_size=4, labeled_bs=2),
    # Any folder of h5 volumes with list files; patch and classes come from the flags.
    'h5': dict(root_path=None, pattern='{id}.h5', num_classes=2,
               patch_size=(96, 96, 96), stride_xy=16, stride_z=16, labelnum=8),
}

# The paper's settings (docs/method.md), used wherever a preset is silent.
DEFAULTS = dict(max_iterations=6000, lr_step=2500, n_filters=16, batch_size=4, labeled_bs=2)


def parse_patch(text):
    """'112,112,80' -> (112, 112, 80); every dimension must be divisible by 16."""
    try:
        dims = tuple(int(v) for v in text.split(','))
    except ValueError:
        raise argparse.ArgumentTypeError(f'--patch_size {text!r}: expected three integers like 112,112,80')
    if len(dims) != 3 or any(d <= 0 or d % 16 for d in dims):
        raise argparse.ArgumentTypeError(
            f'--patch_size {text!r}: need three positive sizes divisible by 16 (the V-Net halves them 4 times)')
    return dims


# The title of the argument group of the flags that do not change what a run computes.
RUN_CONTROL = 'run control'


def add_common_args(parser, control=None):
    """Flags shared by train.py, test.py and segment.py, with the field's names. Those that define a run go to
    `parser` (a parser or an argument group), where files are and which device to `control` (default
    `parser`): train.py passes its RUN_CONTROL group."""
    control = parser if control is None else control
    parser.add_argument('--dataset', choices=sorted(PRESETS), default='la')
    control.add_argument('--root_path', default=None, help='dataset folder (default: the preset\'s, e.g. data/LA)')
    control.add_argument('--pattern', default=None, help='h5 path of a case id, e.g. "{id}_norm.h5"')
    control.add_argument('--exp', default='dual', help='experiment name, part of the run folder')
    parser.add_argument('--method', choices=['dual', 'mt', 'sup'], default='dual')
    parser.add_argument('--labelnum', type=int, default=None, help='labeled volumes: the first N of train.list')
    control.add_argument('--snapshot_path', default=None,
                         help='run folder (default model/<dataset>/<exp>_<method>_<labelnum>labels)')
    parser.add_argument('--patch_size', type=parse_patch, default=None)
    parser.add_argument('--n_filters', type=int, default=None)
    parser.add_argument('--num_classes', type=int, default=None)
    control.add_argument('--gpu', default='0', help='CUDA index; -1 or cpu for the CPU')
    # a run key: other kernels round differently, so a resume in the other format would not be bit-exact
    parser.add_argument('--channels_last', type=int, choices=[0, 1], nargs='?', const=1, default=None,
                        help='channels_last_3d networks and inputs: 1 or 0 (default: 1 on the CPU, where it is '
                             'faster with the same labels; 0 on CUDA, not yet measured there)')
    parser.add_argument('--seed', type=int, default=1337)
    parser.add_argument('--tf32', type=int, choices=[0, 1], default=0,
                        help='1: float32 convolutions and matrix products on CUDA in TensorFloat-32 (factors rounded '
                             'to 10 mantissa bits; faster on Ampere and later GPUs); 0: true float32, whose '
                             'numbers match the CPU\'s to rounding, the reference setting. cuDNN alone would pick '
                             'TF32 for convolutions. No effect on the CPU or on --amp\'s float16 operations')
    control.add_argument('--debug', action='store_true', help='show full tracebacks')


def run_keys(parser):
    """The settings a resumed run must share with its checkpoint: every flag of `parser` outside its
    RUN_CONTROL group. A new flag is a run key unless put there, so forgetting it refuses a resume
    rather than letting one change the run."""
    # argparse keeps its groups in private attributes; they have been stable since Python 2.7
    return [action.dest for group in parser._action_groups if group.title != RUN_CONTROL
            for action in group._group_actions if action.dest != 'help']


def resolve(args, folder_required=True):
    """Fill preset-dependent flags in place and return the args as a plain dict.

    folder_required=False leaves root_path None where neither flag nor preset names a folder (segment.py
    needs none)."""
    preset = PRESETS[args.dataset]
    for key, value in {**DEFAULTS, **preset}.items():
        if getattr(args, key, None) is None:
            setattr(args, key, value)
    if args.root_path is None and folder_required:
        raise UsageError(f'--dataset {args.dataset} has no default folder; pass --root_path')
    if args.n_filters is not None and args.n_filters <= 0:
        raise UsageError(f'--n_filters {args.n_filters} must be positive')
    if args.num_classes < 2:
        raise UsageError(f'--num_classes {args.num_classes} must be at least 2')
    args.patch_size = tuple(args.patch_size)
    if args.snapshot_path is None:
        args.snapshot_path = str(Path('model') / args.dataset / f'{args.exp}_{args.method}_{args.labelnum}labels')
    return dict(vars(args))


def use_channels_last(flag, device):
    """--channels_last resolved on `device`: the flag's 0 or 1, else on for the CPU only."""
    return device.type == 'cpu' if flag is None else bool(flag)


# A run sized for a CPU, as measured: 800 dual iterations of batches of 4 64x64x32 patches at n_filters 4 took
# 15.9 minutes on one core (docs/results.md, LA at CPU scale, 800 iterations). A step's cost grows about as
# batch x patch voxels x n_filters^2 (convolutions), a run's as that times its iterations.
CPU_RUN = dict(patch_size=(64, 64, 32), n_filters=4, max_iterations=800, lr_step=333, batch_size=4)
CPU_RUN_MINUTES = 15.9


def cpu_cost_warning(cfg, device):
    """Two lines for a run of the preset's full size (its patch, n_filters 16) that --gpu sent to the CPU
    because CUDA is missing: about how long it takes there, and the flags of a run sized for a CPU. None for
    any other run (CUDA, --gpu -1, the synthetic preset, a patch or width of the user's choice)."""
    if device.type != 'cpu' or str(cfg['gpu']).strip().lower() in ('-1', 'cpu') or cfg['dataset'] == 'synthetic':
        return None
    if tuple(cfg['patch_size']) != PRESETS[cfg['dataset']]['patch_size'] or cfg['n_filters'] != DEFAULTS['n_filters']:
        return None
    work = (cfg['max_iterations'] / CPU_RUN['max_iterations'] * cfg['batch_size'] / CPU_RUN['batch_size']
            * math.prod(cfg['patch_size']) / math.prod(CPU_RUN['patch_size'])
            * (cfg['n_filters'] / CPU_RUN['n_filters']) ** 2)
    patch = 'x'.join(map(str, cfg['patch_size']))
    flags = ' '.join(f'--{k} {",".join(map(str, v)) if isinstance(v, tuple) else v}'
                     for k, v in CPU_RUN.items() if k != 'batch_size')
    return (f'warning: {cfg["max_iterations"]} iterations of {patch} patches at n_filters {cfg["n_filters"]} '
            f'are about {work * CPU_RUN_MINUTES / 60:.0f} hours on one CPU core (a GPU job, {work:.0f}x a '
            f'CPU-sized run)\n'
            f'warning: sized for a CPU (about {CPU_RUN_MINUTES:.0f} min on one core): add {flags}; '
            f'or --gpu -1 to train the full size here')


def select_device(gpu, local_rank=None):
    """'-1'/'cpu' -> CPU; 'N' -> cuda:N, falling back to the CPU with one warning when CUDA is absent.

    Under torchrun (local_rank given) each process owns the GPU of its LOCAL_RANK, and '-1'/'cpu' still mean
    the CPU (the processes then talk over gloo). Another index than the default 0 cannot hold for every
    process: it is replaced, with one warning from local rank 0 that says so."""
    gpu = str(gpu).strip().lower()
    if gpu in ('-1', 'cpu'):
        return torch.device('cpu')
    if local_rank is not None:
        if not gpu.isdigit():
            raise UsageError(f'--gpu {gpu}: under torchrun each process uses the GPU of its LOCAL_RANK; choose the '
                             f'GPUs with CUDA_VISIBLE_DEVICES, or pass --gpu -1 for the CPU')
        if gpu != '0' and local_rank == 0:
            print(f'warning: --gpu {gpu} is replaced under torchrun: each process uses the GPU of its LOCAL_RANK '
                  f'(process i: cuda:i); choose the GPUs with CUDA_VISIBLE_DEVICES', file=sys.stderr)
        if not torch.cuda.is_available():
            return torch.device('cpu')
        if local_rank >= torch.cuda.device_count():
            raise UsageError(f'LOCAL_RANK {local_rank}: only {torch.cuda.device_count()} CUDA device(s) visible; '
                             f'lower torchrun --nproc_per_node')
        return torch.device('cuda', local_rank)
    if ',' in gpu:
        raise UsageError(f'--gpu {gpu}: one process uses one GPU; for several, run '
                         f'torchrun --nproc_per_node {len(gpu.split(","))} train.py ... '
                         f'(with CUDA_VISIBLE_DEVICES={gpu})')
    if not gpu.isdigit():
        raise UsageError(f'--gpu {gpu}: expected a CUDA index, -1 or cpu')
    if not torch.cuda.is_available():
        print(f'warning: --gpu {gpu}: CUDA is not available, running on the CPU', file=sys.stderr)
        return torch.device('cpu')
    if int(gpu) >= torch.cuda.device_count():
        raise UsageError(f'--gpu {gpu}: only {torch.cuda.device_count()} CUDA device(s) visible')
    return torch.device('cuda', int(gpu))


def amp_dtype(device):
    """The autocast dtype of --amp: float16 on CUDA (train.py adds a gradient scaler), bfloat16 elsewhere (the
    CPU's fast reduced precision; its float32 exponent range needs no scaler)."""
    return torch.float16 if torch.device(device).type == 'cuda' else torch.bfloat16


def env_rank():
    """(rank, world_size, local_rank) from torchrun's environment; (0, 1, None) otherwise."""
    if 'RANK' in os.environ and 'WORLD_SIZE' in os.environ:
        return int(os.environ['RANK']), int(os.environ['WORLD_SIZE']), int(os.environ.get('LOCAL_RANK', 0))
    return 0, 1, None


def init_distributed(device):
    """Join torchrun's process group: NCCL between GPUs, gloo between CPU processes."""
    torch.distributed.init_process_group('nccl' if device.type == 'cuda' else 'gloo')
    if device.type == 'cuda':
        torch.cuda.set_device(device)


# The pair by role, as build_network names them; a train.py checkpoint stores role r as 'net_' + r.
PAIR = {'a': 'vnet', 'b': 'resnet34'}


def build_net(which, num_classes, n_filters, has_dropout=True):
    """Network A (V-Net) or B (ResNet-34 V-Net) of the pair: one input channel, BatchNorm, as published.

    Dropout is on by default because the released training uses it; eval() turns it off, and the state
    dict does not depend on it, so one builder serves training, evaluation and published checkpoints.
    """
    return build_network(PAIR[which], n_channels=1, n_classes=num_classes, n_filters=n_filters,
                         normalization='batchnorm', has_dropout=has_dropout)


def check_config(cfg):
    """Refuse train.py flags that cannot train, before any work starts: one line naming flag and value."""
    for name in ('max_iterations', 'batch_size', 'lr_step', 'save_every', 'log_every', 'contrast_samples'):
        if cfg[name] < 1:
            raise UsageError(f'--{name} {cfg[name]} must be at least 1')
    if cfg['tensorboard']:
        summary_writer_class()  # a missing package stops the run here, not at the first logged step
    for name in ('num_workers', 'rampup', 'val_every', 'image_every', 'base_lr', 'alpha_mc', 'lambda_reg',
                 'lambda_urps', 'lambda_cps', 'lambda_con', 'consistency', 'contrast_tau'):
        if not cfg[name] >= 0:  # also refuses NaN
            raise UsageError(f'--{name} {cfg[name]} must be zero or more')
    for name, low, high in (('uncertain_percent', 0, 100), ('conf_thresh', 0, 1), ('ema_decay', 0, 1)):
        if not low <= cfg[name] <= high:
            raise UsageError(f'--{name} {cfg[name]} must lie in {low}..{high}')
    if cfg['dataset'] == 'synthetic' and cfg['num_classes'] not in (2, 3):
        raise UsageError(f'--dataset synthetic makes 2 or 3 classes, not --num_classes {cfg["num_classes"]}')


def check_split(cfg, num_cases, world_size=1):
    """Refuse a labeled/unlabeled split or batch that the training list of num_cases cannot fill."""
    semi = cfg['method'] != 'sup'
    if not 0 < cfg['labelnum'] <= num_cases:
        raise UsageError(f'--labelnum {cfg["labelnum"]} must be between 1 and the {num_cases} cases '
                         f'of the training list')
    if semi and cfg['labelnum'] == num_cases:
        raise UsageError(f'--labelnum {num_cases} leaves no unlabeled volume; '
                         f'use --method sup for fully supervised training')
    if semi and not 0 < cfg['labeled_bs'] < cfg['batch_size']:
        raise UsageError(f'--labeled_bs {cfg["labeled_bs"]} must be at least 1 and smaller than '
                         f'--batch_size {cfg["batch_size"]} (the rest of a batch is unlabeled)')
    if semi and cfg['labelnum'] < cfg['labeled_bs']:
        raise UsageError(f'--labelnum {cfg["labelnum"]} is smaller than --labeled_bs {cfg["labeled_bs"]}')
    if not semi and cfg['labelnum'] < cfg['batch_size']:
        raise UsageError(f'--labelnum {cfg["labelnum"]} is smaller than --batch_size {cfg["batch_size"]}')
    # under torchrun every rank takes its own slice of a global batch from each stream
    labeled_per_step = (cfg['labeled_bs'] if semi else cfg['batch_size']) * world_size
    unlabeled_per_step = (cfg['batch_size'] - cfg['labeled_bs']) * world_size if semi else 0
    if labeled_per_step > cfg['labelnum'] or unlabeled_per_step > num_cases - cfg['labelnum']:
        raise UsageError(f'a step on {world_size} process(es) takes {labeled_per_step} labeled and '
                         f'{unlabeled_per_step} unlabeled volumes, more than --labelnum {cfg["labelnum"]} of '
                         f'{num_cases} cases gives: lower --batch_size / --labeled_bs or --nproc_per_node')
