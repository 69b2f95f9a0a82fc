"""Does the dual network beat its baselines on real LA data? A CPU-sized version of the LA protocol.

    python -m benchmarks.la_cpu --la_root data/LA              # development split: a train.list of 80 ids
    python -m benchmarks.la_cpu --la_root data/LA --standard   # the standard train.list/test.list

Resamples every volume (image linear, label nearest neighbour; cached), trains sup, pair-sup (dual with
every unsupervised weight 0), mt and dual with the same labeled volumes and iteration budget through
train.py, evaluates each final checkpoint through test.py (dual runs also with network A alone), and
prints one table plus, for every dual variant against every baseline, the paired per-case Dice difference
pooled over case-seed pairs with 95 % bootstrap intervals (cases resampled; seeds and cases resampled) and
the win count.
Development split (the default): first --labelnum ids of train.list labeled, the rest of the first 60
unlabeled, ids 61-80 as the test set. Finished runs are reused, so a stopped study resumes where it was;
--jobs 2 trains two runs at a time with one thread each.
"""
import argparse
import csv
import json
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import h5py
import numpy as np
from scipy import ndimage

from dataloaders import read_list
from dataloaders.datasets import LA_SUBDIR
from utils.cli import UsageError, run_cli

ROOT = Path(__file__).resolve().parents[1]

# Extra train.py flags of each method; pair-sup is dual with every unsupervised weight 0.
METHODS = {
    'sup': ['--method', 'sup'],
    'pairsup': ['--method', 'dual', '--alpha_mc', '0', '--lambda_reg', '0', '--lambda_urps', '0',
                '--lambda_cps', '0', '--lambda_con', '0'],
    'mt': ['--method', 'mt'],
    'dual': ['--method', 'dual'],  # train.py's defaults
    # Until 2026-11-26 the defaults trained L_urps (--lambda_urps 1), so every variant of that time pins it.
    # L_reg, L_urps and L_cps ramped in (ours) or at full weight from iteration 0 (the paper's)
    'dual-ramp': ['--method', 'dual', '--filter', 'classwise', '--ramp_unsup', '1', '--lambda_urps', '1'],
    'dual-ramp-global': ['--method', 'dual', '--filter', 'global', '--ramp_unsup', '1', '--lambda_urps', '1'],
    # The L_cps filter (global is the paper's; classwise and none are ours), without the ramp
    'dual-global': ['--method', 'dual', '--filter', 'global', '--ramp_unsup', '0', '--lambda_urps', '1'],
    'dual-classwise': ['--method', 'dual', '--filter', 'classwise', '--ramp_unsup', '0', '--lambda_urps', '1'],
    'dual-none': ['--method', 'dual', '--filter', 'none', '--ramp_unsup', '0', '--lambda_urps', '1'],
    # what the released code trains in effect: its L_cps and L_con carry no gradient
    'dual-released': ['--method', 'dual', '--ramp_unsup', '0', '--lambda_urps', '1', '--lambda_cps', '0',
                      '--lambda_con', '0'],
    # the stored intensities, without per-volume normalisation
    'sup-raw': ['--method', 'sup', '--normalize', 'none'],
    'mt-raw': ['--method', 'mt', '--normalize', 'none'],
    'dual-raw': ['--method', 'dual', '--normalize', 'none', '--lambda_urps', '1'],
    # Leave-one-out ablations of dual-ramp: which unsupervised term helps or hurts.
    'dual-no-mc': ['--method', 'dual', '--lambda_urps', '1', '--alpha_mc', '0'],
    'dual-no-reg': ['--method', 'dual', '--lambda_urps', '1', '--lambda_reg', '0'],
    'dual-no-urps': ['--method', 'dual', '--lambda_urps', '0'],
    'dual-no-cps': ['--method', 'dual', '--lambda_urps', '1', '--lambda_cps', '0'],
    'dual-no-con': ['--method', 'dual', '--lambda_urps', '1', '--lambda_con', '0'],
    # L_urps at a third of the paper's weight: is it the term or its weight at this budget?
    'dual-urps-0.3': ['--method', 'dual', '--lambda_urps', '0.3'],
    # L_cps without its entropy filter: R = every voxel (tests whether the filter biases yhat's classes)
    'dual-no-filter': ['--method', 'dual', '--lambda_urps', '1', '--uncertain_percent', '0'],
    # The ramp over the whole run keeps the unsupervised terms under 20 % of their weight until the first lr
    # step: ramped over the first lr step instead ({lr_step} is filled in per study), and the defaults
    # without L_reg, which the leave-one-out above did not show to help.
    'dual-short-ramp': ['--method', 'dual', '--rampup', '{lr_step}'],
    'dual-no-urps-reg': ['--method', 'dual', '--lambda_reg', '0'],
}


