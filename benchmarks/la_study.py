"""Does the dual network beat its baselines on LA? One study, CPU-sized by default, the paper's protocol at full size.

    python -m benchmarks.la_study --la_root data/LA              # development split: a train.list of 80 ids
    python -m benchmarks.la_study --la_root data/LA --standard   # the standard train.list/test.list
    python -m benchmarks.la_study --la_root data/LA --variant dual-ramp='--method dual --ramp_unsup 1'

The full protocol, what a GPU user runs to decide for themselves which method and which option helps (the
CPU-sized defaults suggest; at 400-800 iterations and n_filters 4-8 they cannot decide):

    python -m benchmarks.la_study --la_root data/LA --standard --scale 1 --n_filters 16 --patch_size 112,112,80 --iterations 6000 --stride_xy 18 --stride_z 4 --gpu 0 --seeds 1337,2,3

Resamples every volume by --scale (image linear, label nearest neighbour; cached), trains the four methods
with the same labeled volumes and iteration budget through train.py: sup (a V-Net on the labels alone),
pairsup (dual with every unsupervised weight 0), mt (mean teacher) and dual (train.py's defaults: the
paper's method); any other setting is a --variant NAME='train.py flags'. Each final checkpoint is evaluated
through test.py (dual-method runs also with network A alone), and one table is printed plus, for every
method that is not a baseline against every baseline, the paired per-case Dice difference pooled over
case-seed pairs with 95 % bootstrap intervals (cases resampled; seeds and cases resampled) and the win count.
Development split (the default): first --labelnum ids of train.list labeled, the rest of the first 60
unlabeled, ids 61-80 as the test set. A finished run is reused only when its config.json holds the settings
this command would train it with, every one that defines a run (train.py's run keys); a run of other
settings stops the study with one line naming it, so a stopped study resumes where it was and a changed
default never passes for the old one. A finished run needs no checkpoint: its config.json, train_seconds.txt
and test results are its record, which benchmarks/results/ keeps in the repository (its .gitignore lets
nothing else in), so `--out benchmarks/results/NAME` carries a study on across machines and sessions.
With several seeds a per-seed table gives each method's mean, median and worst seed and the seeds that end
more than 3 points below sup. --jobs 2 trains two runs at a time with one thread each.
"""
import argparse
import csv
import json
import os
import shlex
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import h5py
import numpy as np
from scipy import ndimage

import train
from benchmarks.common import SUPERVISED_ONLY
from dataloaders.datasets import read_list
from dataloaders.datasets import LA_SUBDIR
from utils.cli import UsageError, run_cli
from utils.resume import current_names, run_keys

ROOT = Path(__file__).resolve().parents[1]

# The four methods, as train.py flags on top of its defaults; pairsup is dual with every unsupervised weight 0
# (the pair-sup the speed benchmarks time).
METHODS = {
    'sup': ['--method', 'sup'],
    'pairsup': ['--method', 'dual', *[w for k, v in SUPERVISED_ONLY.items() for w in (f'--{k}', str(v))]],
    'mt': ['--method', 'mt'],
    'dual': ['--method', 'dual'],  # train.py's defaults: the paper's method
}


def parse_variant(text, owned):
    """('name', [train.py flags]) of a --variant NAME='flags'. Refused in one line: a name of the four
    methods or not usable as a folder name, flags train.py does not take, or flags the study sets itself
    (`owned`: train.py's dests it gives every run, such as seed and max_iterations)."""
    name, sep, flags = text.partition('=')
    if not sep or not name:
        raise UsageError(f"--variant {text!r}: expected NAME='train.py flags'")
    if name in METHODS or '/' in name or name.startswith('.') or '_seed' in name:
        raise UsageError(f'--variant {name}: a name other than the four methods, without "/" or "_seed" '
                         f'(it names the run folders <name>_seed<seed>)')
    flags = shlex.split(flags)
    parser = train.build_parser()

    def refuse(message):
        raise UsageError(f'--variant {name}: {message}')
    parser.error = refuse  # a bad flag names the variant, in one line
    # dests pre-filled with a marker keep it unless the flag is given (argparse leaves present attributes alone)
    unset = object()
    given = parser.parse_args(flags, argparse.Namespace(**dict.fromkeys(owned, unset)))
    taken = sorted(k for k in owned if getattr(given, k) is not unset)
    if taken:
        refuse(f'sets {", ".join("--" + k for k in taken)}, which the study sets for every run')
    return name, flags


def cache_dir(args):
    return Path(args.cache) / f'scale{args.scale:g}-float16'


