"""The run pictures of utils.plot (curves.png, cases.png) and benchmarks/plot_la_study.py, on small made-up CSVs:
real PNGs of the expected size, from a finished and from an unfinished run, and one line when matplotlib is
missing."""
import csv
import importlib.util
import json
import sys
from pathlib import Path

import numpy as np
import pytest

from conftest import ITERATION_COLUMNS, require_extra
from utils import plot
from utils.cli import run_cli

REPO = Path(__file__).resolve().parents[1]


def load_benchmark(name):
    """A benchmarks/ script as a module (the folder is not a package); in-process is seconds faster."""
    spec = importlib.util.spec_from_file_location(name, REPO / 'benchmarks' / f'{name}.py')
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def png_shape(path):
    return require_extra('matplotlib.image').imread(path).shape


@pytest.fixture
def saved_figures(monkeypatch):
    """Every matplotlib Figure saved during the test, in order, so a test can read back what was drawn (the
    PNG's size says nothing about its content)."""
    figure = require_extra('matplotlib.figure')
    saved, savefig = [], figure.Figure.savefig

    def record(fig, *args, **kwargs):
        saved.append(fig)
        return savefig(fig, *args, **kwargs)
    monkeypatch.setattr(figure.Figure, 'savefig', record)
    return saved


def write_run(folder, method, rows, max_iterations, cut_last_line=False):
    """A run folder as train.py leaves it: config.json and iterations.csv with `rows` rows of train's columns."""
    folder.mkdir()
    (folder / 'config.json').write_text(json.dumps({'method': method, 'max_iterations': max_iterations}))
    rng = np.random.default_rng(0)
    with open(folder / 'iterations.csv', 'w', newline='') as f:
        writer = csv.writer(f)
        writer.writerow(['iteration'] + ITERATION_COLUMNS[method])
        for it in range(rows):
            writer.writerow([it] + ['AB'[it % 3 == 0] if c == 'winner' else f'{rng.uniform(0.01, 1):.6g}'
                                    for c in ITERATION_COLUMNS[method]])
        if cut_last_line:  # the line a running train.py is writing
            f.write(f'{rows},0.01,1.5')
    return folder


@pytest.mark.parametrize('method,size', [('dual', (660, 1600)), ('sup', (360, 1200))])
def test_curves_of_a_finished_and_an_unfinished_run(tmp_path, method, size):
    require_extra('matplotlib')
    for name, rows, total, cut in (('finished', 30, 30, False), ('running', 12, 100, True)):
        run = write_run(tmp_path / name, method, rows, total, cut)
        assert plot.main([str(run)]) == 0
        assert png_shape(run / 'curves.png')[:2] == size  # 2 x 4 panels for dual, 1 x 3 for sup
        columns = plot.read_iterations(run / 'iterations.csv')
        assert list(columns['iteration']) == list(range(rows))  # the half-written line is left out
    assert plot.run_title(tmp_path / 'running', 11) == f'running: {method}, iteration 12 of 100 (in progress)'
    assert plot.run_title(tmp_path / 'finished', 29) == f'finished: {method}, iteration 30 of 30'
    assert not (tmp_path / 'finished' / 'cases.png').exists()  # no test_cases.csv yet


def test_curves_draw_each_column_under_its_name(tmp_path, saved_figures):
    """The lines of curves.png are the CSV's columns: x the iterations, y the column's moving average (the
    flags' schedules as they are), each labelled with its column's name. Bugs caught: a term drawn under
    another's label, an x axis shifted by one, a smoothing window off, a panel missing a column."""
    run = write_run(tmp_path / 'run', 'dual', 120, 120)
    assert plot.main([str(run)]) == 0
    columns = plot.read_iterations(run / 'iterations.csv')
    smooth = 120 // 50
    fig = saved_figures[0]
    panels = plot.curve_panels(columns)
    axes = [ax for ax in fig.axes if ax.get_visible()]
    assert len(axes) == len(panels) == 7
    for ax, (_, names, kind) in zip(axes, panels):
        drawn = {line.get_label(): line for line in ax.lines if not line.get_label().startswith('_')}
        if kind == 'wins':
            share = plot.moving_average(columns['winner'], 12)
            assert np.allclose(drawn['network A'].get_ydata(), share)
            assert np.allclose(drawn['network B'].get_ydata(), 1 - share)
            assert columns['winner'].mean() == pytest.approx(2 / 3)  # network A wins two rows in three
            continue
        assert list(drawn) == [plot.LEGEND.get(n, n) for n in names]
        for name in names:
            line = drawn[plot.LEGEND.get(name, name)]
            window = 1 if kind in ('schedule', 'ramp') else smooth
            assert list(line.get_xdata()) == list(range(120)), name
            assert np.allclose(line.get_ydata(), plot.moving_average(columns[name], window)), name
            assert window == 1 or not np.allclose(line.get_ydata(), columns[name])  # smoothed, not raw


def test_cases_png_with_an_empty_prediction(tmp_path):
    require_extra('matplotlib')
    run = write_run(tmp_path / 'run', 'dual', 5, 5)
    with open(run / 'test_cases.csv', 'w', newline='') as f:
        f.write('case,dice,jaccard,hd95,asd,empty,gt_empty\n'
                'c1,0.9,0.8,2.5,0.5,False,False\nc2,0.0,0.0,nan,nan,True,False\nc3,0.7,0.5,9.0,2.0,False,False\n')
    assert plot.main([str(run), '--out', str(tmp_path / 'pictures')]) == 0
    assert png_shape(tmp_path / 'pictures' / 'cases.png')[:2] == (320, 1000)
    assert png_shape(tmp_path / 'pictures' / 'curves.png')[:2] == (660, 1600)
    assert plot.read_cases(run / 'test_cases.csv')[1][::3] == ('c2', True)


