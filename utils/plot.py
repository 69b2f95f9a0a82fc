"""Pictures of a run folder: curves.png from iterations.csv, and cases.png once test.py has written test_cases.csv.

    python -m utils.plot model/la/dual_dual_8labels            # also works while the run is training

matplotlib is optional: without it this command stops with one line saying how to install it.
"""
import csv
import json
import math
import sys
from pathlib import Path

import numpy as np

from dataloaders.pictures import optional_import
from utils.cli import OneLineParser, UsageError, run_cli

COMMAND = 'python -m utils.plot'
# (title, iterations.csv columns, kind) of each curve panel; a panel shows the columns a method writes.
# kind: 'terms' are noisy losses (smoothed, log scale when they span decades), 'schedule' and 'ramp' values
# are set by the flags (drawn as they are; a step schedule on a log scale when it spans decades, a ramp on a
# linear one), 'share' values lie in 0..1 (smoothed), 'wins' is the winner column.
PANELS = (
    ('loss', ('loss', 'sup_a', 'sup_b', 'sup'), 'terms'),
    ('unsupervised terms', ('mc_a', 'mc_b', 'reg', 'urps', 'cps_a', 'cps_b', 'con', 'consistency'), 'terms'),
    ('supervised Dice loss', ('dice_a', 'dice_b', 'dice'), 'share'),
    ('learning rate', ('lr',), 'schedule'),
    ('ramped weight', ('lambda_con', 'unsup_weight', 'consistency_weight'), 'ramp'),
    ('wins', ('winner',), 'wins'),
    # pseudo_fg far below label_fg is the collapse train.py warns about
    ('pseudo-labels and the reliable set R', ('reliable', 'pseudo_fg', 'label_fg', 'reliable_fg'), 'share'),
)
# A log axis helps when the values span more than this ratio; below it its ticks are hard to read.
LOG_RATIO = 20
LEGEND = {'reliable': 'R / unlabeled', 'pseudo_fg': 'foreground of ŷ / unlabeled',
          'label_fg': 'foreground / labeled', 'reliable_fg': 'foreground / R'}
PANEL_INCHES = (4.0, 3.0)
TITLE_INCHES = 0.6
MAX_COLUMNS = 4
DPI = 100


def read_iterations(path):
    """{column: float array} of every complete row of iterations.csv ('winner' as 1 for A, 0 for B).

    A run in progress may be writing its last line: a line without its newline is left out.
    """
    text = Path(path).read_text()
    if not text.endswith('\n'):
        text = text[:text.rfind('\n') + 1]
    rows = [r for r in csv.DictReader(text.splitlines()) if None not in r.values()]
    if not rows:
        return {}
    columns = {}
    for name in rows[0]:
        values = [r[name] for r in rows]
        # an empty cell: a column the run did not write at that iteration (a run resumed by a newer train.py)
        columns[name] = np.array([float(v == 'A') if name == 'winner' else float(v) if v else math.nan
                                  for v in values])
    return columns


def moving_average(values, window):
    """Mean of the last `window` values at each step (fewer at the start), so the curve starts at step 0."""
    if window == 1:
        return values  # as they are: a running sum would add rounding noise to a constant
    sums = np.cumsum(np.concatenate([[0.0], values]))
    ends = np.arange(1, len(values) + 1)
    starts = np.maximum(ends - window, 0)
    return (sums[ends] - sums[starts]) / (ends - starts)


def curve_panels(columns):
    """The panels of PANELS that have something to draw: [(title, [column names], kind)].

    A panel of loss terms leaves out the terms that are all zero (weight 0: not computed)."""
    panels = []
    for title, names, kind in PANELS:
        present = [n for n in names if n in columns]
        if kind == 'terms':
            present = [n for n in present if (columns[n] > 0).any()]
        if present:
            panels.append((title, present, kind))
    return panels


def spans_decades(arrays):
    """True when the positive values of `arrays` span more than LOG_RATIO."""
    values = np.concatenate(arrays)
    values = values[np.isfinite(values) & (values > 0)]
    return len(values) > 0 and values.max() > LOG_RATIO * values.min()


def run_title(snapshot_path, last_iteration):
    """'<folder>: <method>, iteration i of T' (plus 'in progress' when the run has not reached T)."""
    config_path = Path(snapshot_path) / 'config.json'
    config = json.loads(config_path.read_text()) if config_path.is_file() else {}
    done = last_iteration + 1
    total = config.get('max_iterations')
    method = f'{config["method"]}, ' if 'method' in config else ''
    progress = f'iteration {done}' + (f' of {total}' if total else '')
    if total and done < total:
        progress += ' (in progress)'
    return f'{Path(snapshot_path).resolve().name}: {method}{progress}'