def build_cache(args):
    """Resampled copies of the volumes in the LA layout, with train.list / test.list of the split. Images are
    stored as float16 and gzip-compressed: every machine trains on the same values (rounded once, here),
    and the dev split's 80 volumes at half resolution take about 40 MB, small enough to carry to a GPU."""
    la = Path(args.la_root)
    if not (la / 'train.list').is_file():
        raise UsageError(f'--la_root {la}: no train.list (runs left to train need the LA data)')
    if args.standard:
        train_ids, test_ids = read_list(la / 'train.list'), read_list(la / 'test.list')
    else:
        ids = read_list(la / 'train.list')
        if len(ids) < 80:
            raise UsageError(f'{la / "train.list"} lists {len(ids)} ids; the development split needs 80')
        train_ids, test_ids = ids[:60], ids[60:80]
    cache = cache_dir(args)
    for case in train_ids + test_ids:
        out = cache / LA_SUBDIR / case / 'mri_norm2.h5'
        if out.is_file():
            continue
        with h5py.File(la / LA_SUBDIR / case / 'mri_norm2.h5', 'r') as f:
            image, label = f['image'][:], f['label'][:]
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = out.with_suffix('.tmp')
        with h5py.File(tmp, 'w') as f:
            f.create_dataset('image', data=ndimage.zoom(image, args.scale, order=1).astype(np.float16),
                             compression='gzip', shuffle=True)
            f.create_dataset('label', data=ndimage.zoom(label, args.scale, order=0).astype(np.uint8),
                             compression='gzip', shuffle=True)
        tmp.replace(out)
    (cache / 'train.list').write_text('\n'.join(train_ids) + '\n')
    (cache / 'test.list').write_text('\n'.join(test_ids) + '\n')
    return cache


def run(cmd, log_path, threads):
    env = {**os.environ, 'OMP_NUM_THREADS': str(threads)}
    with open(log_path, 'w') as log:
        done = subprocess.run(cmd, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, env=env)
    if done.returncode != 0:
        sys.exit(f'error: {" ".join(cmd[:3])} ... failed (exit {done.returncode}); see {log_path}')


def fast_flags(args):
    """train.py's and test.py's --channels_last and --amp as the study passes them (only when given)."""
    return ([] if args.channels_last is None else ['--channels_last', str(args.channels_last)]) + ['--amp'] * args.amp


def run_dir_of(name, seed, args):
    return Path(args.out) / f'{name}_seed{seed}'


def data_flags(cache, args, run_dir):
    """The flags train.py and test.py both get: data, networks, device and run folder."""
    return ['--dataset', 'h5', '--root_path', str(cache), '--pattern', '{id}/mri_norm2.h5',
            '--patch_size', args.patch_size, '--n_filters', str(args.n_filters), '--gpu', args.gpu,
            '--labelnum', str(args.labelnum), '--snapshot_path', str(run_dir)]


def train_argv(flags, seed, cache, args, run_dir):
    """train.py's argv of one run: the study's settings, then the method's or variant's own flags."""
    return [*data_flags(cache, args, run_dir), '--seed', str(seed), '--max_iterations', str(args.iterations),
            '--lr_step', str(args.lr_step), '--num_workers', str(args.num_workers),
            '--save_every', str(args.iterations), *fast_flags(args), *flags]


def owned_dests(args):
    """train.py's settings the study gives every run, which a --variant may not set: those of train_argv, and
    --amp, --channels_last (passed only when given) and --resume (a study run starts from scratch)."""
    words = train_argv([], 0, '.', args, Path('.'))
    return {w[2:] for w in words if w.startswith('--')} | {'amp', 'channels_last', 'resume'}


def check_reusable(run_dir, argv):
    """Refuse, in one line, a run folder whose config.json differs from the settings `argv` trains: every
    run key of train.py (what defines a run; where files are and how often to log do not), compared as JSON
    (the saved config went through it: a tuple and its list agree); a key the saved config lacks, a flag newer
    than the run, differs."""
    saved = current_names(json.loads((run_dir / 'config.json').read_text()))
    cfg = train.parse_args(argv)
    if '--channels_last' not in map(str, argv):  # train.py resolved it on the device that trained the run
        cfg['channels_last'] = saved.get('channels_last')
    differ = [k for k in run_keys(train.build_parser(), train.RUN_CONTROL)
              if k not in saved or json.dumps(saved[k]) != json.dumps(cfg[k])]
    if differ:
        changes = ', '.join(f'{k} {json.dumps(saved[k]) if k in saved else "absent"}, now {json.dumps(cfg[k])}'
                            for k in differ)
        raise UsageError(f'{run_dir} was trained with other settings ({changes}); pass another --out or '
                         f'remove the folder')


