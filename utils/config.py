"""Everything train.py and test.py agree on: dataset presets, shared flags, run folder, device.

Flags that a dataset preset may set default to None on the command line; `resolve`
fills them from the preset, then from DEFAULTS, so `--dataset synthetic` can pick a
CPU-sized run while `--dataset la` keeps the paper's settings.
"""
import argparse
import os
import warnings
from pathlib import Path

import torch

# One row per dataset: where it lives, how it is read, and the settings that differ.
PRESETS = {
    'la': dict(root_path='data/LA', pattern='{id}/mri_norm2.h5', num_classes=2,
               patch_size=(112, 112, 80), stride_xy=18, stride_z=4, labelnum=8),
    'pancreas': dict(root_path='data/Pancreas', pattern='{id}_norm.h5', num_classes=2,
                     patch_size=(96, 96, 96), stride_xy=16, stride_z=16, labelnum=12),
    # Generated phantoms, sized so the whole quick start runs in minutes on a laptop CPU.
    'synthetic': dict(root_path='data/Synthetic', pattern='{id}/mri_norm2.h5', num_classes=2,
                      patch_size=(48, 48, 32), stride_xy=16, stride_z=16, labelnum=8,
                      max_iterations=300, lr_step=200, n_filters=8, batch_size=4, labeled_bs=2),
    # Any folder of h5 volumes with list files; patch and classes come from the flags.
    'h5': dict(root_path=None, pattern='{id}.h5', num_classes=2,
               patch_size=(96, 96, 96), stride_xy=16, stride_z=16, labelnum=8),
}

# The paper's settings (METHOD.md), used wherever a preset is silent.
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


def add_common_args(parser):
    """Flags shared by train.py and test.py, with the field's names."""
    parser.add_argument('--dataset', choices=sorted(PRESETS), default='la')
    parser.add_argument('--root_path', default=None, help='dataset folder (default: the preset\'s, e.g. data/LA)')
    parser.add_argument('--pattern', default=None, help='h5 path of a case id, e.g. "{id}_norm.h5"')
    parser.add_argument('--exp', default='dual', help='experiment name, part of the run folder')
    parser.add_argument('--method', choices=['dual', 'mt', 'sup'], default='dual')
    parser.add_argument('--labelnum', type=int, default=None, help='labeled volumes: the first N of train.list')
    parser.add_argument('--snapshot_path', default=None,
                        help='run folder (default model/<dataset>/<exp>_<method>_<labelnum>labels)')
    parser.add_argument('--patch_size', type=parse_patch, default=None)
    parser.add_argument('--n_filters', type=int, default=None)
    parser.add_argument('--num_classes', type=int, default=None)
    parser.add_argument('--gpu', default='0', help='CUDA index; -1 or cpu for the CPU')
    parser.add_argument('--seed', type=int, default=1337)
    parser.add_argument('--debug', action='store_true', help='show full tracebacks')


def resolve(args):
    """Fill preset-dependent flags in place and return the args as a plain dict."""
    preset = PRESETS[args.dataset]
    for key, value in {**DEFAULTS, **preset}.items():
        if getattr(args, key, None) is None:
            setattr(args, key, value)
    if args.root_path is None:
        raise SystemExit(f'error: --dataset {args.dataset} has no default folder; pass --root_path')
    if args.n_filters is not None and args.n_filters <= 0:
        raise SystemExit(f'error: --n_filters {args.n_filters} must be positive')
    if args.num_classes < 2:
        raise SystemExit(f'error: --num_classes {args.num_classes} must be at least 2')
    args.patch_size = tuple(args.patch_size)
    if args.snapshot_path is None:
        args.snapshot_path = str(Path('model') / args.dataset / f'{args.exp}_{args.method}_{args.labelnum}labels')
    return dict(vars(args))


def select_device(gpu, local_rank=None):
    """'-1'/'cpu' -> CPU; 'N' -> cuda:N, falling back to the CPU with one warning when CUDA is absent."""
    gpu = str(gpu).strip().lower()
    if local_rank is not None:  # under torchrun each process owns one device
        return torch.device('cuda', local_rank) if torch.cuda.is_available() else torch.device('cpu')
    if gpu in ('-1', 'cpu'):
        return torch.device('cpu')
    if ',' in gpu:
        raise SystemExit(f'error: --gpu {gpu}: one process uses one GPU; for several, run '
                         f'torchrun --nproc_per_node {len(gpu.split(","))} train.py ... '
                         f'(with CUDA_VISIBLE_DEVICES={gpu})')
    if not gpu.isdigit():
        raise SystemExit(f'error: --gpu {gpu}: expected a CUDA index, -1 or cpu')
    if not torch.cuda.is_available():
        warnings.warn(f'--gpu {gpu}: CUDA is not available, running on the CPU', stacklevel=2)
        return torch.device('cpu')
    if int(gpu) >= torch.cuda.device_count():
        raise SystemExit(f'error: --gpu {gpu}: only {torch.cuda.device_count()} CUDA device(s) visible')
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
