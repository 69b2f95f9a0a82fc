"""How close is each step to its speed limit? Ratios measured side by side in one run.

    python -m benchmarks.speed --la_root data/LA                         # CPU-sized defaults
    python -m benchmarks.speed --la_root data/LA --gpu 0 --patch_size 112,112,80 --n_filters 16
    python -m benchmarks.speed ... --checkpoint benchmarks/cache/la_study_runs/dual_seed1337/final.pth
    python -m benchmarks.speed --sections precision --repeats 5          # float32 / amp / channels-last

Sections (each prints its own lines; the closing table collects the ratios):
  step      one full dual step (every loss term, both optimisers) over the same step with only the two
            supervised losses; same batch and patch                          goal <= 1.15
  inference test_single_case over (a) the lineage's per-window loop under no_grad (goal <= 1.05 on CPU),
            (b) the released loop without no_grad (goal < 1), (c) the limit: windows x one forward (<= 1.10)
  overlap   --overlap 0.5 --gaussian over the fixed stride with a trained pair (--checkpoint): speed-up and
            Dice difference on real volumes
  data      samples/s the training loader delivers over samples/s a training step consumes (goal > 1)
  memory    peak RSS (CPU) / max allocated (CUDA) of a training step with and without the contrastive term
  precision the full dual step and test_single_case (stride --stride_xy/--stride_z) in float32, under --amp
            (bfloat16 on the CPU, float16 on CUDA), in channels_last_3d and both, each over float32-contiguous;
            the settings run interleaved, round by round, so a shared machine's load weighs on all alike
            goal: a full dual step <= 0.55 of float32 on the CPU

--amp / --channels_last run the step, inference, data and memory sections in that setting.
"""
import argparse
import copy
import json
import math
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

import train
from benchmarks.common import SETTINGS, SUPERVISED_ONLY, step_on_batch, timed, timed_side_by_side
from benchmarks.lineage import per_window_loop
from dataloaders.datasets import H5Dataset
from dataloaders.samplers import IterationBatchSampler, TwoStreamBatchSampler
from dataloaders.transforms import Compose, RandomCrop, ToTensor
from utils.checkpoint import load_checkpoint, load_weights
from utils.cli import run_cli
from utils.cli import parse_patch
from utils.device import amp_dtype, device_of as select_device
from utils.inference import gaussian_weight, overlap_strides, test_single_case
from utils.metrics import calculate_metric_percase

ROOT = Path(__file__).resolve().parents[1]

def train_config(args, **overrides):
    """train.py's settings for a dual step at the benchmark's patch and width."""
    cfg = train.parse_args(['--dataset', 'h5', '--root_path', str(args.la_root), '--patch_size',
                            ','.join(map(str, args.patch_size)), '--n_filters', str(args.n_filters),
                            '--gpu', args.gpu, '--labelnum', str(args.labelnum)])
    cfg.update(overrides)
    return cfg


def random_batch(cfg, device, seed=0):
    """A batch of real crops from the training list (labeled first), on the device."""
    dataset = H5Dataset(cfg['root_path'], pattern='{id}/mri_norm2.h5',
                        transform=Compose([RandomCrop(cfg['patch_size']), ToTensor()]))
    samples = [dataset[(i, seed, 0)] for i in range(cfg['batch_size'])]
    image = torch.stack([s['image'] for s in samples]).to(device)
    label = torch.stack([s['label'] for s in samples]).to(device)
    return image, label


def bench_step(args, device, results):
    full, sup = train_config(args), train_config(args, **SUPERVISED_ONLY)
    image, label = random_batch(full, device)
    fast = dict(amp=args.amp, channels_last=args.channels_last)
    t_full = timed(step_on_batch(full, device, image, label, **fast), device, args.repeats)
    t_sup = timed(step_on_batch(sup, device, image, label, **fast), device, args.repeats)
    print(f'step: full dual {t_full:.3f} s, supervised-only pair {t_sup:.3f} s')
    results['step: full dual / supervised-only pair'] = (t_full / t_sup, '<= 1.15')
    return t_full


