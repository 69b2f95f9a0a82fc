"""Sliding-window speed on one volume: utils.inference.test_single_case against two per-window loops.

    python -m benchmarks.inference_speed --volume "data/LA/2018LA_Seg_Training Set/<id>/mri_norm2.h5"
    python -m benchmarks.inference_speed --volume ... --stride_xy 36 --stride_z 8 --repeats 2   # fewer windows

The pair (VNet + ResNet34VNet, random weights, eval mode) segments the same volume three ways, interleaved
so that a slow spell of a shared machine hits every method alike:
  test_single_case   device-resident accumulation under torch.inference_mode() (what test.py runs)
  naive, no_grad     the lineage's loop under torch.no_grad(): per window a host->device copy, a forward,
                     a device->host copy and numpy accumulation
  released (grad)    the same loop without no_grad, as the released test code runs it (autograd records
                     every forward)
and prints the seconds of each run, the ratios of the fastest runs, and how far the outputs agree.
"""
import math
import os
import time

import h5py
import numpy as np
import torch

from benchmarks.lineage import per_window_loop
from utils.cli import OneLineParser, run_cli
from networks import build_net
from utils.cli import parse_patch
from utils.device import device_of as select_device
from utils.inference import test_single_case


def main(argv=None):
    p = OneLineParser(description=__doc__.split('\n')[0])
    p.add_argument('--volume', required=True, help='an .h5 file with an "image" dataset (X,Y,Z)')
    p.add_argument('--patch_size', type=parse_patch, default=(112, 112, 80))
    p.add_argument('--stride_xy', type=int, default=18)
    p.add_argument('--stride_z', type=int, default=4)
    p.add_argument('--n_filters', type=int, default=16)
    p.add_argument('--num_classes', type=int, default=2)
    p.add_argument('--nets', choices=['a', 'both'], default='both', help='VNet alone, or VNet + ResNet34VNet')
    p.add_argument('--repeats', type=int, default=1, help='runs of each method (the fastest is compared)')
    p.add_argument('--batch_windows', type=int, default=1, help='windows per forward in test_single_case')
    p.add_argument('--gpu', default='-1', help='CUDA index; -1 or cpu for the CPU')
    p.add_argument('--seed', type=int, default=0)
    p.add_argument('--threads', type=int, default=None,
                   help="CPU threads (torch's default: one per core); 1 gives steadier times on a busy machine")
    args = p.parse_args(argv)
    if args.threads is not None:
        torch.set_num_threads(args.threads)

    device = select_device(args.gpu)
    with h5py.File(args.volume, 'r') as f:
        image = f['image'][()].astype(np.float32)
    torch.manual_seed(args.seed)
    nets = [build_net(w, args.num_classes, args.n_filters).to(device).eval()
            for w in (['a', 'b'] if args.nets == 'both' else ['a'])]
    patch = tuple(args.patch_size)
    padded = [max(n, q) for n, q in zip(image.shape, patch)]
    n_windows = math.prod(math.ceil((n - q) / s) + 1
                          for n, q, s in zip(padded, patch, (args.stride_xy, args.stride_xy, args.stride_z)))
    print(f'volume {args.volume} {image.shape}, patch {"x".join(map(str, patch))}, stride '
          f'{args.stride_xy}/{args.stride_z}: {n_windows} windows x {len(nets)} nets, n_filters {args.n_filters}, '
          f'device {device}, {torch.get_num_threads()} threads, torch {torch.__version__}', flush=True)

    def sync():
        if device.type == 'cuda':
            torch.cuda.synchronize(device)

    def run(name, volume):
        if name == 'test_single_case':
            return test_single_case(nets, volume, args.stride_xy, args.stride_z, patch, args.num_classes,
                                    device=device, batch_size=args.batch_windows)
        return per_window_loop(nets, volume, args.stride_xy, args.stride_z, patch, args.num_classes, device,
                               grad=name == 'released (grad)')

    methods = ('test_single_case', 'naive, no_grad', 'released (grad)')
    # First calls pay one-off costs (kernel selection, the allocator growing its pools, CUDA context):
    # one window of each method, untimed, keeps them out of the comparison.
    corner = image[tuple(slice(0, q) for q in patch)]
    for name in methods:
        run(name, corner)
    # Wall time is what a user waits; CPU time (all threads of this process, user + system) is far less
    # disturbed by other processes on a shared machine, so both are reported. Load averages put them in context.
    wall = {name: [] for name in methods}
    cpu = {name: [] for name in methods}
    outputs = {}
    load_before = os.getloadavg()[0]
    for r in range(args.repeats):
        order = methods if r % 2 == 0 else methods[::-1]  # alternate who goes first
        for name in order:
            sync()
            start, start_cpu = time.perf_counter(), time.process_time()
            outputs[name] = run(name, image)
            sync()
            wall[name].append(time.perf_counter() - start)
            cpu[name].append(time.process_time() - start_cpu)
            print(f'  run {r + 1}: {name:<17} wall {wall[name][-1]:7.1f} s   cpu {cpu[name][-1]:7.1f} s', flush=True)

    print(f'\nload average (1 min) before {load_before:.2f}, after {os.getloadavg()[0]:.2f} on '
          f'{os.cpu_count()} cores; fastest of {args.repeats} run(s), seconds:')
    print(f'{"method":<18}{"wall":>9}{"cpu":>9}{"wall/window":>13}')
    for name in methods:
        print(f'{name:<18}{min(wall[name]):9.1f}{min(cpu[name]):9.1f}{min(wall[name]) / n_windows:13.2f}')
    for other, goal in (('naive, no_grad', '<= 1.05'), ('released (grad)', '< 1')):
        print(f'ratio test_single_case / {other:<16}: wall {min(wall["test_single_case"]) / min(wall[other]):.3f}'
              f'   cpu {min(cpu["test_single_case"]) / min(cpu[other]):.3f}   (goal {goal})')
    label, score = outputs['test_single_case']
    for name in ('naive, no_grad', 'released (grad)'):
        other_label, other_score = outputs[name]
        print(f'agreement with {name}: labels equal on {100 * np.mean(label == other_label):.4f}% of voxels, '
              f'max |score difference| {np.abs(score - other_score).max():.2e}')


if __name__ == '__main__':
    run_cli(main)
