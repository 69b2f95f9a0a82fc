"""The one error type of the import pipeline, and the import of an optional package."""
import importlib


class VolumeError(ValueError):
    """A file, folder or case cannot be imported; the message is one line naming it and the problem."""


def require(module, package, path, what):
    """Import `module` (of the pip package `package`) to read `path`, a `what` ('NIfTI', ...).

    Raises VolumeError naming the file, the package and the pip line when it is not installed.
    """
    try:
        return importlib.import_module(module)
    except ImportError:
        raise VolumeError(f'{path}: reading {what} needs the optional package {package}: '
                          f'pip install {package}') from None
