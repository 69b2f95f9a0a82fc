"""A training run's records besides checkpoints, in its folder: config.json, log.txt (events), iterations.csv
(one row per iteration), TensorBoard with --tensorboard, the progress bar, and the pseudo-label collapse watch.
Rank 0 alone writes."""
import csv
import json
import logging
import math
from collections import deque
from pathlib import Path

import torch
from tqdm import tqdm


class NonFiniteLoss(ArithmeticError):
    """A loss term became NaN or infinite; the message names it and the iteration (run_cli prints it as one line)."""
    user_error = True


class RunLog:
    """RunLog(cfg, start, is_main, nets): the run folder made, config.json written and the records opened; then
    per iteration record(), and close() at the end. nets: {name: module} for TensorBoard's slice pictures."""

    def __init__(self, cfg, start, is_main, nets):
        self.cfg, self.nets = cfg, nets
        folder = Path(cfg['snapshot_path'])
        self.log = logging.getLogger('train')
        self.log.handlers.clear()
        self.log.propagate = False
        self.log.setLevel(logging.INFO if is_main else logging.CRITICAL)
        self.board = None
        if is_main:
            folder.mkdir(parents=True, exist_ok=True)
            (folder / 'config.json').write_text(json.dumps(cfg, indent=2) + '\n')
            fmt = logging.Formatter('[%(asctime)s] %(message)s', '%Y-%m-%d %H:%M:%S')
            for handler in (logging.FileHandler(folder / 'log.txt'), logging.StreamHandler()):
                handler.setFormatter(fmt)
                self.log.addHandler(handler)
            if cfg['tensorboard']:  # an optional package: imported only when asked for
                from utils.tensorboard_log import TensorBoardLog
                self.board = TensorBoardLog(folder, start)
        self.table = IterationCSV(folder / 'iterations.csv', start, enabled=is_main)
        self.bar = tqdm(total=cfg['max_iterations'], initial=start, disable=not is_main, dynamic_ncols=True)
        self.watch = CollapseWatch(window=min(100, max(5, cfg['max_iterations'] // 20)))
        self.makes_pseudo = cfg['method'] == 'dual' and (cfg['lambda_cps'] > 0 or cfg['lambda_con'] > 0)

    def info(self, message):
        self.log.info(message)

    def record(self, it, lr, record, extra, image, label):
        """One iterations.csv row {'iteration', 'lr', *record, *extra} (a 0-d tensor each, or a float), and every
        log_every iterations a log.txt line; stops the run on a non-finite loss term."""
        values = host_values({**record, **{k: v for k, v in extra.items() if torch.is_tensor(v)}}, it,
                             self.cfg['snapshot_path'])
        row = {'lr': lr, **values, **{k: v for k, v in extra.items() if not torch.is_tensor(v)}}
        if 'winner' in row:
            row['winner'] = 'A' if values['winner'] else 'B'
        if self.makes_pseudo:
            self.warn(self.watch.update(values['pseudo_fg'], values['label_fg']))
        done = it + 1
        self.table.write(it, row)
        self.bar.set_postfix(loss=f'{row["loss"]:.4f}', refresh=False)
        self.bar.update(1)
        if done % self.cfg['log_every'] == 0 or done == self.cfg['max_iterations']:
            self.table.flush()
            self.log.info(f'iteration {done}: ' + ', '.join(f'{k} {v:.4f}' if isinstance(v, float) else f'{k} {v}'
                                                           for k, v in row.items()))
        if self.board is not None:
            self.board.scalars(it, row)
            if self.cfg['image_every'] and done % self.cfg['image_every'] == 0:
                self.board.slices(it, self.nets, image, label,
                                  self.cfg['labeled_bs'] if self.cfg['method'] != 'sup' else None,
                                  self.cfg['num_classes'])

    def scalars(self, it, values):
        if self.board is not None:
            self.board.scalars(it, values)

    def warn(self, message):
        """A warning (None: nothing to say) in log.txt and on the console, and a mark on the progress bar."""
        if message is not None:
            self.log.warning('warning: ' + message)
            self.bar.set_description_str('warning, see log.txt', refresh=False)

    def flush(self):
        """Every row so far on disk: a resume after a kill loses none before its checkpoint."""
        self.table.flush()

    def close(self, message):
        """The end of the run, finished or stopped: close every record, then log why it ends."""
        self.bar.close()
        self.table.close()
        if self.board is not None:
            self.board.close()
        self.log.info(message)


def host_values(record, iteration, snapshot_path):
    """{name: float} of a record of 0-d tensors, in one device-to-host copy. Stops the run on a non-finite
    value, naming the term: training on would only spread NaN into the weights of the next checkpoint."""
    names = list(record)
    values = torch.stack([record[n].detach().float() for n in names]).tolist()
    bad = [n for n, v in zip(names, values) if not math.isfinite(v) and n != 'loss']
    if bad or not all(math.isfinite(v) for v in values):
        raise NonFiniteLoss(f'non-finite loss term {", ".join(bad or ["loss"])} at iteration {iteration}; '
                            f'stopping (the last good checkpoint in {snapshot_path} is kept)')
    return dict(zip(names, values))


class IterationCSV:
    """Append-only CSV of per-iteration values; the columns are the keys of the first row written, so every value
    a run logs has its column. Floats keep 6 significant digits: as exact as the curves need, readable by eye.

    On resume, rows at or after the checkpoint's iteration (written by the interrupted run after its last
    checkpoint) are dropped first, so the file reads as one uninterrupted run. The file is rewritten at the
    first new row: a run that stops before one leaves it as it was."""

    def __init__(self, path, start_iteration=0, enabled=True):
        self.path, self.enabled, self.file = Path(path), enabled, None
        self.kept, self.kept_columns = [], []
        if enabled and start_iteration > 0 and self.path.exists():
            with open(self.path, newline='') as f:
                reader = csv.DictReader(f)
                # a row cut short by a kill has empty (None) fields: drop it with the rows after the checkpoint
                self.kept = [row for row in reader
                             if None not in row.values() and int(row['iteration']) < start_iteration]
                self.kept_columns = list(reader.fieldnames or [])

    def write(self, iteration, row):
        if not self.enabled:
            return
        if self.file is None:
            columns = ['iteration'] + list(row)
            columns += [c for c in self.kept_columns if c not in columns]  # values no longer logged stay
            self.file = open(self.path, 'w', newline='')
            self.writer = csv.DictWriter(self.file, fieldnames=columns, restval='', extrasaction='ignore')
            self.writer.writeheader()
            self.writer.writerows(self.kept)
        self.writer.writerow({'iteration': iteration,
                              **{k: (f'{v:.6g}' if isinstance(v, float) else v) for k, v in row.items()}})

    def flush(self):
        if self.file is not None:
            self.file.flush()

    def close(self):
        if self.file is not None:
            self.file.close()


class CollapseWatch:
    """Are the pseudo-labels mostly background? With the unsupervised terms at full weight from the first
    iteration (the paper's schedule), two networks whose early guesses agree on background can reward each other
    for it. Feed it each iteration's pseudo-label and labeled-batch foreground shares; it returns a warning once,
    the first time the pseudo-labels' mean share over the last `window` iterations is below `ratio` times the
    labeled volumes' mean share, and None otherwise. It describes the pseudo-labels; it does not forecast the
    final Dice (docs/results.md, seed study)."""

    def __init__(self, window, ratio=0.25):
        self.pseudo, self.labeled = deque(maxlen=window), deque(maxlen=window)
        self.ratio, self.warned = ratio, False

    def update(self, pseudo_fg, label_fg):
        self.pseudo.append(pseudo_fg)
        self.labeled.append(label_fg)
        if self.warned or len(self.pseudo) < self.pseudo.maxlen:
            return None
        pseudo, labeled = sum(self.pseudo) / len(self.pseudo), sum(self.labeled) / len(self.labeled)
        if pseudo >= self.ratio * labeled:
            return None
        self.warned = True
        return (f'the pseudo-labels mark {100 * pseudo:.1f} % of the unlabeled voxels as foreground against '
                f'{100 * labeled:.1f} % in the labeled volumes over the last {len(self.pseudo)} iterations: '
                f'they are mostly background now. Not a forecast: runs recover from this, and runs fall behind '
                f'without it (docs/results.md, seed study); --ramp_unsup 1 ramps the unsupervised terms in')
