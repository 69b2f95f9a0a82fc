"""Checkpoints: written atomically, read with weights_only=True, mismatches named.

A checkpoint is a plain dict of tensors, numbers, strings, lists and dicts, so
`torch.load(path, weights_only=True)` can read it without running any pickled code.
"""
import os
import tempfile
from pathlib import Path

import torch


class CheckpointError(ValueError):
    """A checkpoint that cannot be written, read or applied; the message names the file."""
    user_error = True  # utils.cli.run_cli prints the message as one line, no traceback


def save_checkpoint(obj, path):
    """Write `obj` to `path` atomically: a crash or a full disk leaves the old file intact.

    torch.save goes to a temporary file in the same folder, which is flushed and then
    renamed over `path` (a rename within one file system is atomic).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=path.name + '.', suffix='.tmp', dir=path.parent)
    try:
        with os.fdopen(fd, 'wb') as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as e:
        Path(tmp).unlink(missing_ok=True)
        if isinstance(e, OSError):
            raise CheckpointError(f'{path}: could not write checkpoint ({e.strerror or e})') from e
        raise


def load_checkpoint(path, map_location='cpu'):
    """Read a checkpoint or a plain state dict with weights_only=True."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f'{path}: checkpoint file not found')
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # torch raises many types for a corrupt or foreign file
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        if 'Weights only load failed' in str(e):
            # torch's own advice here is to retry with weights_only=False, i.e. to run code from the file
            detail = str(e).split('WeightsUnpickler error:')[-1].split('Check the documentation')[0]
            detail = ' '.join(detail.split()).split('. ')[0]
            reason = f'damaged, or it holds objects that are not tensors or plain values: {detail}'
        raise CheckpointError(f'{path}: not a readable checkpoint ({reason[:200]})') from e


def load_weights(model, state_dict, source):
    """Load `state_dict` into `model` strictly; on mismatch name the keys at fault.

    Accepts state dicts saved from DistributedDataParallel ('module.' prefixes).
    """
    if not isinstance(state_dict, dict):
        raise CheckpointError(f'{source}: expected a state dict, found {type(state_dict).__name__}')
    if state_dict and all(k.startswith('module.') for k in state_dict):
        state_dict = {k[len('module.'):]: v for k, v in state_dict.items()}
    own = model.state_dict()
    missing = [k for k in own if k not in state_dict]
    unexpected = [k for k in state_dict if k not in own]
    wrong_shape = [f'{k} {tuple(state_dict[k].shape)} vs {tuple(v.shape)}'
                   for k, v in own.items()
                   if k in state_dict and hasattr(state_dict[k], 'shape') and state_dict[k].shape != v.shape]
    if missing or unexpected or wrong_shape:
        parts = []
        for name, keys in (('missing', missing), ('unexpected', unexpected), ('shape mismatch', wrong_shape)):
            if keys:
                more = f' (+{len(keys) - 3} more)' if len(keys) > 3 else ''
                parts.append(f'{name}: {", ".join(keys[:3])}{more}')
        raise CheckpointError(f'{source}: weights do not fit {type(model).__name__} '
                              f'(another architecture or number of classes?); ' + '; '.join(parts))
    model.load_state_dict(state_dict)
