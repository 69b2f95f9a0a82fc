"""The one error type of the import pipeline, and the import of an optional package."""
import importlib


class VolumeError(ValueError):
    """A file, folder or case cannot be imported; the message is one line naming it and the problem."""
    user_error = True  # utils.cli.run_cli prints the message as one line, no traceback


def require(module, package, path, what):
    """Import `module` (of the pip package `package`) to read `path`, a `what` ('NIfTI', ...).

    Raises VolumeError naming the file, the package and the pip line when it is not installed.
    """
    try:
        return importlib.import_module(module)
    except ImportError:
        raise VolumeError(f'{path}: reading {what} needs the optional package {package}: '
                          f'pip install {package}') from None


class ProblemList(VolumeError):
    """Several problems found in the input before anything was written: .lines holds one line each."""

    def __init__(self, lines):
        super().__init__(f'{lines[0]} (and {len(lines) - 1} more problems)' if len(lines) > 1 else lines[0])
        self.lines = list(lines)