def evaluated(out_dir, args):
    """Whether out_dir holds test.py's results at this study's strides and precision; results of another
    --stride_xy / --stride_z / --amp are evaluated again, not reported under these settings."""
    path = out_dir / 'test_summary.json'
    if not path.is_file():
        return False
    settings = json.loads(path.read_text())['settings']
    return [settings.get(k) for k in ('stride_xy', 'stride_z', 'amp')] == [args.stride_xy, args.stride_z, args.amp]


def evaluations(dual):
    """(subfolder, extra test.py flags) of each evaluation of a run: the pair, and for dual network A alone."""
    return [('', [])] + ([('nets_a', ['--nets', 'a'])] if dual else [])


def finished(run_dir, dual, args):
    """Whether run_dir holds a run's whole record at this study's test settings: its training time and every
    evaluation. Such a run needs neither its checkpoint nor the data, so a record kept under
    benchmarks/results/ (config.json, test results, no checkpoint) is reused on any machine."""
    return ((run_dir / 'train_seconds.txt').is_file()
            and all(evaluated(run_dir / sub, args) for sub, _ in evaluations(dual)))


def summarize_iterations(run_dir, block=10):
    """iterations_summary.csv beside iterations.csv: each numeric column's mean over blocks of `block`
    iterations, and the winner column as the share of A wins (a_wins); `iteration` is the block's last
    iteration done. The run's course at a size worth keeping with its results."""
    with open(run_dir / 'iterations.csv', newline='') as f:
        rows = list(csv.DictReader(f))
    if not rows:
        return
    columns = [c for c in rows[0] if c not in ('iteration', 'winner')]
    out = []
    for start in range(0, len(rows), block):
        part = rows[start:start + block]
        row = {'iteration': int(part[-1]['iteration']) + 1}
        if 'winner' in part[0]:
            row['a_wins'] = f"{np.mean([r['winner'] == 'A' for r in part]):.6g}"
        row.update({c: f'{np.mean([float(r[c]) for r in part]):.6g}' for c in columns})
        out.append(row)
    with open(run_dir / 'iterations_summary.csv', 'w', newline='') as f:
        writer = csv.DictWriter(f, fieldnames=list(out[0]))
        writer.writeheader()
        writer.writerows(out)


def train_and_test(name, flags, seed, cache, args):
    """Train one method or variant with train.py and evaluate its final checkpoint with test.py (dual: also
    network A alone, into nets_a/); a finished run (see `finished`; its config checked by check_reusable) is
    reused as it is. Returns ({case: metrics}, train seconds, {case: metrics of A alone} or None)."""
    run_dir = run_dir_of(name, seed, args)
    argv = train_argv(flags, seed, cache, args, run_dir)
    dual = train.parse_args(argv)['method'] == 'dual'
    if not finished(run_dir, dual, args):
        if not (run_dir / 'final.pth').is_file():
            run_dir.mkdir(parents=True, exist_ok=True)
            t0 = time.time()
            run([sys.executable, 'train.py', *argv], run_dir / 'train_stdout.txt', args.threads)
            (run_dir / 'train_seconds.txt').write_text(f'{time.time() - t0:.1f}\n')
            summarize_iterations(run_dir)
        for sub, extra in evaluations(dual):
            if not evaluated(run_dir / sub, args):
                run([sys.executable, 'test.py', *data_flags(cache, args, run_dir), '--stride_xy',
                     str(args.stride_xy), '--stride_z', str(args.stride_z), '--out_dir', str(run_dir / sub),
                     '--no_progress', *extra, *fast_flags(args)], run_dir / f'test_stdout{sub and "_" + sub}.txt',
                    args.threads)
    rows = [read_cases(run_dir / sub / 'test_cases.csv') for sub, _ in evaluations(dual)]
    seconds = float((run_dir / 'train_seconds.txt').read_text())
    return rows[0], seconds, rows[1] if dual else None


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


