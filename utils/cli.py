"""Command-line entry points: a user's mistake gets one clear line, a traceback only with --debug.

    if __name__ == '__main__':
        run_cli(main)       # main(argv) raises DatasetError, CheckpointError, ... for bad input
"""
import argparse
import sys

from dataloaders import DatasetError
from dataloaders.synthetic import SyntheticDataError
from utils.checkpoint import CheckpointError

# Errors that mean "the input is wrong", not "the program is wrong": their message is the whole
# story. OSError covers a full disk or a folder without write permission; str() names the file.
USER_ERRORS = (DatasetError, SyntheticDataError, CheckpointError, OSError)


class OneLineParser(argparse.ArgumentParser):
    """argparse whose errors are one line: the usage block of a script with 40 flags hides the message."""

    def error(self, message):
        self.exit(2, f'{self.prog}: error: {message} (see --help)\n')


def run_cli(main, argv=None):
    """Call main(argv) and exit: 1 with 'error: <one line>' for a user error, 130 on Ctrl-C.

    --debug in argv lets every exception through with its traceback.
    """
    argv = sys.argv[1:] if argv is None else list(argv)
    debug = '--debug' in argv
    try:
        main(argv)
    except USER_ERRORS as e:
        if debug:
            raise
        text = str(e).strip()
        if 'Original Traceback' in text:  # raised in a DataLoader worker: the last line is the error itself
            text = text.splitlines()[-1]
        sys.exit('error: ' + ' '.join(text.split()))
    except KeyboardInterrupt:
        if debug:
            raise
        print('interrupted', file=sys.stderr)
        sys.exit(130)