def bench_inference(args, device, results):
    cfg = train_config(args, channels_last=bool(args.channels_last))  # the networks in test_single_case's format
    nets = [n.eval() for n in train.build_networks(cfg, device).values()]
    dataset = H5Dataset(cfg['root_path'], pattern='{id}/mri_norm2.h5')
    image = dataset[len(dataset) - 1]['image']
    patch, sxy, sz = args.patch_size, args.stride_xy, args.stride_z
    padded = [max(n, p) for n, p in zip(image.shape, patch)]
    windows = math.prod(math.ceil((n - p) / s) + 1 for n, p, s in zip(padded, patch, (sxy, sxy, sz)))
    window = torch.from_numpy(np.ascontiguousarray(image[:patch[0], :patch[1], :patch[2]]))[None, None].to(device)

    def one_forward():
        with torch.inference_mode():
            sum(F.softmax(net(window)[0], dim=1) for net in nets)
    t_forward = timed(one_forward, device, args.repeats)
    ours = timed(lambda: test_single_case(nets, image, sxy, sz, patch, 2, device=device,
                                          batch_size=args.batch_windows, channels_last=args.channels_last,
                                          amp=amp_dtype(device) if args.amp else None), device, args.repeats)
    naive = timed(lambda: per_window_loop(nets, image, sxy, sz, patch, 2, device, grad=False), device, args.repeats)
    released = timed(lambda: per_window_loop(nets, image, sxy, sz, patch, 2, device, grad=True), device,
                     args.repeats)
    print(f'inference on {image.shape} with {windows} windows x {len(nets)} nets: test_single_case {ours:.2f} s, '
          f'naive no_grad {naive:.2f} s, released {released:.2f} s, one forward {t_forward:.3f} s')
    results['inference: test_single_case / naive no_grad'] = (ours / naive, '<= 1.05 (CPU)')
    results['inference: test_single_case / released loop'] = (ours / released, '< 1')
    results['inference: test_single_case / (windows x forward)'] = (ours / (windows * t_forward), '<= 1.10')


def bench_overlap(args, device, results):
    ckpt = load_checkpoint(args.checkpoint)
    cfg = {**ckpt['config'], 'gpu': args.gpu}
    nets = train.build_networks(cfg, device)
    for name in ('net_a', 'net_b'):
        if name in nets:
            load_weights(nets[name], ckpt[name], f'{args.checkpoint} [{name}]')
    nets = [nets[n].eval() for n in ('net_a', 'net_b') if n in nets]
    patch = tuple(cfg['patch_size'])
    dataset = H5Dataset(cfg['root_path'], split='test', pattern='{id}/mri_norm2.h5')
    sxy, sz = overlap_strides(patch, 0.5)
    weight = gaussian_weight(patch).to(device)
    cases = range(min(args.overlap_cases, len(dataset)))
    t_fixed = t_overlap = 0.0
    diffs = []
    for i in cases:
        sample = dataset[i]
        t0 = time.perf_counter()
        fixed = test_single_case(nets, sample['image'], args.eval_stride_xy, args.eval_stride_z, patch, 2,
                                 device=device)[0]
        t1 = time.perf_counter()
        over = test_single_case(nets, sample['image'], sxy, sz, patch, 2, device=device, weight=weight)[0]
        t2 = time.perf_counter()
        t_fixed, t_overlap = t_fixed + t1 - t0, t_overlap + t2 - t1
        gt = sample['label'] > 0
        diffs.append(calculate_metric_percase(over > 0, gt)[0] - calculate_metric_percase(fixed > 0, gt)[0])
    print(f'overlap 0.5 + gaussian (strides {sxy}/{sz}) vs stride {args.eval_stride_xy}/{args.eval_stride_z} on '
          f'{len(diffs)} test volumes: {t_fixed:.1f} s -> {t_overlap:.1f} s, Dice difference '
          f'{100 * np.mean(diffs):+.2f} points (min {100 * min(diffs):+.2f})')
    results['overlap: speed-up of --overlap 0.5 --gaussian'] = (t_fixed / t_overlap, '> 1')
    results['overlap: Dice difference (points)'] = (100 * np.mean(diffs), '~ 0')


