"""Is the project ready for a GPU? One command, at most about 8 minutes on one GPU: a table and a JSON.

    python -m benchmarks.gpu_check --gpu 0                          # one GPU, full LA size
    python -m benchmarks.gpu_check --quick --gpu -1                 # every step at tiny size on the CPU (CI)

Steps (all run in one process, except the tests):
  tests      python -m pytest -q -m cuda tests: the tests that need a CUDA device (they skip without one)
  train      dual steps at full LA size (patch 112x112x80, batch 4 with 2 labeled, n_filters 16, VNet +
             ResNet34VNet, every loss term; phantom volumes from dataloaders.synthetic) in float32, with --amp,
             with --channels_last and with both, then pair-sup steps (the supervised terms only, float32): seconds
             per iteration after --warmup steps, peak device memory, whether every loss term stayed finite, the
             ratios to float32, the dual / pair-sup overhead, and the projected time of 6000 iterations; the
             untrained networks' output biases are shifted so both classes are predicted (else L_con is 0)
  inference  one LA-size volume (180x140x88) at the LA stride 18/4 with the float32-trained pair (or --checkpoint):
             seconds on the device in float32 and with --amp --channels_last (test_single_case, as test.py
             segments), and the share of voxels whose label equals the CPU float32 label map of another
             implementation, the lineage's per-window loop (benchmarks.lineage), so that with --gpu -1 too the
             check compares two paths (check: >= 0.999 for float32)
--deterministic 0 (the default here) sets torch.backends.cudnn.benchmark = True, as train.py does. Exit status 1
when a check fails (a test, a non-finite loss, the agreement), 2 for bad arguments.
"""
import argparse
import json
import math
import platform
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]

import train
from benchmarks.common import SETTINGS, SUPERVISED_ONLY, step_on_batch, sync
from benchmarks.lineage import per_window_loop
from dataloaders.synthetic import make_phantom
from utils.checkpoint import load_checkpoint, load_weights
from utils.config import amp_dtype, select_device
from utils.inference import test_single_case
from utils.seeding import seed_everything

FULL = dict(patch=(112, 112, 80), n_filters=16, volume=(180, 140, 88), stride=(18, 4))
# 48x48x32: V-Net levels down to 3x3x2, clear of the 2x2x1 and 2x2x2 at which some CPUs' bfloat16 weight
# gradients are wrong (utils/precision.py)
QUICK = dict(patch=(48, 48, 32), n_filters=4, volume=(56, 52, 36), stride=(18, 4))
PAPER_ITERATIONS = 6000


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    p.add_argument('--gpu', default='0', help='CUDA index; -1 only with --quick')
    p.add_argument('--quick', action='store_true', help='tiny sizes and few steps: the CPU smoke run of every step')
    p.add_argument('--deterministic', type=int, default=0, choices=[0, 1],
                   help='1: cuDNN deterministic; 0: cudnn.benchmark picks the fastest convolutions')
    p.add_argument('--warmup', type=int, default=None, help='untimed steps per setting (3; --quick 1)')
    p.add_argument('--iterations', type=int, default=None, help='timed steps per setting (10; --quick 2)')
    p.add_argument('--checkpoint', default=None, help='a train.py checkpoint of a trained pair for the inference step')
    p.add_argument('--steps', default='tests,train,inference', help='which steps to run, comma-separated')
    p.add_argument('--out', default='benchmarks/cache/gpu_check.json', help='the JSON written')
    args = p.parse_args(argv)
    args.size = QUICK if args.quick else FULL
    args.warmup = (1 if args.quick else 3) if args.warmup is None else args.warmup
    args.iterations = (2 if args.quick else 10) if args.iterations is None else args.iterations
    args.steps = args.steps.split(',')
    bad = set(args.steps) - {'tests', 'train', 'inference'}
    if bad:
        p.error(f'--steps: unknown {", ".join(sorted(bad))} (choose from tests, train, inference)')
    if args.warmup < 0 or args.iterations < 1:
        p.error('--warmup must be >= 0 and --iterations >= 1')
    return args