def method_flags(method, lr_step):
    """train.py flags of a METHODS entry, with {lr_step} filled in."""
    return [f.format(lr_step=lr_step) for f in METHODS[method]]


def build_cache(args):
    """Resampled copies of the volumes in the LA layout, with train.list / test.list of the split."""
    la = Path(args.la_root)
    if args.standard:
        train_ids, test_ids = read_list(la / 'train.list'), read_list(la / 'test.list')
    else:
        ids = read_list(la / 'train.list')
        if len(ids) < 80:
            raise UsageError(f'{la / "train.list"} lists {len(ids)} ids; the development split needs 80')
        train_ids, test_ids = ids[:60], ids[60:80]
    cache = Path(args.cache) / f'scale{args.scale:g}'
    for case in train_ids + test_ids:
        out = cache / LA_SUBDIR / case / 'mri_norm2.h5'
        if out.is_file():
            continue
        with h5py.File(la / LA_SUBDIR / case / 'mri_norm2.h5', 'r') as f:
            image, label = f['image'][:], f['label'][:]
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = out.with_suffix('.tmp')
        with h5py.File(tmp, 'w') as f:
            f['image'] = ndimage.zoom(image, args.scale, order=1).astype(np.float32)
            f['label'] = ndimage.zoom(label, args.scale, order=0).astype(np.uint8)
        tmp.replace(out)
    (cache / 'train.list').write_text('\n'.join(train_ids) + '\n')
    (cache / 'test.list').write_text('\n'.join(test_ids) + '\n')
    return cache


def flag_settings(flags):
    """{'method': 'dual', 'filter': 'global', 'anneal_uncertain': True, ...} of a train.py flag list."""
    settings, i = {}, 0
    while i < len(flags):
        has_value = i + 1 < len(flags) and not flags[i + 1].startswith('--')
        settings[flags[i][2:]] = flags[i + 1] if has_value else True
        i += 2 if has_value else 1
    return settings


def same(saved, wanted):
    """A config.json value against a flag's text: 0.0 and '0' agree."""
    try:
        return float(saved) == float(wanted)
    except (TypeError, ValueError):
        return saved == wanted


def run(cmd, log_path, threads):
    env = {**os.environ, 'OMP_NUM_THREADS': str(threads)}
    with open(log_path, 'w') as log:
        done = subprocess.run(cmd, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, env=env)
    if done.returncode != 0:
        sys.exit(f'error: {" ".join(cmd[:3])} ... failed (exit {done.returncode}); see {log_path}')


def train_and_test(method, seed, cache, args):
    """Train one method with train.py and evaluate its final checkpoint with test.py (dual: also network A
    alone, into nets_a/); returns ({case: metrics}, train seconds, {case: metrics of A alone} or None)."""
    run_dir = Path(args.out) / f'{method}_seed{seed}'
    common = ['--dataset', 'h5', '--root_path', str(cache), '--pattern', '{id}/mri_norm2.h5',
              '--patch_size', args.patch_size, '--n_filters', str(args.n_filters), '--gpu', args.gpu,
              '--labelnum', str(args.labelnum), '--seed', str(seed), '--snapshot_path', str(run_dir)]
    settings = {'max_iterations': args.iterations, 'n_filters': args.n_filters, 'labelnum': args.labelnum,
                'lr_step': args.lr_step, 'root_path': str(cache), 'amp': args.amp}
    # train.py's and test.py's flags
    fast = ([] if args.channels_last is None else ['--channels_last', str(args.channels_last)]) + ['--amp'] * args.amp
    flags = method_flags(method, args.lr_step)
    settings.update(flag_settings(flags))
    if (run_dir / 'config.json').is_file():  # a finished run is reused only if it used these settings
        saved = json.loads((run_dir / 'config.json').read_text())
        # a flag newer than the run (absent from its config) counts as off, which is what the run trained with
        stale = {k: saved.get(k) for k, v in settings.items() if not same(saved.get(k, False), v)}
        if stale:
            raise UsageError(f'{run_dir} was trained with {stale}, not {settings}; pass another --out')
    if not (run_dir / 'final.pth').is_file():
        run_dir.mkdir(parents=True, exist_ok=True)
        t0 = time.time()
        run([sys.executable, 'train.py', *common, *flags,
             '--max_iterations', str(args.iterations), '--lr_step', str(args.lr_step),
             '--num_workers', str(args.num_workers), '--save_every', str(args.iterations), *fast],
            run_dir / 'train_stdout.txt', args.threads)
        seconds = time.time() - t0
        (run_dir / 'train_seconds.txt').write_text(f'{seconds:.1f}\n')
    else:
        seconds = float((run_dir / 'train_seconds.txt').read_text())
    evaluations = [('', [])] + ([('nets_a', ['--nets', 'a'])] if '--method' in flags
                                and flags[flags.index('--method') + 1] == 'dual' else [])
    rows = []
    for sub, extra in evaluations:
        out_dir = run_dir / sub
        if not (out_dir / 'test_summary.json').is_file():
            run([sys.executable, 'test.py', *common, '--stride_xy', str(args.stride_xy), '--stride_z',
                 str(args.stride_z), '--out_dir', str(out_dir), '--no_progress', *extra, *fast],
                run_dir / f'test_stdout{sub and "_" + sub}.txt', args.threads)
        rows.append(read_cases(out_dir / 'test_cases.csv'))
    return rows[0], seconds, rows[1] if len(rows) > 1 else None


