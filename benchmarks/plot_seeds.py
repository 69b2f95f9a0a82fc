"""Per-seed mean Dice of several methods of a la_study.py comparison, one dot per seed, a line joining each seed.

    python -m benchmarks.plot_seeds benchmarks/results/la_seeds_600 --methods sup,dual,dual-ours --out docs/la_seeds_600.png

Reads RUNS_DIR/<method>_seed<seed>/test_cases.csv and draws, for each seed that every method ran, its
mean test Dice under each method (x: the methods, in the order given), joined by a line: the same seed
means the same labeled volumes, crops and initial draws, so a line that falls is a seed on which that
method did worse. A seed whose run of a method ends more than --behind points below the first method's
run of that seed is drawn in red from there on. Needs matplotlib.
"""
import argparse
import sys
from pathlib import Path

import numpy as np

from benchmarks.plot_la_study import DPI, read_runs
from dataloaders.pictures import optional_import

ROOT = Path(__file__).resolve().parents[1]
FAILED, KEPT = 'tab:red', '0.45'


def per_seed(runs, methods):
    """{seed: [mean Dice % of each method]} of the seeds every method ran."""
    seeds = sorted(set.intersection(*(set(runs[m]) for m in methods)))
    return {sd: [float(np.mean(list(runs[m][sd].values()))) for m in methods] for sd in seeds}


def spread(ys, gap_share=0.035):
    """{key: y} moved apart, in order, to at least gap_share of their range (text labels that do not overlap)."""
    order = sorted(ys, key=ys.get)
    gap = gap_share * max(max(ys.values()) - min(ys.values()), 1.0) * 1.5
    placed = {}
    for key in order:
        y = ys[key]
        if placed:
            y = max(y, placed[order[len(placed) - 1]] + gap)
        placed[key] = y
    return placed


def plot(dice, methods, labels, behind, title, path):
    """The figure; returns {method: number of seeds more than `behind` points below the first method}."""
    figure = optional_import('matplotlib.figure', 'benchmarks/plot_seeds.py', 'matplotlib')
    fig = figure.Figure(figsize=(1.9 * len(methods) + 2.2, 4.6), dpi=DPI, layout='constrained')
    ax = fig.subplots()
    x = np.arange(len(methods))
    failed = {m: 0 for m in methods}
    for seed, values in dice.items():
        worse = [v < values[0] - behind for v in values]
        for i, m in enumerate(methods):
            failed[m] += worse[i]
        colour = FAILED if any(worse) else KEPT
        ax.plot(x, values, color=colour, linewidth=1, alpha=0.7, zorder=1)
        ax.scatter(x, values, s=26, zorder=2, color=[FAILED if w else KEPT for w in worse])
    for seed, y in spread({sd: v[-1] for sd, v in dice.items()}).items():  # seed names beside the last dots
        ax.annotate(str(seed), (x[-1], y), xytext=(7, 0), textcoords='offset points', fontsize=7, va='center',
                    annotation_clip=False, color=FAILED if any(v < dice[seed][0] - behind for v in dice[seed]) else KEPT)
    means = np.mean(list(dice.values()), axis=0)
    ax.scatter(x, means, marker='_', s=900, color='black', zorder=3, label='mean over seeds')
    ax.set_xticks(x, [f'{labels[i]}\n{failed[m]} of {len(dice)} seeds > {behind:g} behind'
                      if i else f'{labels[i]}\n(the reference)' for i, m in enumerate(methods)], fontsize=8)
    ax.set_xlim(-0.4, len(methods) - 0.4)
    ax.margins(y=0.08)
    ax.set_ylabel('mean test Dice of the seed (%)')
    ax.grid(axis='y', alpha=0.3)
    ax.legend(fontsize=8, loc='lower left')
    ax.set_title(title, fontsize=10)
    fig.savefig(path, dpi=DPI)
    return failed


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('runs_dir', help="la_study.py's --out folder (<method>_seed<seed>/test_cases.csv)")
    p.add_argument('--methods', required=True, help='comma list; the first is the reference of --behind')
    p.add_argument('--labels', default=None, help='comma list of axis labels, one per method (default: the names)')
    p.add_argument('--behind', type=float, default=3.0, help='points below the reference that are drawn red')
    p.add_argument('--title', default='Mean test Dice per seed; a line joins the runs of one seed')
    p.add_argument('--out', default=str(ROOT / 'docs' / 'la_seeds.png'), help='the PNG to write')
    args = p.parse_args(argv)
    methods = args.methods.split(',')
    labels = args.labels.split(',') if args.labels else methods
    if len(labels) != len(methods):
        sys.exit(f'error: --labels names {len(labels)} methods, --methods {len(methods)}')
    runs = read_runs(args.runs_dir)
    missing = [m for m in methods if m not in runs]
    if missing:
        sys.exit(f'error: {args.runs_dir}: no {missing[0]}_seed<seed>/test_cases.csv '
                 f'(found: {", ".join(sorted(runs)) or "none"})')
    dice = per_seed(runs, methods)
    if not dice:
        sys.exit(f'error: {args.runs_dir}: no seed that every one of {", ".join(methods)} ran')
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    failed = plot(dice, methods, labels, args.behind, args.title.replace('\\n', '\n'), args.out)
    for m in methods[1:]:
        print(f'{m}: {failed[m]} of {len(dice)} seeds more than {args.behind:g} points below {methods[0]}')
    print(f'wrote {args.out}')
    return 0


if __name__ == '__main__':
    sys.exit(main())
