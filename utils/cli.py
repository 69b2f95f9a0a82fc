"""Command-line entry points: a user's mistake gets one clear line, a traceback only with --debug.

The convention of every script: main(argv) raises, for bad input, UsageError (a flag, or a file named on
the command line) or the error type of the module that found the problem (DatasetError, CheckpointError,
...); run_cli turns any of them into 'error: <one line>' and exit status 1. Such an error type says so with the
class attribute user_error = True, so that this module needs to import none of the packages that define them.

    if __name__ == '__main__':
        run_cli(main)
"""
import argparse
import sys


class UsageError(ValueError):
    """A flag, or a file named on the command line, that cannot be used; the message is one line naming it."""
    user_error = True


def is_user_error(error):
    """Whether `error` means "the input is wrong", not "the program is wrong", so that its message is the whole
    story: an exception whose class sets user_error = True (UsageError, DatasetError, VolumeError,
    CheckpointError, SyntheticDataError, ...), or an OSError (a full disk, a folder without write permission)."""
    return isinstance(error, OSError) or getattr(type(error), 'user_error', False) is True


class OneLineParser(argparse.ArgumentParser):
    """argparse whose errors are one line: the usage block of a script with 40 flags hides the message."""

    def error(self, message):
        self.exit(2, f'{self.prog}: error: {message} (see --help)\n')


def parse_patch(text):
    """--patch_size '112,112,80' -> (112, 112, 80); every dimension divisible by 16 (the V-Net halves it 4 times)."""
    try:
        dims = tuple(int(v) for v in text.split(','))
    except ValueError:
        raise argparse.ArgumentTypeError(f'--patch_size {text!r}: expected three integers like 112,112,80')
    if len(dims) != 3 or any(d <= 0 or d % 16 for d in dims):
        raise argparse.ArgumentTypeError(
            f'--patch_size {text!r}: need three positive sizes divisible by 16 (the V-Net halves them 4 times)')
    return dims


def message(error):
    """The one line run_cli prints for a user error."""
    if isinstance(error, OSError) and error.filename:
        text = f'{error.filename}: {error.strerror or error}'
    else:
        text = str(error).strip()
    if 'Original Traceback' in text:  # raised in a DataLoader worker: the last line is the error itself
        text = text.splitlines()[-1]
    return 'error: ' + ' '.join(text.split())


def run_cli(main, argv=None):
    """main(argv)'s result; for a user error, exit 1 with 'error: <one line>', 130 on Ctrl-C.

    An error holding several problems (a list of one-line strings in .lines: the importers' ProblemList)
    prints one 'error: ' line each. --debug in argv lets every exception through with its traceback.
    """
    argv = sys.argv[1:] if argv is None else list(argv)
    debug = '--debug' in argv
    try:
        return main(argv)
    except Exception as e:
        if debug or not is_user_error(e):
            raise
        lines = [message(ValueError(line)) for line in getattr(e, 'lines', None) or []]
        for line in lines[:-1]:
            print(line, file=sys.stderr)
        sys.exit(lines[-1] if lines else message(e))
    except KeyboardInterrupt:
        if debug:
            raise
        print('interrupted', file=sys.stderr)
        sys.exit(130)
