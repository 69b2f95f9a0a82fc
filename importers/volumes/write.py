"""Write cases and lists so that a failure leaves nothing half-written.

Every file is written under a temporary name and renamed into place (a rename within a folder is atomic).
A recipe writes all its files into a ReplacingDir beside the output folder, which replaces the output
folder whole only once every case has succeeded: after an error the output folder is as it was, and after
success it holds this import alone (check_out_dir refuses a folder holding files without --overwrite).
StagingDir (files moved into the folder, beside what it holds) is segment.py's, for its label maps.
"""
import json
import os
import shutil
import tempfile
from pathlib import Path

import h5py
import numpy as np

from .errors import VolumeError


def _atomic(path, write):
    """Call write(temporary path) then rename it to path, creating path's folder."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f'.{path.name}.tmp')
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def write_case_h5(path, image, label):
    """One case: 'image' float32 and 'label' uint8, both (X,Y,Z), gzip-compressed."""
    image = np.ascontiguousarray(image, dtype=np.float32)
    label = np.ascontiguousarray(label, dtype=np.uint8)

    def write(tmp):
        with h5py.File(tmp, 'w') as f:
            f.create_dataset('image', data=image, compression='gzip')
            f.create_dataset('label', data=label, compression='gzip')
    _atomic(path, write)


def write_list(path, ids):
    """A list file: one case id per line, in the given order."""
    _atomic(path, lambda tmp: Path(tmp).write_text(''.join(f'{i}\n' for i in ids)))


class StagingDir:
    """A temporary folder inside out_dir whose files move into out_dir on commit(), or vanish.

        with StagingDir(out_dir) as stage:
            write_case_h5(stage.path / 'a.h5', image, label)
            stage.commit()            # without it (an exception), out_dir is left as it was
    """

    def __init__(self, out_dir):
        self.out_dir = Path(out_dir)
        self.created = not self.out_dir.exists()
        self.path = None

    def __enter__(self):
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self.path = Path(tempfile.mkdtemp(prefix='.staging-', dir=self.out_dir))
        return self

    def commit(self):
        """Move every staged file to the same relative path in out_dir (replacing an older one)."""
        for source in sorted(p for p in self.path.rglob('*') if p.is_file()):
            target = self.out_dir / source.relative_to(self.path)
            target.parent.mkdir(parents=True, exist_ok=True)
            os.replace(source, target)

    def __exit__(self, *exc):
        shutil.rmtree(self.path, ignore_errors=True)
        if self.created and not any(self.out_dir.iterdir()):
            self.out_dir.rmdir()  # the folder this run made, left empty by a failure
        return False


def check_out_dir(out_dir, overwrite, flag='--out_dir'):
    """Refuse, before any work, an output folder that holds files unless overwrite (one line naming it)."""
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise VolumeError(f'{flag} {out_dir}: exists and is not a folder')
    if out_dir.is_dir() and any(out_dir.iterdir()) and not overwrite:
        raise VolumeError(f'{flag} {out_dir}: the folder holds files (an earlier import?): pass --overwrite to '
                          'replace it whole, or choose another folder')


class ReplacingDir:
    """A temporary folder beside out_dir that replaces out_dir whole on commit(), or vanishes: the output
    is never a mix of an older import's cases and lists and this one's.

        with ReplacingDir(out_dir) as stage:
            write_case_h5(stage.path / 'a.h5', image, label)
            stage.commit()            # without it (an exception), out_dir is left as it was
    """

    def __init__(self, out_dir):
        self.out_dir = Path(out_dir)
        self.path = None

    def __enter__(self):
        self.out_dir.parent.mkdir(parents=True, exist_ok=True)
        self.path = Path(tempfile.mkdtemp(prefix=f'.{self.out_dir.name}.staging-', dir=self.out_dir.parent))
        return self

    def commit(self):
        """Swap the staged folder in: out_dir (if any) renamed aside, the stage renamed to out_dir, the old
        one deleted. Renames within one folder are atomic; a failure between them puts the old one back."""
        old = None
        if self.out_dir.exists():
            old = Path(tempfile.mkdtemp(prefix=f'.{self.out_dir.name}.old-', dir=self.out_dir.parent))
            os.replace(self.out_dir, old)  # a folder replaces an empty folder
        try:
            os.replace(self.path, self.out_dir)
        except OSError:
            if old is not None:
                os.replace(old, self.out_dir)
            raise
        self.path = None
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)

    def __exit__(self, *exc):
        if self.path is not None:
            shutil.rmtree(self.path, ignore_errors=True)
        return False


def write_json(path, obj):
    """obj as indented JSON text."""
    _atomic(path, lambda tmp: Path(tmp).write_text(json.dumps(obj, indent=2) + '\n'))