def test_plot_without_matplotlib_is_one_line(tmp_path, monkeypatch):
    run = write_run(tmp_path / 'run', 'sup', 3, 3)
    monkeypatch.setitem(sys.modules, 'matplotlib.figure', None)  # as if matplotlib were not installed
    with pytest.raises(SystemExit) as stop:
        run_cli(plot.main, [str(run)])
    assert stop.value.code == 'error: python -m utils.plot needs the package matplotlib: pip install matplotlib'


def test_plot_of_a_folder_without_csv_is_one_line(tmp_path):
    with pytest.raises(SystemExit) as stop:
        run_cli(plot.main, [str(tmp_path)])
    assert str(stop.value.code).startswith('error: ') and 'iterations.csv' in stop.value.code


def test_la_study_paired_dice_figure(tmp_path, capsys, saved_figures):
    """Each panel puts the baseline's Dice on x and dual's on y, one point per case and seed. Bugs caught:
    the axes swapped (dual would look worse where it is better), a seed's points dropped, or a point paired with
    another case's or seed's Dice."""
    plot_la_study = load_benchmark('plot_la_study')
    runs = tmp_path / 'runs'
    dice = {'dual': [0.8, 0.6, 0.0], 'pairsup': [0.7, 0.65, 0.0], 'mt': [0.9, 0.7, 0.01]}
    for method, values in dice.items():
        for seed in (1337, 2):
            folder = runs / f'{method}_seed{seed}'
            folder.mkdir(parents=True)
            (folder / 'test_cases.csv').write_text('case,dice,jaccard,hd95,asd\n' + ''.join(
                f'case{i},{v},{v},1.0,1.0\n' for i, v in enumerate(values)))
    out = tmp_path / 'docs' / 'la_cpu_paired.png'
    assert plot_la_study.main([str(runs), '--out', str(out)]) == 0
    # pair-sup before mt (the README's order); 6 case-seed pairs each, seeds pooled
    assert capsys.readouterr().out.splitlines()[:2] == [
        'vs pairsup: mean +1.67 points, dual better in 2 of 6 case-seed pairs',
        'vs mt: mean -7.00 points, dual better in 0 of 6 case-seed pairs']
    assert png_shape(out)[:2] == (510, 840)  # two 4.2-inch panels
    for ax, baseline in zip(saved_figures[0].axes, ('pairsup', 'mt')):
        assert ax.get_xlabel() == f'{plot_la_study.SHORT.get(baseline, baseline)} Dice (%)'
        for seed_points in ax.collections:  # one scatter per seed, cases in the file's order
            assert np.allclose(seed_points.get_offsets(), 100 * np.array([dice[baseline], dice['dual']]).T)
        assert len(ax.collections) == 2

    (runs / 'dual_seed2' / 'test_cases.csv').unlink()
    (runs / 'dual_seed1337' / 'test_cases.csv').unlink()
    with pytest.raises(SystemExit) as stop:
        plot_la_study.main([str(runs), '--out', str(out)])
    assert str(stop.value.code).startswith('error: ') and 'no dual_seed' in stop.value.code
    assert '\n' not in stop.value.code


def test_per_seed_figure_joins_each_seeds_runs_and_marks_the_seeds_behind(tmp_path, capsys, saved_figures):
    """One line per seed through its methods' mean Dice, in the order given; a seed more than 3 points below
    the first method is red. Bugs caught: a line joining different seeds' runs, a method's mean taken over
    another method's cases, the count of seeds behind the reference off by the boundary."""
    plot_seeds = load_benchmark('plot_seeds')
    runs = tmp_path / 'runs'
    dice = {('sup', 1): [0.8, 0.8], ('dual', 1): [0.7, 0.7], ('sup', 2): [0.6, 0.7], ('dual', 2): [0.62, 0.65]}
    for (method, seed), values in dice.items():
        folder = runs / f'{method}_seed{seed}'
        folder.mkdir(parents=True)
        (folder / 'test_cases.csv').write_text('case,dice\n' + ''.join(f'c{i},{v}\n' for i, v in enumerate(values)))
    out = tmp_path / 'seeds.png'
    assert plot_seeds.main([str(runs), '--methods', 'sup,dual', '--out', str(out)]) == 0
    assert capsys.readouterr().out.splitlines()[0] == 'dual: 1 of 2 seeds more than 3 points below sup'
    ax = saved_figures[0].axes[0]
    lines = [line.get_ydata() for line in ax.get_lines()]
    assert np.allclose(lines, [[80, 70], [65, 63.5]])  # seed 1, then seed 2
    red = [line.get_color() for line in ax.get_lines()]
    assert red == [plot_seeds.FAILED, plot_seeds.KEPT]  # seed 1 fell 10 points, seed 2 1.5
    assert png_shape(out)[0] > 0

    with pytest.raises(SystemExit) as stop:
        plot_seeds.main([str(runs), '--methods', 'sup,mt', '--out', str(out)])
    assert str(stop.value.code).startswith('error: ') and 'no mt_seed' in stop.value.code
