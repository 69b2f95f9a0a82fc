"""Is the project ready for a GPU? One command, at most about 8 minutes on one GPU: a table and a JSON.

    python -m benchmarks.gpu_check --gpu 0                          # one GPU, full LA size
    python -m benchmarks.gpu_check --quick --gpu -1                 # every step at tiny size on the CPU (CI)

Steps (in one process, except the tests and the train.py / test.py runs of `resume`):
  tests      python -m pytest -q -m cuda tests: the tests that need a CUDA device (they skip without one), in true
             float32
  train      training steps at full LA size (patch 112x112x80, batch 4 with 2 labeled, n_filters 16; phantom
             volumes from dataloaders.synthetic): dual (VNet + ResNet34VNet, every loss term) as train.py's default
             command runs it (float32, --deterministic 1), then in cuDNN benchmark mode (--deterministic 0) in
             float32, --tf32 1, --amp, --channels_last and --amp --channels_last; then mt, sup and pair-sup (the
             supervised terms only) in the default command's float32. Per row: seconds per iteration after
             --warmup steps, peak device memory, whether every loss term stayed finite, the ratio to the default
             command, the projected time of 6000 iterations; and the dual / pair-sup overhead. The untrained
             networks' output biases are shifted so both classes are predicted (else L_con is 0)
  inference  one LA-size volume (180x140x88) at the LA stride 18/4 with the float32-trained pair (or --checkpoint),
             as test.py runs by default (cuDNN benchmark mode, true float32): seconds on the device in float32 and
             with --amp --channels_last (test_single_case), and the share of voxels whose label equals the CPU
             float32 label map of another implementation, the lineage's per-window loop (benchmarks.lineage), so
             that with --gpu -1 too the check compares two paths (check: >= 0.999 for float32)
  resume     train.py's default command (dual, float32, --deterministic 1) on small phantoms on the device, as
             processes: a run of 6 iterations twice, and its checkpoint at 3 resumed to 6 (checks: every weight of
             the repeated and of the resumed run equal to the bit); then test.py's label maps of that run's
             final.pth on the device and on the CPU (check: >= 0.999 of the voxels equal)
Exit status 1 when a check fails (a test, a non-finite loss, an agreement, a resume), 2 for bad arguments.
Time: estimated (not yet measured) at about 6 minutes on one H100 -- the CPU reference of the inference step,
45 windows of 112x112x80 through both networks, is the longest part.
"""
import argparse
import json
import math
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import h5py
import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]

import train
from benchmarks.common import SUPERVISED_ONLY, step_on_batch, sync
from benchmarks.lineage import per_window_loop
from dataloaders.synthetic import make_phantom, make_synthetic_dataset
from utils.checkpoint import load_checkpoint, load_weights
from utils.device import amp_dtype, device_of as select_device
from utils.inference import test_single_case
from utils.device import set_cudnn, set_tf32

FULL = dict(patch=(112, 112, 80), n_filters=16, volume=(180, 140, 88), stride=(18, 4),
            resume=dict(phantom=(80, 80, 64), patch='64,64,48', n_filters=8))
# 48x48x32: V-Net levels down to 3x3x2, clear of the 2x2x1 and 2x2x2 at which some CPUs' bfloat16 weight
# gradients are wrong (utils/precision.py)
QUICK = dict(patch=(48, 48, 32), n_filters=4, volume=(56, 52, 36), stride=(18, 4),
             resume=dict(phantom=(32, 32, 32), patch='16,16,16', n_filters=2))