def read_cases(path):
    with open(path, newline='') as f:
        return {r['case']: {k: float(r[k]) for k in ('dice', 'jaccard', 'hd95', 'asd')} for r in csv.DictReader(f)}


def paired_difference(runs_x, runs_y, n_boot=10000, seed=0):
    """Paired Dice difference x - y in points, pooled over case-seed pairs.

    runs_x, runs_y: one {case: metrics} per seed, same cases. Returns {'mean', 'ci95', 'ci95_seeds', 'wins',
    'pairs'}: ci95 resamples cases with replacement (each case keeps all its seeds, since a hard case is hard
    for every seed); ci95_seeds resamples the seeds too, so it also holds the run-to-run spread that a few
    seeds cannot pin down (with 3 seeds it is wide, and honest); wins counts pairs where x is higher.
    """
    cases = sorted(runs_x[0])
    diff = 100 * np.array([[rx[c]['dice'] - ry[c]['dice'] for c in cases] for rx, ry in zip(runs_x, runs_y)])
    rng = np.random.default_rng(seed)
    picks = rng.integers(0, len(cases), size=(n_boot, len(cases)))
    by_case = diff[:, picks].mean(axis=(0, 2))
    seed_picks = rng.integers(0, len(runs_x), size=(n_boot, len(runs_x)))
    # draw b: seeds seed_picks[b], each with cases picks[b]
    by_seed_and_case = diff[seed_picks[:, :, None], picks[:, None, :]].mean(axis=(1, 2))
    return {'mean': float(diff.mean()), 'ci95': [float(v) for v in np.percentile(by_case, [2.5, 97.5])],
            'ci95_seeds': [float(v) for v in np.percentile(by_seed_and_case, [2.5, 97.5])],
            'wins': int((diff > 0).sum()), 'pairs': diff.size}


def difference_cells(d):
    """A table row's cells of paired_difference's result."""
    return (f"{d['mean']:+.2f} | [{d['ci95'][0]:+.2f}, {d['ci95'][1]:+.2f}] | "
            f"[{d['ci95_seeds'][0]:+.2f}, {d['ci95_seeds'][1]:+.2f}] | {d['wins']}/{d['pairs']}")


def mean_std(values):
    values = np.asarray([v for v in values if np.isfinite(v)])
    return (values.mean(), values.std()) if len(values) else (float('nan'), float('nan'))


