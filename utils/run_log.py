"""The run folder's records besides checkpoints: log.txt (events), iterations.csv (one row per iteration),
TensorBoard and the progress bar, and how a row of logged values is formatted for each."""
import csv
import logging
import math
from pathlib import Path

import torch
from tqdm import tqdm

from utils.tensorboard_log import TensorBoardLog


def setup_logger(folder, enabled=True):
    """A logger writing to <folder>/log.txt and the console; silent on ranks other than 0."""
    logger = logging.getLogger('train')
    logger.handlers.clear()
    logger.propagate = False
    logger.setLevel(logging.INFO if enabled else logging.CRITICAL)
    if enabled:
        fmt = logging.Formatter('[%(asctime)s] %(message)s', '%Y-%m-%d %H:%M:%S')
        for handler in (logging.FileHandler(Path(folder) / 'log.txt'), logging.StreamHandler()):
            handler.setFormatter(fmt)
            logger.addHandler(handler)
    return logger


class NonFiniteLoss(ArithmeticError):
    """A loss term became NaN or infinite; the message names it and the iteration (run_cli prints it as one line)."""
    user_error = True


def host_values(record, iteration, run_dir):
    """{name: float} of a record of 0-d tensors, in its order. Stops the run on a non-finite value,
    naming the term: training on would only spread NaN into the weights of the next checkpoint."""
    names = list(record)
    values = torch.stack([record[n].detach().float() for n in names]).tolist()  # one device-to-host copy
    bad = [n for n, v in zip(names, values) if not math.isfinite(v) and n != 'loss']
    if bad or not all(math.isfinite(v) for v in values):
        raise NonFiniteLoss(f'non-finite loss term {", ".join(bad or ["loss"])} at iteration {iteration}; '
                         f'stopping (the last good checkpoint in {run_dir} is kept)')
    return dict(zip(names, values))


def csv_row(row):
    """Floats with 6 significant digits: as exact as the curves need, and a CSV a person can read."""
    return {k: (f'{v:.6g}' if isinstance(v, float) else v) for k, v in row.items()}


def log_line(iterations_done, row):
    return f'iteration {iterations_done}: ' + ', '.join(f'{k} {v:.4f}' if isinstance(v, float) else f'{k} {v}'
                                                        for k, v in row.items())


class IterationCSV:
    """Append-only CSV of per-iteration values; the columns are the keys of the first row written, so
    every value a run logs has its column without a list to keep in step.

    On resume, rows at or after the checkpoint's iteration (written by the interrupted run after its
    last checkpoint) are dropped first, so the file reads as one uninterrupted run. The file is
    rewritten at the first new row: a run that stops before one leaves it as it was."""

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
        """Append {'iteration': iteration, **csv_row(row)}."""
        if not self.enabled:
            return
        if self.file is None:
            columns = ['iteration'] + list(row)
            columns += [c for c in self.kept_columns if c not in columns]  # values no longer logged stay
            self.file = open(self.path, 'w', newline='')
            self.writer = csv.DictWriter(self.file, fieldnames=columns, restval='', extrasaction='ignore')
            self.writer.writeheader()
            self.writer.writerows(self.kept)
        self.writer.writerow({'iteration': iteration, **csv_row(row)})

    def flush(self):
        if self.file is not None:
            self.file.flush()

    def close(self):
        if self.file is not None:
            self.file.close()


class RunRecords:
    """Where each iteration's row goes: iterations.csv, TensorBoard (with --tensorboard), the progress bar,
    and every log_every iterations a log.txt line. Only rank 0 writes (enabled)."""

    def __init__(self, run_dir, log, cfg, start_iteration, enabled):
        self.log, self.log_every, self.last = log, cfg['log_every'], cfg['max_iterations']
        self.table = IterationCSV(Path(run_dir) / 'iterations.csv', start_iteration, enabled=enabled)
        self.board = TensorBoardLog(run_dir, start_iteration, enabled=enabled and cfg['tensorboard'])
        self.bar = tqdm(total=cfg['max_iterations'], initial=start_iteration, disable=not enabled,
                        dynamic_ncols=True)

    def write(self, iteration, row):
        done = iteration + 1
        self.table.write(iteration, row)
        self.board.scalars(iteration, row)
        self.bar.set_postfix(loss=f'{row["loss"]:.4f}', refresh=False)
        self.bar.update(1)
        if done % self.log_every == 0 or done == self.last:
            self.table.flush()
            self.log.info(log_line(done, row))

    def warn(self, message):
        """A warning (None: nothing to say) in log.txt and on the console, and a mark on the progress bar."""
        if message is None:
            return
        self.log.warning('warning: ' + message)
        self.bar.set_description_str('warning, see log.txt', refresh=False)

    def close(self, message):
        """The end of the run, finished or stopped: close every record, then log why it ends."""
        self.bar.close()
        self.table.close()
        self.board.close()
        self.log.info(message)