def run_cuda_tests(quick):
    """pytest -m cuda in a child process: (passed, skipped, failed, seconds, last line)."""
    t0 = time.perf_counter()
    done = subprocess.run([sys.executable, '-m', 'pytest', '-q', '-m', 'cuda', '-p', 'no:cacheprovider', 'tests'],
                          cwd=ROOT, capture_output=True, text=True, timeout=180 if quick else 300)
    seconds = time.perf_counter() - t0
    last = (done.stdout.strip().splitlines() or [''])[-1]
    counts = {k: 0 for k in ('passed', 'skipped', 'failed', 'error')}
    for number, word in zip(last.split()[:-1], last.split()[1:]):
        word = word.rstrip(',')
        if number.isdigit() and word.rstrip('s') in counts:
            counts[word.rstrip('s')] += int(number)
    ok = done.returncode == 0 and counts['failed'] == counts['error'] == 0
    return dict(ok=ok, returncode=done.returncode, seconds=seconds, summary=last, **counts)


def phantom_batch(size, device):
    """4 phantoms of the patch size (2 labeled, 2 unlabeled as train.py sees them): image (4,1,X,Y,Z), label."""
    cases = [make_phantom(np.random.default_rng([7, i]), size['patch']) for i in range(4)]
    image = torch.from_numpy(np.stack([c[0] for c in cases]))[:, None].to(device)
    label = torch.from_numpy(np.stack([c[1] for c in cases])).long().to(device)
    return image, label


def train_config(size, gpu, **overrides):
    cfg = train.parse_args(['--dataset', 'la', '--patch_size', ','.join(map(str, size['patch'])),
                            '--n_filters', str(size['n_filters']), '--gpu', gpu])
    cfg.update(overrides)
    return cfg


@torch.no_grad()
def calibrated(nets, image):
    """Scale each network's output layer so its logit margin has std 2 and shift it so that about half the batch
    is foreground. Untrained networks predict one class with near-equal logits: their entropies tie, the filter
    of L_cps leaves one class in R, and with one prototype the contrastive term is 0, not exercised."""
    for net in nets.values():
        logits = net(image)[0]
        margin = logits[:, 1] - logits[:, 0]
        scale = 2 / margin.std().clamp_min(1e-6)
        net.out_conv.weight *= scale
        net.out_conv.bias *= scale
        net.out_conv.bias[1] -= (scale * margin).median()
    return nets


def time_steps(step, device, warmup, iterations):
    """(seconds per iteration, peak MiB (None on the CPU), every term finite, the last record, steps with a
    non-zero contrastive term) of the timed steps."""
    finite, con_steps = True, 0
    for _ in range(warmup):
        record = step()
        finite &= all(math.isfinite(float(v)) for v in record.values())
        con_steps += float(record['con']) != 0
    sync(device)
    if device.type == 'cuda':
        torch.cuda.reset_peak_memory_stats(device)
    t0 = time.perf_counter()
    for _ in range(iterations):
        record = step()
        # one host copy per step, as train.py's loop checks its terms
        values = dict(zip(record, torch.stack(list(record.values())).float().tolist()))
        finite &= all(math.isfinite(v) for v in values.values())
        con_steps += values['con'] != 0
    sync(device)
    seconds = (time.perf_counter() - t0) / iterations
    peak = torch.cuda.max_memory_allocated(device) / 2**20 if device.type == 'cuda' else None
    return seconds, peak, finite, values, con_steps


def mib(value):
    return 'n/a' if value is None else f'{value:.0f}'


