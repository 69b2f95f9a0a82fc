"""Can a dual run tell early that it will end far behind the V-Net trained alone? Fit on some seeds, check on the rest.

    python -m benchmarks.failure_signal benchmarks/results/la_seeds_600 --fit_seeds 1,2,3,4,5

Reads a la_study results folder: each <method>_seed<seed>/ with test_cases.csv and iterations_summary.csv
(block means of iterations.csv), and sup_seed<seed>/ of the same seeds. A dual-method run has *failed*
when its mean test Dice ends more than --behind points below sup's of the same seed. For each quantity the
run logs, averaged over the iterations up to --at of the run (0.3: in time to act), a one-sided threshold
is fitted on the runs of --fit_seeds (the cut that classifies most of them right) and checked on the
other seeds' runs: hits (failed runs it flags) and false alarms (other runs it flags). The collapse watch
as train.py runs it (utils/run_log.py) is checked the same way, fed the block means. Prints Markdown tables.
"""
import argparse
import csv
from pathlib import Path

import numpy as np

from benchmarks.plot_la_study import RUN_NAME
from utils.cli import UsageError, run_cli
from utils.run_log import CollapseWatch


def read_csv(path):
    with open(path, newline='') as f:
        return list(csv.DictReader(f))


def mean_dice(run_dir):
    return 100 * np.mean([float(r['dice']) for r in read_csv(run_dir / 'test_cases.csv')])


def early_features(rows, until):
    """The quantities a dual run logs, from its iterations_summary.csv rows up to iteration `until`: each
    one's mean, the foreground shares as ratios to the labeled volumes' share, and the watch's own quantity
    (the lowest pseudo-label / label share over any three consecutive blocks)."""
    early = [r for r in rows if int(r['iteration']) <= until]
    col = {k: np.array([float(r[k]) for r in early]) for k in early[0] if k != 'iteration'}
    label = col['label_fg'].mean()
    windows = [col['pseudo_fg'][i:i + 3].mean() / col['label_fg'][i:i + 3].mean() for i in range(len(early) - 2)]
    return {'pseudo_fg / label_fg': col['pseudo_fg'].mean() / label,
            'lowest 3-block pseudo_fg / label_fg': min(windows, default=np.nan),
            'reliable_fg / label_fg': col['reliable_fg'].mean() / label,
            'reliable': col['reliable'].mean(), 'a_wins': col['a_wins'].mean(),
            'dice_a': col['dice_a'].mean(), 'dice_b': col['dice_b'].mean(),
            'dice_a - dice_b, absolute': np.abs(col['dice_a'] - col['dice_b']).mean(),
            'mc_a + mc_b': (col['mc_a'] + col['mc_b']).mean(), 'reg': col['reg'].mean(),
            'cps_a + cps_b': (col['cps_a'] + col['cps_b']).mean(), 'con': col['con'].mean(),
            'loss': col['loss'].mean()}


def watch_fires(rows, until, ratio=0.25):
    """Whether CollapseWatch, with a window of three blocks, warns on the block means up to `until`."""
    watch = CollapseWatch(window=3, ratio=ratio)
    return any(watch.update(float(r['pseudo_fg']), float(r['label_fg'])) for r in rows
               if int(r['iteration']) <= until)


def fit_threshold(values, failed):
    """(cut, sign) of the one-sided rule sign * (value - cut) < 0 => failed that classifies the most runs
    right (ties: the first cut from below, flagging low values first); cuts lie midway between values."""
    points = sorted(set(values))
    best = None
    for cut in [(a + b) / 2 for a, b in zip(points, points[1:])]:
        for sign in (1, -1):
            right = sum((sign * (v - cut) < 0) == f for v, f in zip(values, failed))
            if best is None or right > best[0]:
                best = (right, cut, sign)
    return best[1:] if best else (np.nan, 1)


def count(flags, failed):
    """'hits/failed, false alarms/others' of a rule's flags."""
    hits = sum(f and x for f, x in zip(flags, failed))
    alarms = sum(f and not x for f, x in zip(flags, failed))
    return f'{hits}/{sum(failed)} | {alarms}/{len(failed) - sum(failed)}'