def seed_table(methods, seeds, results, summary, baseline='sup', behind=3.0):
    """How each method fares seed by seed: its per-seed mean Dice (%) summarised by mean, median and worst
    seed, and the share of seeds whose run ends more than `behind` points below `baseline`'s run of the same
    seed (the same labeled volumes, crops and initialisation draws)."""
    print(f'\nPer seed: mean Dice % of each seed\'s run, and the seeds more than {behind:g} points behind '
          f'{baseline} of the same seed ({len(seeds)} seeds):')
    print(f'| method | mean | median | worst (seed) | behind {baseline} by > {behind:g} |')
    print('|---|---|---|---|---|')
    per_seed = {m: {sd: 100 * np.mean([r['dice'] for r in results[m, sd][0].values()]) for sd in seeds}
                for m in methods}
    for method in methods:
        dice = per_seed[method]
        worst = min(dice, key=dice.get)
        failed = [sd for sd in seeds if dice[sd] < per_seed[baseline][sd] - behind]
        print(f'| {method} | {np.mean(list(dice.values())):.2f} | {np.median(list(dice.values())):.2f} | '
              f'{dice[worst]:.2f} ({worst}) | {len(failed)}/{len(seeds)} |')
        summary[method]['per_seed_dice'] = {str(sd): dice[sd] for sd in seeds}
        summary[method][f'seeds_behind_{baseline}'] = failed


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
    p.add_argument('--variant', action='append', default=[], metavar="NAME='FLAGS'",
                   help="another setting to train, as train.py flags on top of its defaults, e.g. "
                        "dual-ramp='--method dual --ramp_unsup 1'; repeatable")
    p.add_argument('--methods', default=None,
                   help=f'comma list of {", ".join(METHODS)} and the --variant names (default: all of them)')
    p.add_argument('--baselines', default='sup,pairsup,mt',
                   help='methods every other method and variant is paired against (when among --methods)')
    p.add_argument('--seeds', default='1337', help='comma list; mean ± std over seeds is reported')
    p.add_argument('--num_workers', type=int, default=1)
    p.add_argument('--jobs', type=int, default=1, help='runs trained at the same time')
    p.add_argument('--threads', type=int, default=None, help='torch threads per run (default: cores / jobs)')
    p.add_argument('--channels_last', type=int, choices=[0, 1], nargs='?', const=1, default=None,
                   help="train.py's and test.py's --channels_last (default: theirs)")
    p.add_argument('--amp', action='store_true', help="train.py's and test.py's --amp (bfloat16 on the CPU)")
    p.add_argument('--gpu', default='-1')
    p.add_argument('--cache', default=str(ROOT / 'benchmarks' / 'cache'))
    p.add_argument('--out', default=str(ROOT / 'benchmarks' / 'cache' / 'la_study_runs'))
    p.add_argument('--versus', default=None,
                   help='another --out with the same methods and seeds (say, without --amp): paired differences')
    args = p.parse_args(argv)
    args.lr_step = args.lr_step or max(1, args.iterations * 5 // 12)
    flags = dict(METHODS)
    for text in args.variant:
        name, variant = parse_variant(text, owned_dests(args))
        if name in flags:
            raise UsageError(f'--variant {name}: given twice')
        flags[name] = variant
    methods = args.methods.split(',') if args.methods else list(flags)
    unknown = [m for m in methods if m not in flags]
    if unknown:
        raise UsageError(f'--methods: unknown {", ".join(unknown)}; choose from {", ".join(flags)} '
                         f'(other settings: --variant NAME=\'FLAGS\')')
    seeds = [int(s) for s in args.seeds.split(',')]
    args.threads = args.threads or max(1, (os.cpu_count() or 1) // args.jobs)

    cache, runs = cache_dir(args), [(m, sd) for sd in seeds for m in methods]
    # every finished run is checked before any is trained: a stale one stops the study now, not hours later
    todo = False
    for name, seed in runs:
        run_dir = run_dir_of(name, seed, args)
        argv = train_argv(flags[name], seed, cache, args, run_dir)
        if (run_dir / 'config.json').is_file():
            check_reusable(run_dir, argv)
        todo = todo or not finished(run_dir, train.parse_args(argv)['method'] == 'dual', args)
    if todo:  # a study whose every run is finished needs no data
        build_cache(args)

    def one(key):
        name, seed = key
        print(f'[{time.strftime("%H:%M:%S")}] {name} seed {seed} ...', flush=True)
        return key, train_and_test(name, flags[name], seed, cache, args)

    with ThreadPoolExecutor(max_workers=args.jobs) as pool:  # threads only wait on subprocesses
        results = dict(pool.map(one, runs))
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
    if len(seeds) > 1 and 'sup' in methods:
        seed_table(methods, seeds, results, summary)

    # every method and variant that is not a baseline against every baseline (network A alone: against the
    # V-Net trained alone)
    baselines = args.baselines.split(',')
    pairs = [(m, b) for m in methods if m not in baselines
             for b in baselines if b in methods and (b == 'sup' or not m.endswith('(A)'))]
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