def bench_data(args, device, t_step, results):
    cfg = train_config(args)
    dataset = H5Dataset(cfg['root_path'], pattern='{id}/mri_norm2.h5',
                        transform=Compose([RandomCrop(cfg['patch_size']), ToTensor()]))
    labeled = list(range(cfg['labelnum']))
    batches = TwoStreamBatchSampler(labeled, list(range(cfg['labelnum'], len(dataset))), cfg['batch_size'],
                                    cfg['batch_size'] - cfg['labeled_bs'], seed=0)
    n = args.data_batches
    loader = torch.utils.data.DataLoader(dataset, batch_sampler=IterationBatchSampler(batches, 0, n + 2),
                                         num_workers=args.num_workers)
    it = iter(loader)
    next(it), next(it)  # workers started and warm
    t0 = time.perf_counter()
    for _ in range(n):
        next(it)
    delivered = n * cfg['batch_size'] / (time.perf_counter() - t0)
    consumed = cfg['batch_size'] / t_step
    print(f'data: loader ({args.num_workers} workers) {delivered:.1f} samples/s, a step consumes '
          f'{consumed:.1f} samples/s')
    results['data: loader samples/s / step samples/s'] = (delivered / consumed, '> 1')


def bench_precision(args, device, results):
    """Full dual step and sliding-window inference in the four SETTINGS, interleaved; ratios to float32."""
    cfg = train_config(args)
    image, label = random_batch(cfg, device)
    steps = {}
    for name, amp, channels_last in SETTINGS:
        torch.manual_seed(0)  # the same initial weights in every setting
        steps[name] = step_on_batch(cfg, device, image, label, amp=amp, channels_last=channels_last)
    t_step = timed_side_by_side(steps, device, args.repeats)

    nets = [n.eval() for n in train.build_networks(cfg, device).values()]
    dataset = H5Dataset(cfg['root_path'], pattern='{id}/mri_norm2.h5')
    volume = dataset[len(dataset) - 1]['image']
    outputs = {}

    def infer(name, amp, channels_last):
        own = [copy.deepcopy(n) for n in nets]  # test_single_case converts the networks to its memory format

        def run():
            outputs[name] = test_single_case(own, volume, args.stride_xy, args.stride_z, args.patch_size, 2,
                                             device=device, batch_size=args.batch_windows,
                                             channels_last=channels_last,
                                             amp=amp_dtype(device) if amp else None)[0]
        return run
    t_infer = timed_side_by_side({name: infer(name, amp, cl) for name, amp, cl in SETTINGS}, device,
                                 args.repeats)
    amp_name = str(amp_dtype(device)).split('.')[-1]
    print(f'precision ({args.repeats} interleaved rounds, fastest; amp = {amp_name} autocast; inference on '
          f'{volume.shape} at stride {args.stride_xy}/{args.stride_z}):')
    print('| setting | dual step (s) | ratio | inference (s) | ratio | labels equal to float32 |')
    print('|---|---|---|---|---|---|')
    for name, _, _ in SETTINGS:
        agree = float((outputs[name] == outputs['float32']).mean())
        print(f'| {name} | {t_step[name]:.3f} | {t_step[name] / t_step["float32"]:.3f} | {t_infer[name]:.2f} | '
              f'{t_infer[name] / t_infer["float32"]:.3f} | {agree:.5f} |')
    for name, _, _ in SETTINGS[1:]:
        goal = '<= 0.55 (CPU)' if name == 'amp + channels_last' else '< 1'
        results[f'precision: dual step, {name} / float32'] = (t_step[name] / t_step['float32'], goal)
        results[f'precision: inference, {name} / float32'] = (t_infer[name] / t_infer['float32'], '< 1')


