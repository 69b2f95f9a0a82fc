"""Per-case paired Dice of dual against each baseline of a la_study.py comparison, as one PNG.

    python -m benchmarks.plot_la_study benchmarks/cache/la_study_runs --out docs/la_cpu_paired.png

Reads RUNS_DIR/<method>_seed<seed>/test_cases.csv (la_study.py writes them through test.py). One panel per
baseline: the baseline's Dice (x) against dual's (y) on the same test case and seed, all seeds pooled, one
marker per seed. A point above the diagonal is a case that dual segments better. Needs matplotlib.
"""
import argparse
import csv
import re
import sys
from pathlib import Path

import numpy as np

from dataloaders.pictures import optional_import

ROOT = Path(__file__).resolve().parents[1]

RUN_NAME = re.compile(r'^(?P<method>.+)_seed(?P<seed>\d+)$')
# Baselines in the README's order, then any other method (an ablation) by name.
ORDER = ('sup', 'pairsup', 'mt')
NAMES = {'sup': 'sup (V-Net, labeled only)', 'pairsup': 'pair-sup (the pair, supervised only)',
         'mt': 'mt (mean teacher)'}
SHORT = {'pairsup': 'pair-sup'}
MARKERS = 'osD^v<>'
PANEL_INCHES = 4.2
MIN_WIDTH_INCHES = 5.6  # room for the two title lines above a single panel
DPI = 100


def read_runs(runs_dir):
    """{method: {seed: {case: dice in %}}} of every <method>_seed<seed> folder holding a test_cases.csv."""
    runs = {}
    for path in sorted(Path(runs_dir).glob('*_seed*/test_cases.csv')):
        match = RUN_NAME.match(path.parent.name)
        if match is None:
            continue
        with open(path, newline='') as f:
            dice = {r['case']: 100 * float(r['dice']) for r in csv.DictReader(f)}
        runs.setdefault(match['method'], {})[int(match['seed'])] = dice
    return runs


def paired(runs, reference, baseline):
    """{seed: (baseline Dice array, reference Dice array)} over the cases both scored, seeds both ran."""
    pairs = {}
    for seed in sorted(set(runs[reference]) & set(runs[baseline])):
        cases = [c for c in runs[reference][seed] if c in runs[baseline][seed]]
        if cases:
            pairs[seed] = (np.array([runs[baseline][seed][c] for c in cases]),
                           np.array([runs[reference][seed][c] for c in cases]))
    return pairs


def baseline_order(methods, reference):
    """The baselines to draw: ORDER first, then the rest by name."""
    others = [m for m in methods if m != reference]
    return [m for m in ORDER if m in others] + sorted(m for m in others if m not in ORDER)


def plot(runs, reference, baselines, path):
    """One scatter panel per baseline; returns {baseline: (mean difference in points, better, n)}."""
    figure = optional_import('matplotlib.figure', 'benchmarks/plot_la_study.py', 'matplotlib')
    fig = figure.Figure(figsize=(max(PANEL_INCHES * len(baselines), MIN_WIDTH_INCHES), PANEL_INCHES + 0.9), dpi=DPI,
                        layout='constrained')
    axes = np.atleast_1d(fig.subplots(1, len(baselines), squeeze=False)).ravel()
    stats = {}
    for ax, baseline in zip(axes, baselines):
        pairs = paired(runs, reference, baseline)
        ax.plot([0, 100], [0, 100], color='0.6', linewidth=1, zorder=1)
        for k, (seed, (x, y)) in enumerate(pairs.items()):
            ax.scatter(x, y, s=22, marker=MARKERS[k % len(MARKERS)], alpha=0.75, zorder=2, label=f'seed {seed}')
        diffs = np.concatenate([y - x for x, y in pairs.values()]) if pairs else np.array([])
        better = int((diffs > 0).sum())
        stats[baseline] = (float(diffs.mean()) if len(diffs) else float('nan'), better, len(diffs))
        ax.set_title(f'vs {NAMES.get(baseline, baseline)}\n{reference} better in {better} of {len(diffs)}, '
                     f'mean {stats[baseline][0]:+.2f} points', fontsize=10)
        ax.set_xlim(-2, 102)
        ax.set_ylim(-2, 102)
        ax.set_aspect('equal')
        ax.set_xlabel(f'{SHORT.get(baseline, baseline)} Dice (%)')
        ax.set_ylabel(f'{SHORT.get(reference, reference)} Dice (%)')
        ax.grid(alpha=0.3)
        if len(pairs) > 1:
            ax.legend(fontsize=8, loc='lower right')
    seeds = sorted({s for b in baselines for s in paired(runs, reference, b)})
    fig.suptitle(f'Per-case Dice on the test cases, {reference} against each baseline\n'
                 f'seeds {", ".join(map(str, seeds))} pooled; above the diagonal: {reference} better', fontsize=11)
    fig.savefig(path, dpi=DPI)
    return stats


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('runs_dir', help="la_study.py's --out folder (<method>_seed<seed>/test_cases.csv)")
    p.add_argument('--out', default=str(ROOT / 'docs' / 'la_cpu_paired.png'), help='the PNG to write')
    p.add_argument('--reference', default='dual', help='the method on the y axis of every panel')
    p.add_argument('--baselines', default=None,
                   help='comma list of methods on the x axes (default: every other method found)')
    args = p.parse_args(argv)
    runs = read_runs(args.runs_dir)
    if args.reference not in runs:
        sys.exit(f'error: {args.runs_dir}: no {args.reference}_seed<seed>/test_cases.csv '
                 f'(found: {", ".join(sorted(runs)) or "none"})')
    baselines = args.baselines.split(',') if args.baselines else baseline_order(runs, args.reference)
    missing = [b for b in baselines if b not in runs or not paired(runs, args.reference, b)]
    if missing or not baselines:
        sys.exit(f'error: {args.runs_dir}: no runs of {", ".join(missing) or "any baseline"} with a seed and '
                 f'cases in common with {args.reference} (found: {", ".join(sorted(runs))})')
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    stats = plot(runs, args.reference, baselines, args.out)
    for baseline, (mean, better, n) in stats.items():
        print(f'vs {baseline}: mean {mean:+.2f} points, {args.reference} better in {better} of {n} case-seed pairs')
    print(f'wrote {args.out}')
    return 0


if __name__ == '__main__':
    sys.exit(main())