def versus_table(methods, seeds, results, versus, summary):
    """Each method here against the same method and seeds in the folder `versus` (other settings)."""
    print(f'\nPaired per-case Dice difference, these runs minus those in {versus} (same method and seeds):')
    print('| method | difference | 95 % interval, cases | 95 % interval, seeds and cases | these better |')
    print('|---|---|---|---|---|')
    for method in methods:
        name, sub = (method[:-len(' (A)')], 'nets_a') if method.endswith(' (A)') else (method, '')
        paths = [Path(versus) / f'{name}_seed{sd}' / sub / 'test_cases.csv' for sd in seeds]
        missing = [str(path) for path in paths if not path.is_file()]
        if missing:
            raise UsageError(f'--versus: no finished run at {missing[0]}')
        d = paired_difference([results[method, sd][0] for sd in seeds], [read_cases(path) for path in paths])
        print(f'| {method} | {difference_cells(d)} |')
        summary[method]['minus_versus'] = d


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument('--la_root', default='data/LA', help='LA folder with train.list and the h5 folder')
    p.add_argument('--standard', action='store_true', help='use train.list/test.list (full dataset)')
    p.add_argument('--scale', type=float, default=0.5, help='resampling factor of every axis')
    p.add_argument('--patch_size', default='64,64,32')
    p.add_argument('--stride_xy', type=int, default=16)
    p.add_argument('--stride_z', type=int, default=8)
    p.add_argument('--n_filters', type=int, default=8)
    p.add_argument('--iterations', type=int, default=1000)
    p.add_argument('--lr_step', type=int, default=None, help='default: 5/12 of --iterations, as 2500 of 6000')
    p.add_argument('--labelnum', type=int, default=8)
    p.add_argument('--methods', default='sup,pairsup,mt,dual', help=f'comma list of {sorted(METHODS)}')
    p.add_argument('--baselines', default='sup,pairsup,mt',
                   help='methods every dual variant is paired against (when among --methods)')
    p.add_argument('--seeds', default='1337', help='comma list; mean ± std over seeds is reported')
    p.add_argument('--num_workers', type=int, default=1)
    p.add_argument('--jobs', type=int, default=1, help='runs trained at the same time')
    p.add_argument('--threads', type=int, default=None, help='torch threads per run (default: cores / jobs)')
    p.add_argument('--channels_last', type=int, choices=[0, 1], nargs='?', const=1, default=None,
                   help="train.py's and test.py's --channels_last (default: theirs)")
    p.add_argument('--amp', action='store_true', help="train.py's and test.py's --amp (bfloat16 on the CPU)")
    p.add_argument('--gpu', default='-1')
    p.add_argument('--cache', default=str(ROOT / 'benchmarks' / 'cache'))
    p.add_argument('--out', default=str(ROOT / 'benchmarks' / 'cache' / 'la_cpu_runs'))
    p.add_argument('--versus', default=None,
                   help='another --out with the same methods and seeds (say, without --amp): paired differences')
    args = p.parse_args(argv)
    args.lr_step = args.lr_step or max(1, args.iterations * 5 // 12)
    methods = args.methods.split(',')
    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        raise UsageError(f'--methods: unknown {unknown}; choose from {sorted(METHODS)}')
    seeds = [int(s) for s in args.seeds.split(',')]
    args.threads = args.threads or max(1, (os.cpu_count() or 1) // args.jobs)

    cache = build_cache(args)

    def one(key):
        method, seed = key
        print(f'[{time.strftime("%H:%M:%S")}] {method} seed {seed} ...', flush=True)
        return key, train_and_test(method, seed, cache, args)

    with ThreadPoolExecutor(max_workers=args.jobs) as pool:  # threads only wait on subprocesses
        results = dict(pool.map(one, [(m, sd) for sd in seeds for m in methods]))
    for method in [m for m in methods if results[m, seeds[0]][2] is not None]:
        for sd in seeds:  # network A alone, as one more row
            results[method + ' (A)', sd] = (results[method, sd][2], results[method, sd][1], None)
        methods.append(method + ' (A)')

    print(f'\nLA at scale {args.scale}, patch {args.patch_size}, {args.iterations} iterations, '
          f'n_filters {args.n_filters}, {args.labelnum} labeled, seeds {seeds}')
    print('| method | Dice % | Jaccard % | 95HD (vox) | ASD (vox) | train min |')
    print('|---|---|---|---|---|---|')
    summary = {}
    for method in methods:
        cells = []
        for metric, scale in (('dice', 100), ('jaccard', 100), ('hd95', 1), ('asd', 1)):
            if len(seeds) == 1:  # spread over test cases
                m, s = mean_std([r[metric] * scale for r in results[method, seeds[0]][0].values()])
            else:  # spread over seeds of the per-seed means
                m, s = mean_std([mean_std([r[metric] * scale for r in results[method, sd][0].values()])[0]
                                 for sd in seeds])
            cells.append(f'{m:.2f} ± {s:.2f}')
            summary.setdefault(method, {})[metric] = (m, s)
        minutes = np.mean([results[method, sd][1] for sd in seeds]) / 60
        summary[method]['train_minutes'] = minutes
        print(f'| {method} | ' + ' | '.join(cells) + f' | {minutes:.1f} |')

    # every dual variant against every baseline (network A alone: against the V-Net trained alone), and
    # every method against its run on the stored intensities
    baselines = args.baselines.split(',')
    pairs = [(m, b) for m in methods if m.startswith('dual') and not m.endswith('-raw')
             for b in baselines if b in methods and b != m and (b == 'sup' or not m.endswith('(A)'))]
    pairs += [(m[:-len('-raw')], m) for m in methods if m.endswith('-raw') and m[:-len('-raw')] in methods]
    if pairs:
        print('\nPaired per-case Dice difference, first minus second (points; case-seed pairs pooled; '
              '95 % bootstrap intervals resampling cases, and seeds and cases):')
        print('| method | against | difference | 95 % interval, cases | 95 % interval, seeds and cases '
              '| first better |')
        print('|---|---|---|---|---|---|')
        for method, base in pairs:
            d = paired_difference([results[method, sd][0] for sd in seeds], [results[base, sd][0] for sd in seeds])
            print(f'| {method} | {base} | {difference_cells(d)} |')
            summary[method][f'minus_{base}'] = d
    if args.versus:
        versus_table(methods, seeds, results, args.versus, summary)
    Path(args.out).mkdir(parents=True, exist_ok=True)
    (Path(args.out) / 'summary.json').write_text(json.dumps({'args': vars(args), 'results': summary}, indent=2))


if __name__ == '__main__':
    run_cli(main)
