"""Command-line helpers shared by the recipes: number triples and the command line they record."""
import argparse
import shlex
import sys


def numbers(count, kind=float):
    """argparse type: 'a,b,c' -> a tuple of `count` numbers of `kind` (a one-line error otherwise)."""
    def parse(text):
        try:
            values = tuple(kind(v) for v in text.split(','))
        except ValueError:
            values = ()
        if len(values) != count:
            raise argparse.ArgumentTypeError(f'{text!r}: expected {count} comma-separated numbers')
        return values
    return parse


def value_list(text):
    """argparse type: 'a,b,...' -> a tuple of floats, any count (a one-line error otherwise)."""
    try:
        return tuple(float(v) for v in text.split(','))
    except ValueError:
        raise argparse.ArgumentTypeError(f'{text!r}: expected comma-separated numbers') from None


def command_line(module, argv=None):
    """The command a recipe's dataset.json records: 'python -m <module>' and its arguments (sys.argv's when
    argv is None), quoted for a shell."""
    return shlex.join(['python', '-m', module, *(sys.argv[1:] if argv is None else argv)])