def load_runs(folder, behind, methods=None):
    """[(method, seed, gap to sup in points, failed, iterations_summary rows)] of every dual-method run (of
    `methods` when given), by method and seed."""
    folder = Path(folder)
    runs = []
    for run_dir in folder.glob('*_seed*'):
        match = RUN_NAME.match(run_dir.name)
        summary = run_dir / 'iterations_summary.csv'
        if (match is None or not summary.is_file() or not (run_dir / 'nets_a').is_dir()
                or methods and match['method'] not in methods):
            continue  # not a run of the pair, or not asked for
        sup = folder / f'sup_seed{match["seed"]}'
        if not (sup / 'test_cases.csv').is_file():
            raise UsageError(f'{run_dir}: no sup run of seed {match["seed"]} at {sup} to compare with')
        gap = mean_dice(run_dir) - mean_dice(sup)
        runs.append((match['method'], int(match['seed']), gap, gap < -behind, read_csv(summary)))
    if not runs:
        raise UsageError(f'{folder}: no dual-method run with iterations_summary.csv (a la_study --out folder)')
    return sorted(runs, key=lambda r: r[:2])


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('folder', help='a la_study --out folder with sup and dual-method runs')
    p.add_argument('--fit_seeds', required=True, help='comma list: the seeds rules are fitted on')
    p.add_argument('--methods', default=None, help='comma list of the runs\' methods (default: every dual one)')
    p.add_argument('--at', type=float, default=0.3, help='share of the run the signal may use')
    p.add_argument('--behind', type=float, default=3.0, help='points behind sup that count as failed')
    args = p.parse_args(argv)
    fit_seeds = {int(s) for s in args.fit_seeds.split(',')}
    runs = load_runs(args.folder, args.behind, args.methods and args.methods.split(','))
    until = round(args.at * int(runs[0][4][-1]['iteration']))
    features = [early_features(rows, until) for *_, rows in runs]
    fit = [i for i, r in enumerate(runs) if r[1] in fit_seeds]
    check = [i for i, r in enumerate(runs) if r[1] not in fit_seeds]
    if not fit or not check:
        raise UsageError(f'--fit_seeds {args.fit_seeds}: both the fitted and the checked seeds need runs')
    failed = [r[3] for r in runs]

    print(f'Runs of the pair, failed = ending more than {args.behind:g} points below sup of the same seed; '
          f'quantities averaged over iterations 1-{until}:')
    names = list(features[0])
    print('| run | Dice gap to sup | failed | ' + ' | '.join(names) + ' |')
    print('|---' * (3 + len(names)) + '|')
    for (method, seed, gap, fail, _), feats in zip(runs, features):
        print(f'| {method} seed {seed} | {gap:+.2f} | {"yes" if fail else "no"} | '
              + ' | '.join(f'{feats[n]:.3f}' for n in names) + ' |')

    print(f'\nRules fitted on seeds {sorted(fit_seeds)} ({len(fit)} runs, {sum(failed[i] for i in fit)} failed), '
          f'checked on the other {len(check)} runs ({sum(failed[i] for i in check)} failed):')
    print('| signal by iteration ' + str(until) + ' | rule | right when fitted | hits, checked | false alarms, checked |')
    print('|---|---|---|---|---|')
    for name in names:
        values = [f[name] for f in features]
        cut, sign = fit_threshold([values[i] for i in fit], [failed[i] for i in fit])
        flags = [sign * (v - cut) < 0 for v in values]
        right = sum(flags[i] == failed[i] for i in fit)
        print(f'| {name} | {"<" if sign > 0 else ">"} {cut:.3f} | {right}/{len(fit)} | '
              f'{count([flags[i] for i in check], [failed[i] for i in check])} |')
    for label, limit in ((f'by iteration {until}', until), ('over the whole run', 10 ** 9)):
        flags = [watch_fires(rows, limit) for *_, rows in runs]
        print(f'| the collapse watch, {label} | pseudo_fg < 1/4 label_fg over 3 blocks | '
              f'{sum(flags[i] == failed[i] for i in fit)}/{len(fit)} | '
              f'{count([flags[i] for i in check], [failed[i] for i in check])} |')
    all_flags = [watch_fires(rows, 10 ** 9) for *_, rows in runs]
    print(f'\nThe collapse watch over the whole run, all {len(runs)} runs: hits, false alarms '
          f'{count(all_flags, failed)}')


if __name__ == '__main__':
    run_cli(main)