# The training rows: (name, train.py settings, --amp, --channels_last, --tf32, --deterministic). The first is
# train.py's default command, the reference of every ratio; the speed settings run in cuDNN benchmark mode.
TRAIN_ROWS = (
    ('float32', {}, False, False, 0, 1),
    ('float32 benchmark', {}, False, False, 0, 0),
    ('tf32', {}, False, False, 1, 0),
    ('amp', {}, True, False, 0, 0),
    ('channels_last', {}, False, True, 0, 0),
    ('amp + channels_last', {}, True, True, 0, 0),
    ('mt', {'method': 'mt'}, False, False, 0, 1),
    ('sup', {'method': 'sup'}, False, False, 0, 1),
    ('pair-sup', SUPERVISED_ONLY, False, False, 0, 1),
)
STEPS = ('tests', 'train', 'inference', 'resume')
PAPER_ITERATIONS = 6000


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    p.add_argument('--gpu', default='0', help='CUDA index; -1 only with --quick')
    p.add_argument('--quick', action='store_true', help='tiny sizes and few steps: the CPU smoke run of every step')
    p.add_argument('--warmup', type=int, default=None, help='untimed steps per setting (3; --quick 0)')
    p.add_argument('--iterations', type=int, default=None, help='timed steps per setting (10; --quick 1)')
    p.add_argument('--checkpoint', default=None, help='a train.py checkpoint of a trained pair for the inference step')
    p.add_argument('--steps', default=','.join(STEPS), help='which steps to run, comma-separated')
    p.add_argument('--out', default='benchmarks/cache/gpu_check.json', help='the JSON written')
    args = p.parse_args(argv)
    args.size = QUICK if args.quick else FULL
    args.warmup = (0 if args.quick else 3) if args.warmup is None else args.warmup
    args.iterations = (1 if args.quick else 10) if args.iterations is None else args.iterations
    args.steps = args.steps.split(',')
    bad = set(args.steps) - set(STEPS)
    if bad:
        p.error(f'--steps: unknown {", ".join(sorted(bad))} (choose from {", ".join(STEPS)})')
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
        con_steps += float(record.get('con', 0)) != 0
    sync(device)
    if device.type == 'cuda':
        torch.cuda.reset_peak_memory_stats(device)
    t0 = time.perf_counter()
    for _ in range(iterations):
        record = step()
        # one host copy per step, as train.py's loop checks its terms
        values = dict(zip(record, torch.stack(list(record.values())).float().tolist()))
        finite &= all(math.isfinite(v) for v in values.values())
        con_steps += values.get('con', 0) != 0
    sync(device)
    seconds = (time.perf_counter() - t0) / iterations
    peak = torch.cuda.max_memory_allocated(device) / 2**20 if device.type == 'cuda' else None
    return seconds, peak, finite, values, con_steps


def mib(value):
    return 'n/a' if value is None else f'{value:.0f}'


def check_training(args, device):
    image, label = phantom_batch(args.size, device)
    rows, trained = {}, None
    for name, overrides, amp, channels_last, tf32, deterministic in TRAIN_ROWS:
        run_cfg = train_config(args.size, args.gpu, **overrides)
        set_cudnn(deterministic)
        set_tf32(tf32)
        torch.manual_seed(0)  # the same initial weights in every setting
        nets = calibrated(train.build_networks(run_cfg, device), image)
        step = step_on_batch(run_cfg, device, image, label, amp=amp, channels_last=channels_last, nets=nets)
        seconds, peak, finite, record, con_steps = time_steps(step, device, args.warmup, args.iterations)
        rows[name] = dict(method=run_cfg['method'], amp=amp, channels_last=channels_last, tf32=tf32,
                          deterministic=deterministic, seconds_per_iteration=seconds, peak_mib=peak, finite=finite,
                          last_terms=record,
                          contrastive_steps=con_steps, projected_hours=seconds * PAPER_ITERATIONS / 3600)
        if name == 'float32':
            trained = step.nets
        del step
        if device.type == 'cuda':
            torch.cuda.empty_cache()
        print(f'train {name}: {seconds:.3f} s/iteration, peak {mib(peak)} MiB, finite {finite}'
              + (f', contrastive term non-zero in {con_steps} of {args.warmup + args.iterations} steps'
                 if run_cfg['method'] == 'dual' else ''), flush=True)
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
    set_cudnn(0)  # test.py's defaults: benchmark mode for the fixed window, true float32
    set_tf32(0)
    nets = inference_nets(args, trained, device)
    patch, (stride_xy, stride_z) = args.size['patch'], args.size['stride']
    if args.checkpoint is not None:
        patch = tuple(load_checkpoint(args.checkpoint)['config']['patch_size'])
    volume = make_phantom(np.random.default_rng(11), args.size['volume'])[0]
    rows = {}

    def segment(where, amp, channels_last):
        t0 = time.perf_counter()
        pred = test_single_case(nets, volume, stride_xy, stride_z, patch, 2, device=where, channels_last=channels_last,
                                amp=amp_dtype(where) if amp else None)[0]  # returns numpy: the device has finished
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


