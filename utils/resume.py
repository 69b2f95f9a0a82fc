"""Continuing a run from its checkpoint: find it, check it belongs to this run, restore every state.

A checkpoint restores only into the run that wrote it: the same architecture (keys and shapes
of every network) and the same settings (the run keys a caller names), so a resumed run is the
same run. Every refusal is a CheckpointError naming the file and what differs.
"""
import json
import sys
from pathlib import Path

from utils.checkpoint import CheckpointError, load_checkpoint, load_weights
from utils.cli import UsageError
from utils.seeding import saved_world_size, set_rng_state

CHECKPOINT_NAMES = ('final.pth', 'latest.pth')


def find_resume(resume, run_dir):
    """The checkpoint `resume` names; 'auto': the run folder's most advanced one (None if none)."""
    if resume != 'auto':
        return Path(resume)
    found = [p for p in (Path(run_dir) / n for n in CHECKPOINT_NAMES) if p.is_file()]
    if not found:
        return None
    return max(found, key=lambda p: iteration_of(load_checkpoint(p), p))


# The best validation score before any validation: every real score beats it.
NO_BEST = {'dice': -1.0, 'iteration': None}


def resume_point(cfg, run_keys, nets, optimizers, is_main=True, scaler=None, rank=0, world_size=1, device='cpu'):
    """(iteration, checkpoint path, best) where the run in folder cfg['snapshot_path'] starts: with --resume,
    the checkpoint's, restored into nets and optimizers (see restore), and the best validation score so far
    ({'dice', 'iteration'} of best.pth), so that a resumed run replaces best.pth only with a better model;
    otherwise (0, None, NO_BEST), refused where the folder already holds checkpoints, which a new run would
    overwrite. scaler, rank, world_size, device: see restore."""
    run_dir = Path(cfg['snapshot_path'])
    path = find_resume(cfg['resume'], run_dir) if cfg['resume'] else None
    if path is not None:
        iteration, best = restore(path, cfg, run_keys, nets, optimizers, scaler, rank, world_size, device)
        return iteration, path, best
    if is_main and any(run_dir.glob('*.pth')):
        raise UsageError(f'{run_dir} already holds checkpoints; pass --resume auto to continue it, '
                         f'or a new --exp / --snapshot_path')
    return 0, None, dict(NO_BEST)


def iteration_of(ckpt, path):
    if not isinstance(ckpt, dict) or not isinstance(ckpt.get('iteration'), int):
        raise CheckpointError(f'{path}: not a training checkpoint (no iteration number); '
                              f'--resume takes a latest.pth / final.pth written by train.py')
    return ckpt['iteration']


def restore(path, cfg, run_keys, nets, optimizers, scaler=None, rank=0, world_size=1, device='cpu'):
    """Load nets {'net_a': module, ...}, optimizers {'net_a': SGD, ...}, the gradient scaler's state (where
    the checkpoint has one; a scaler off ignores it) and process `rank`'s RNG state (on `device`) from the
    checkpoint at `path`; return its iteration and its best validation score ({'dice', 'iteration'}). Raises
    CheckpointError when the file is unreadable, foreign, of another architecture, saved with other settings
    or by fewer processes than this run has (the caller then stops)."""
    ckpt = load_checkpoint(path)
    iteration = iteration_of(ckpt, path)
    wanted = ['config', 'rng', *nets, *('optimizer_' + n[-1] for n in optimizers)]
    missing = [k for k in wanted if k not in ckpt]
    if missing or not isinstance(ckpt['config'], dict):
        raise CheckpointError(f'{path}: missing {", ".join(missing) or "config"}; a checkpoint of another '
                              f'--method or not written by train.py')
    differ = [k for k in run_keys if json.dumps(ckpt['config'].get(k)) != json.dumps(cfg[k])]
    saved = ', '.join(f'{k} {json.dumps(ckpt["config"].get(k))}, now {json.dumps(cfg[k])}' for k in differ)
    # Architecture first: naming the keys that do not fit is the most useful message for a
    # checkpoint of another network or number of classes.
    for name, net in nets.items():
        try:
            load_weights(net, ckpt[name], f'{path} [{name}]')
        except CheckpointError as e:
            raise CheckpointError(f'{e}' + (f'; settings differ: {saved}' if differ else '')) from None
        except (TypeError, RuntimeError, AttributeError) as e:
            raise CheckpointError(f'{path} [{name}]: damaged weights ({type(e).__name__}: {e})') from None
    if differ:
        raise CheckpointError(f'{path}: saved with other settings ({saved}); resume with the same flags, '
                              f'or start a new --exp')
    if not 0 <= iteration <= cfg['max_iterations']:
        raise CheckpointError(f'{path}: iteration {iteration} outside 0..{cfg["max_iterations"]}')
    try:
        written_by = saved_world_size(ckpt['rng'])
    except (KeyError, TypeError) as e:
        raise CheckpointError(f'{path}: damaged RNG state ({type(e).__name__}: {e})') from None
    # Each rank's batches and random state belong to its rank of a world of that size. Fewer processes can go on
    # (rank r takes rank r's state) as a run with a smaller global batch, said out loud; more would leave ranks
    # without a state. The older layout (one state for every rank) restores as it did, not bit-exact under torchrun.
    if written_by is not None and written_by < world_size:
        raise CheckpointError(f'{path}: written by {written_by} process(es), this run has {world_size}: the extra '
                              f'ranks have no random state; resume with at most {written_by} (torchrun '
                              f'--nproc_per_node {written_by}), or start a new --exp')
    if written_by is not None and written_by > world_size and rank == 0:
        print(f'warning: {path} was written by {written_by} processes, this run has {world_size}: it goes on with '
              f'a global batch of {world_size * cfg["batch_size"]} volumes instead of '
              f'{written_by * cfg["batch_size"]} and ranks 0..{world_size - 1}\'s random states, so not as the '
              f'{written_by} processes would have gone on; for that, resume with torchrun --nproc_per_node '
              f'{written_by}', file=sys.stderr)
    try:
        for name, opt in optimizers.items():
            opt.load_state_dict(ckpt['optimizer_' + name[-1]])
        set_rng_state(ckpt['rng'], rank, device)
        if scaler is not None and ckpt.get('scaler'):  # {}: saved with the scaler off; older files have none
            scaler.load_state_dict(ckpt['scaler'])
    except (KeyError, IndexError, TypeError, ValueError, RuntimeError) as e:
        raise CheckpointError(f'{path}: damaged optimiser, RNG or scaler state ({type(e).__name__}: {e})') from None
    best = ckpt.get('best', NO_BEST)
    if not (isinstance(best, dict) and isinstance(best.get('dice'), float)):
        raise CheckpointError(f'{path}: damaged best validation score {best!r}')
    return iteration, dict(best)