def plot_curves(columns, path, title):
    """curves.png: one panel per group of PANELS, raw values faint, their moving average solid."""
    figure = optional_import('matplotlib.figure', COMMAND, 'matplotlib')
    panels = curve_panels(columns)
    steps = columns['iteration']
    n = len(steps)
    smooth = max(1, n // 50)
    wins = int(min(max(n // 10, 1), 200))
    ncols = min(MAX_COLUMNS, len(panels))
    nrows = math.ceil(len(panels) / ncols)
    fig = figure.Figure(figsize=(PANEL_INCHES[0] * ncols, PANEL_INCHES[1] * nrows + TITLE_INCHES), dpi=DPI,
                        layout='constrained')
    axes = np.atleast_1d(fig.subplots(nrows, ncols, squeeze=False)).ravel()
    for ax, (panel_title, names, kind) in zip(axes, panels):
        if kind == 'wins':
            share = moving_average(columns['winner'], wins)
            ax.plot(steps, share, label='network A', color='C0')
            ax.plot(steps, 1 - share, label='network B', color='C1')
            panel_title = f'share of wins over the last {wins} steps'
        for name in names if kind != 'wins' else ():
            values = columns[name]
            window = 1 if kind in ('schedule', 'ramp') else smooth
            line, = ax.plot(steps, moving_average(values, window), label=LEGEND.get(name, name), linewidth=1.4)
            if window > 1 and len(names) <= 3:  # the raw values of more terms hide each other's means
                ax.plot(steps, values, color=line.get_color(), alpha=0.25, linewidth=0.6)
        if kind in ('terms', 'schedule') and spans_decades([columns[n] for n in names]):
            ax.set_yscale('log')
        if kind in ('share', 'wins'):
            ax.set_ylim(-0.02, 1.02)
        ax.set_title(panel_title, fontsize=11)
        ax.set_xlabel('iteration')
        ax.grid(alpha=0.3)
        if len(names) > 1 or names[0] == 'winner':
            ax.legend(fontsize=8, ncols=2 if len(names) > 3 and kind == 'terms' else 1)
    for ax in axes[len(panels):]:
        ax.set_visible(False)
    if smooth > 1:
        title += f'  (solid: mean over {smooth} iterations)'
    fig.suptitle(title, fontsize=12)
    fig.savefig(path, dpi=DPI)


def read_cases(path):
    """[(case, dice %, hd95, empty prediction)] of test_cases.csv; hd95 is NaN where it is undefined."""
    with open(path, newline='') as f:
        return [(r['case'], 100 * float(r['dice']), float(r['hd95']), r.get('empty') == 'True')
                for r in csv.DictReader(f)]


def plot_cases(cases, path, title, units='voxels'):
    """cases.png: per-case Dice and HD95 as horizontal bars, cases top to bottom in the file's order."""
    figure = optional_import('matplotlib.figure', COMMAND, 'matplotlib')
    names = [c[0] for c in cases]
    dice = np.array([c[1] for c in cases])
    hd95 = np.array([c[2] for c in cases])
    y = np.arange(len(cases))
    fig = figure.Figure(figsize=(10, 1.2 + 0.25 * max(len(cases), 8)), dpi=DPI, layout='constrained')
    ax_dice, ax_hd = fig.subplots(1, 2, sharey=True)
    ax_dice.barh(y, dice, color='C0')
    ax_dice.axvline(dice.mean(), color='k', linestyle='--', linewidth=1, label=f'mean {dice.mean():.1f} %')
    ax_dice.set_xlim(0, 100)
    ax_dice.set_xlabel('Dice (%)')
    defined = np.isfinite(hd95)
    ax_hd.barh(y[defined], hd95[defined], color='C1')
    if defined.any():
        mean = hd95[defined].mean()
        ax_hd.axvline(mean, color='k', linestyle='--', linewidth=1, label=f'mean {mean:.2f}')
    for i in y[~defined]:
        why = 'empty prediction' if cases[i][3] else 'empty label'
        ax_hd.text(0, i, f' undefined ({why})', va='center', fontsize=8, color='C3')
    for i in np.flatnonzero(dice == 0):
        ax_dice.text(0, i, ' 0', va='center', fontsize=8, color='C3')
    ax_hd.set_xlabel(f'95% Hausdorff distance ({units})')
    ax_dice.set_yticks(y, names, fontsize=8)
    ax_dice.invert_yaxis()
    for ax in (ax_dice, ax_hd):
        ax.grid(axis='x', alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8, loc='lower right')
    fig.suptitle(title, fontsize=12)
    fig.savefig(path, dpi=DPI)


def main(argv=None):
    parser = OneLineParser(prog=COMMAND, description=__doc__.split('\n')[0])
    parser.add_argument('snapshot_path', help='a train.py run folder (or a test.py --out_dir)')
    parser.add_argument('--out', default=None, help='folder for the PNGs (default: snapshot_path)')
    args = parser.parse_args(argv)
    snapshot_path = Path(args.snapshot_path)
    out = Path(args.out) if args.out is not None else snapshot_path
    iterations, cases_csv = snapshot_path / 'iterations.csv', snapshot_path / 'test_cases.csv'
    if not iterations.is_file() and not cases_csv.is_file():
        raise UsageError(f'{snapshot_path}: no iterations.csv or test_cases.csv (train.py and test.py write them)')
    optional_import('matplotlib.figure', COMMAND, 'matplotlib')
    out.mkdir(parents=True, exist_ok=True)
    written = []
    if iterations.is_file():
        columns = read_iterations(iterations)
        if not columns:
            raise UsageError(f'{iterations}: no complete row yet; try again after the first iterations')
        plot_curves(columns, out / 'curves.png', run_title(snapshot_path, int(columns['iteration'][-1])))
        written.append(out / 'curves.png')
    if cases_csv.is_file():
        summary_path = snapshot_path / 'test_summary.json'
        summary = json.loads(summary_path.read_text()) if summary_path.is_file() else {}
        cases = read_cases(cases_csv)
        if cases:
            units = summary.get('units', {}).get('hd95', 'voxels')
            plot_cases(cases, out / 'cases.png', f'{snapshot_path.resolve().name}: {len(cases)} test cases', units)
            written.append(out / 'cases.png')
    print('wrote ' + ', '.join(str(p) for p in written))
    return 0


if __name__ == '__main__':
    sys.exit(run_cli(main))