def bench_memory(args, results):
    """Peak memory of one training step, each variant in a fresh process so peaks do not mix."""
    peaks = {}
    for name, con in (('with contrastive', '0.1'), ('without contrastive', '0')):
        out = subprocess.run([sys.executable, '-m', 'benchmarks.speed', '--la_root', str(Path(args.la_root).resolve()),
                              '--gpu', args.gpu, '--patch_size', ','.join(map(str, args.patch_size)),
                              '--n_filters', str(args.n_filters), '--labelnum', str(args.labelnum),
                              '--_memory_probe', con] + ['--amp'] * args.amp + ['--channels_last'] * args.channels_last,
                             cwd=ROOT, capture_output=True, text=True, check=True)
        peaks[name] = json.loads(out.stdout.strip().splitlines()[-1])
    unit = 'MiB max allocated (CUDA)' if peaks['with contrastive']['cuda'] else 'MiB peak RSS'
    print('memory: ' + ', '.join(f'{k} {v["mib"]:.0f}' for k, v in peaks.items()) + f' {unit}')
    results['memory: with / without contrastive'] = (
        peaks['with contrastive']['mib'] / peaks['without contrastive']['mib'], '~ 1')


def memory_probe(args):
    device = select_device(args.gpu)
    cfg = train_config(args, lambda_con=float(args._memory_probe))
    image, label = random_batch(cfg, device)
    step = step_on_batch(cfg, device, image, label, amp=args.amp, channels_last=args.channels_last)
    if device.type == 'cuda':
        torch.cuda.reset_peak_memory_stats(device)
    step()
    step()
    if device.type == 'cuda':
        mib = torch.cuda.max_memory_allocated(device) / 2**20
    else:
        mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
    print(json.dumps({'mib': mib, 'cuda': device.type == 'cuda'}))


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    p.add_argument('--la_root', default='benchmarks/cache/scale0.5-float16',
                   help='an LA-layout folder (la_study.py writes the half-resolution one)')
    p.add_argument('--gpu', default='-1')
    p.add_argument('--patch_size', type=parse_patch, default=(64, 64, 32))
    p.add_argument('--n_filters', type=int, default=8)
    p.add_argument('--labelnum', type=int, default=8, help='labeled cases (the data section samples both streams)')
    p.add_argument('--stride_xy', type=int, default=18, help='inference stride (LA: 18/4)')
    p.add_argument('--stride_z', type=int, default=4)
    p.add_argument('--batch_windows', type=int, default=1)
    p.add_argument('--repeats', type=int, default=3)
    p.add_argument('--num_workers', type=int, default=1)
    p.add_argument('--data_batches', type=int, default=10)
    p.add_argument('--checkpoint', default=None, help='a trained pair for the overlap section')
    p.add_argument('--eval_stride_xy', type=int, default=16, help='fixed stride the overlap section compares')
    p.add_argument('--eval_stride_z', type=int, default=8)
    p.add_argument('--overlap_cases', type=int, default=20)
    p.add_argument('--sections', default='step,inference,overlap,data,memory,precision')
    p.add_argument('--amp', action='store_true', help="train.py's --amp in the other sections")
    p.add_argument('--channels_last', action='store_true', help="train.py's --channels_last in the other sections")
    p.add_argument('--_memory_probe', default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    args.patch_size = tuple(args.patch_size)
    if args._memory_probe is not None:
        return memory_probe(args)
    device = select_device(args.gpu)
    sections = args.sections.split(',')
    print(f'device {device}, {torch.get_num_threads()} threads, torch {torch.__version__}, patch {args.patch_size}, '
          f'n_filters {args.n_filters}, {time.strftime("%Y-%m-%d")}', flush=True)
    results = {}
    t_step = bench_step(args, device, results) if 'step' in sections or 'data' in sections else None
    if 'inference' in sections:
        bench_inference(args, device, results)
    if 'overlap' in sections and args.checkpoint:
        bench_overlap(args, device, results)
    if 'data' in sections:
        bench_data(args, device, t_step, results)
    if 'memory' in sections:
        bench_memory(args, results)
    if 'precision' in sections:
        bench_precision(args, device, results)
    print('\n| ratio | measured | goal |\n|---|---|---|')
    for name, (value, goal) in results.items():
        print(f'| {name} | {value:.3f} | {goal} |')


if __name__ == '__main__':
    run_cli(main)