def check_training(args, device):
    cfg = train_config(args.size, args.gpu)
    image, label = phantom_batch(args.size, device)
    rows, trained = {}, None
    runs = [(name, amp, cl, cfg) for name, amp, cl in SETTINGS]
    runs.append(('pair-sup', False, False, train_config(args.size, args.gpu, **SUPERVISED_ONLY)))
    for name, amp, channels_last, run_cfg in runs:
        torch.manual_seed(0)  # the same initial weights in every setting
        nets = calibrated(train.build_networks(run_cfg, device), image)
        step = step_on_batch(run_cfg, device, image, label, amp=amp, channels_last=channels_last, nets=nets)
        seconds, peak, finite, record, con_steps = time_steps(step, device, args.warmup, args.iterations)
        rows[name] = dict(seconds_per_iteration=seconds, peak_mib=peak, finite=finite, last_terms=record,
                          contrastive_steps=con_steps, projected_hours=seconds * PAPER_ITERATIONS / 3600)
        if name == 'float32':
            trained = step.nets
        del step
        if device.type == 'cuda':
            torch.cuda.empty_cache()
        print(f'train {name}: {seconds:.3f} s/iteration, peak {mib(peak)} MiB, finite {finite}, contrastive term '
              f'non-zero in {con_steps} of {args.warmup + args.iterations} steps', flush=True)
    for row in rows.values():
        row['ratio'] = row['seconds_per_iteration'] / rows['float32']['seconds_per_iteration']
    return rows, trained


def inference_nets(args, trained, device):
    """The pair to segment with: --checkpoint's, or the float32 training step's; eval mode, on the device."""
    if args.checkpoint is None:
        return [trained['net_a'].eval(), trained['net_b'].eval()]
    ckpt = load_checkpoint(args.checkpoint)
    nets = train.build_networks({**ckpt['config'], 'method': 'dual'}, device)
    for name in ('net_a', 'net_b'):
        load_weights(nets[name], ckpt[name], f'{args.checkpoint} [{name}]')
    return [nets['net_a'].eval(), nets['net_b'].eval()]


def check_inference(args, device, trained):
    nets = inference_nets(args, trained, device)
    patch, (stride_xy, stride_z) = args.size['patch'], args.size['stride']
    if args.checkpoint is not None:
        patch = tuple(load_checkpoint(args.checkpoint)['config']['patch_size'])
    volume = make_phantom(np.random.default_rng(11), args.size['volume'])[0]
    rows = {}

    def segment(where, amp, channels_last):
        t0 = time.perf_counter()
        pred = test_single_case(nets, volume, stride_xy, stride_z, patch, 2, device=where, channels_last=channels_last,
                                amp=amp)[0]  # returns numpy: the device has finished
        return pred, time.perf_counter() - t0
    for name, amp, channels_last in (('float32', False, False), ('amp + channels_last', True, True)):
        segment(device, amp, channels_last)  # warm-up (cudnn.benchmark tunes here)
        pred, seconds = segment(device, amp, channels_last)
        rows[name] = dict(seconds=seconds, pred=pred)
    # The reference is another implementation, the lineage's per-window loop, in float32 on the CPU: with
    # --gpu -1 the device's float32 row is then a check of test_single_case, not a label map against itself.
    for net in nets:
        net.to('cpu')
    t0 = time.perf_counter()
    cpu_pred = per_window_loop(nets, volume, stride_xy, stride_z, patch, 2, torch.device('cpu'), grad=False)[0]
    rows['cpu float32'] = dict(seconds=time.perf_counter() - t0, agreement_with_cpu=1.0)
    for row in rows.values():
        if 'pred' in row:
            row['agreement_with_cpu'] = float((row.pop('pred') == cpu_pred).mean())
    return dict(volume=list(volume.shape), patch=list(patch), stride=[stride_xy, stride_z], rows=rows,
                ok=rows['float32']['agreement_with_cpu'] >= 0.999)


def device_name(device):
    if device.type == 'cuda':
        return torch.cuda.get_device_name(device)
    return f'CPU ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)'