def run_script(argv, what):
    """python <argv> from the repository root; its output is kept only when it fails (UsageError: one line)."""
    done = subprocess.run([sys.executable, *argv], cwd=ROOT, capture_output=True, text=True, timeout=300)
    if done.returncode != 0:
        raise SystemExit(f'error: gpu_check {what}: {" ".join(argv)} exited {done.returncode}:\n'
                         f'{(done.stdout + done.stderr)[-3000:]}')


def same_weights(a, b):
    """Every network and optimiser tensor of two train.py checkpoints equal to the bit."""
    a, b = load_checkpoint(a), load_checkpoint(b)
    keys = [k for k in a if k.startswith(('net_', 'optimizer_'))]

    def tensors(obj):
        if torch.is_tensor(obj):
            return [obj]
        if isinstance(obj, dict):
            return [t for k in sorted(obj, key=str) for t in tensors(obj[k])]
        if isinstance(obj, (list, tuple)):
            return [t for v in obj for t in tensors(v)]
        return []
    return keys == [k for k in b if k.startswith(('net_', 'optimizer_'))] and all(
        len(tensors(a[k])) == len(tensors(b[k])) and all(torch.equal(x, y) for x, y in zip(tensors(a[k]), tensors(b[k])))
        for k in keys)


def check_resume(args, device):
    """train.py's default command on the device, in processes: 6 iterations twice, and the first run's checkpoint
    at 3 resumed to 6, compared weight by weight; then test.py's label maps of final.pth on the device and on the
    CPU, compared voxel by voxel."""
    size = args.size['resume']
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        data = make_synthetic_dataset(tmp / 'data', num_train=8, num_test=2, shape=size['phantom'], seed=0)
        common = ['--dataset', 'la', '--root_path', str(data), '--patch_size', size['patch'], '--n_filters',
                  str(size['n_filters']), '--labelnum', '4', '--num_workers', '0', '--gpu', args.gpu]

        def train_run(name, *extra):
            run_script(['train.py', *common, '--max_iterations', '6', '--save_every', '3', '--log_every', '3',
                        '--snapshot_path', str(tmp / name), *extra], f'resume ({name})')
            return tmp / name
        first, second = train_run('first'), train_run('second')
        (tmp / 'resumed').mkdir()
        shutil.copy(first / 'latest.pth', tmp / 'resumed' / 'latest.pth')
        resumed = train_run('resumed', '--resume', 'auto')
        repeat_equal = same_weights(first / 'final.pth', second / 'final.pth')
        resume_equal = same_weights(first / 'final.pth', resumed / 'final.pth')
        train_seconds = time.perf_counter() - t0

        maps = {}
        for where, gpu in (('device', args.gpu), ('cpu', '-1')):
            out = tmp / f'test_{where}'
            run_script(['test.py', '--dataset', 'la', '--root_path', str(data), '--checkpoint',
                        str(first / 'final.pth'), '--gpu', gpu, '--save_pred', '--h5', '--no_progress',
                        '--out_dir', str(out)], f'test.py on the {where}')
            maps[where] = {}
            for path in sorted((out / 'predictions').glob('*.h5')):
                with h5py.File(path, 'r') as f:
                    maps[where][path.stem] = f['prediction'][()]
        equal = sum(int((maps['device'][c] == maps['cpu'][c]).sum()) for c in maps['cpu'])
        total = sum(maps['cpu'][c].size for c in maps['cpu'])
        agreement = equal / total if maps['cpu'] and maps['device'].keys() == maps['cpu'].keys() else 0.0
    return dict(phantom=list(size['phantom']), patch=size['patch'], n_filters=size['n_filters'], iterations=6,
                resumed_at=3, repeat_equal=repeat_equal, resume_equal=resume_equal, train_seconds=train_seconds,
                test_cases=len(maps['cpu']), test_agreement_with_cpu=agreement,
                seconds=time.perf_counter() - t0, ok=repeat_equal and resume_equal and agreement >= 0.999)


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
                  f'{result["iterations"]} timed after {result["warmup"]} warm-up; ratios to train.py\'s default '
                  f'command (the first row)', '',
                  '| setting | method | --deterministic | s / iteration | ratio | peak MiB | all terms finite '
                  '| steps with L_con != 0 | 6000 iterations (h) |', '|---|---|---|---|---|---|---|---|---|']
        for name, r in result['train'].items():
            con = r['contrastive_steps'] if r['method'] == 'dual' else 'n/a'
            lines.append(f'| {name} | {r["method"]} | {r["deterministic"]} | {r["seconds_per_iteration"]:.3f} | '
                         f'{r["ratio"]:.3f} | {mib(r["peak_mib"])} | {r["finite"]} | {con} | '
                         f'{r["projected_hours"]:.2f} |')
        lines += ['', f'dual / pair-sup overhead (float32): {result["overhead_ratio"]:.3f}', '']
    if 'inference' in result:
        inf = result['inference']
        lines += [f'inference: volume {inf["volume"]}, patch {inf["patch"]}, stride {inf["stride"][0]}/'
                  f'{inf["stride"][1]}', '', '| setting | seconds | labels equal to the CPU float32 map |',
                  '|---|---|---|']
        for name, r in inf['rows'].items():
            lines.append(f'| {name} | {r["seconds"]:.2f} | {r["agreement_with_cpu"]:.5f} |')
        lines.append('')
    if 'resume' in result:
        r = result['resume']
        lines += [f'train.py default command on {r["phantom"]} phantoms, patch {r["patch"]}, n_filters '
                  f'{r["n_filters"]}: {r["iterations"]} iterations repeated bit-exact: {r["repeat_equal"]}; resumed '
                  f'at {r["resumed_at"]} bit-exact: {r["resume_equal"]} ({r["train_seconds"]:.0f} s)',
                  f'test.py label maps of {r["test_cases"]} cases, device vs CPU: {r["test_agreement_with_cpu"]:.5f} '
                  f'of the voxels equal', '']
    lines.append('all checks passed' if result['ok'] else 'FAILED: ' + ', '.join(result['failed']))
    return '\n'.join(lines)


def main(argv=None):
    args = parse_args(argv)
    if not args.quick and (str(args.gpu).strip().lower() in ('-1', 'cpu') or not torch.cuda.is_available()):
        sys.exit(f'error: --gpu {args.gpu}: no CUDA device to check; --quick --gpu -1 runs every step at tiny size '
                 f'on the CPU')
    device = select_device(args.gpu)
    torch.manual_seed(0)  # each step sets cuDNN's mode and --tf32 as the command it stands for
    if args.quick and device.type == 'cpu':
        torch.set_num_threads(1)  # tiny tensors gain nothing from threads, and a shared machine's load hurts less
    start = time.perf_counter()
    result = dict(date=time.strftime('%Y-%m-%d'), device=str(device), device_name=device_name(device),
                  torch=torch.__version__, quick=args.quick, amp_dtype=str(amp_dtype(device)).split('.')[-1],
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
    if 'resume' in args.steps:
        result['resume'] = check_resume(args, device)
        if not result['resume']['ok']:
            result['failed'].append('resume or test.py agreement')
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
