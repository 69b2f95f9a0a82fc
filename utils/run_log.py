"""The run folder's text records: log.txt (events) and a CSV with one row per iteration."""
import csv
import logging
from pathlib import Path


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


class IterationCSV:
    """Append-only CSV of per-iteration values. On resume, rows at or after the checkpoint's
    iteration (written by the interrupted run after its last checkpoint) are dropped first, so
    the file reads as one uninterrupted run."""

    def __init__(self, path, columns, start_iteration=0, enabled=True):
        self.columns = ['iteration'] + list(columns)
        self.enabled = enabled
        if not enabled:
            return
        path = Path(path)
        kept = []
        if start_iteration > 0 and path.exists():
            with open(path, newline='') as f:
                # a row cut short by a kill has empty (None) fields: drop it with the rows after the checkpoint
                kept = [row for row in csv.DictReader(f)
                        if None not in row.values() and int(row['iteration']) < start_iteration]
        self.file = open(path, 'w', newline='')
        self.writer = csv.DictWriter(self.file, fieldnames=self.columns, restval='', extrasaction='ignore')
        self.writer.writeheader()
        self.writer.writerows(kept)

    def write(self, iteration, values):
        if self.enabled:
            self.writer.writerow({'iteration': iteration, **values})

    def flush(self):
        if self.enabled:
            self.file.flush()

    def close(self):
        if self.enabled:
            self.file.close()