def report(result):
    """The table printed at the end (markdown)."""
    lines = [f'gpu_check {result["date"]}: {result["device_name"]}, torch {result["torch"]}, '
             f'{"quick (tiny sizes)" if result["quick"] else "full size"}, amp = {result["amp_dtype"]} autocast', '']
    if 'tests' in result:
        t = result['tests']
        lines += [f'CUDA tests (pytest -m cuda): {t["passed"]} passed, {t["skipped"]} skipped, {t["failed"]} failed '
                  f'({t["seconds"]:.0f} s){"" if t["ok"] else " -- FAILED: " + t["summary"]}', '']
    if 'train' in result:
        size = result['train_size']
        lines += [f'training steps: patch {size["patch"]}, batch 4 (2 labeled), n_filters {size["n_filters"]}, '
                  f'{result["iterations"]} timed after {result["warmup"]} warm-up', '',
                  '| setting | s / iteration | ratio to float32 | peak MiB | all terms finite | steps with L_con != 0 '
                  '| 6000 iterations (h) |', '|---|---|---|---|---|---|---|']
        for name, r in result['train'].items():
            lines.append(f'| {name} | {r["seconds_per_iteration"]:.3f} | {r["ratio"]:.3f} | {mib(r["peak_mib"])} | '
                         f'{r["finite"]} | {r["contrastive_steps"]} | {r["projected_hours"]:.2f} |')
        lines += ['', f'dual / pair-sup overhead (float32): {result["overhead_ratio"]:.3f}', '']
    if 'inference' in result:
        inf = result['inference']
        lines += [f'inference: volume {inf["volume"]}, patch {inf["patch"]}, stride {inf["stride"][0]}/'
                  f'{inf["stride"][1]}', '', '| setting | seconds | labels equal to the CPU float32 map |',
                  '|---|---|---|']
        for name, r in inf['rows'].items():
            lines.append(f'| {name} | {r["seconds"]:.2f} | {r["agreement_with_cpu"]:.5f} |')
        lines.append('')
    lines.append('all checks passed' if result['ok'] else 'FAILED: ' + ', '.join(result['failed']))
    return '\n'.join(lines)


def main(argv=None):
    args = parse_args(argv)
    if not args.quick and (str(args.gpu).strip().lower() in ('-1', 'cpu') or not torch.cuda.is_available()):
        sys.exit(f'error: --gpu {args.gpu}: no CUDA device to check; --quick --gpu -1 runs every step at tiny size '
                 f'on the CPU')
    device = select_device(args.gpu)
    seed_everything(0, bool(args.deterministic))  # --deterministic 0: cudnn.benchmark = True
    if args.quick and device.type == 'cpu':
        torch.set_num_threads(1)  # tiny tensors gain nothing from threads, and a shared machine's load hurts less
    start = time.perf_counter()
    result = dict(date=time.strftime('%Y-%m-%d'), device=str(device), device_name=device_name(device),
                  torch=torch.__version__, quick=args.quick, deterministic=args.deterministic,
                  cudnn_benchmark=torch.backends.cudnn.benchmark, amp_dtype=str(amp_dtype(device)).split('.')[-1],
                  warmup=args.warmup, iterations=args.iterations, failed=[])
    if 'tests' in args.steps:
        result['tests'] = run_cuda_tests(args.quick)
        print(f'tests: {result["tests"]["summary"]}', flush=True)
        if not result['tests']['ok']:
            result['failed'].append('CUDA tests')
    trained = None
    if 'train' in args.steps or 'inference' in args.steps:
        result['train_size'] = dict(patch=list(args.size['patch']), n_filters=args.size['n_filters'])
        result['train'], trained = check_training(args, device)
        result['overhead_ratio'] = (result['train']['float32']['seconds_per_iteration']
                                    / result['train']['pair-sup']['seconds_per_iteration'])
        result['failed'] += [f'non-finite loss ({n})' for n, r in result['train'].items() if not r['finite']]
    if 'inference' in args.steps:
        result['inference'] = check_inference(args, device, trained)
        if not result['inference']['ok']:
            result['failed'].append('inference agreement with the CPU < 0.999')
    result['ok'] = not result['failed']
    result['seconds'] = time.perf_counter() - start
    result['table'] = report(result)
    print(result['table'])
    print(f'{result["seconds"]:.0f} s in all')
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + '\n')
    print(f'wrote {out}')
    return 0 if result['ok'] else 1


if __name__ == '__main__':
    sys.exit(main())
