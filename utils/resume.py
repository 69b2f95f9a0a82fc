"""A training run's checkpoints: what one holds, continuing a run from one, and best.pth.

A checkpoint restores only into the run that wrote it: the same architecture (keys and shapes of every
network) and the same settings (every run key), so a resumed run is the same run, bit for bit. Every refusal
is a CheckpointError naming the file and what differs.
"""
import json
import sys
from pathlib import Path

from utils.checkpoint import CheckpointError, load_checkpoint, load_weights, save_checkpoint
from utils.cli import UsageError

# The best validation score before any validation: every real score beats it.
NO_BEST = {'dice': -1.0, 'iteration': None}
# Settings renamed since older checkpoints were written: their configs are read with today's names.
RENAMED_KEYS = {'filter': 'cps_filter'}


def current_names(config):
    """A saved config with today's names for renamed settings."""
    return {RENAMED_KEYS.get(k, k): v for k, v in config.items()}


def run_keys(parser, control_title):
    """The settings a resumed run must share with its checkpoint: every flag of `parser` outside the argument
    group titled control_title. A new flag is a run key unless put there, so forgetting it refuses a resume
    rather than letting one change the run."""
    # argparse keeps its groups in private attributes; they have been stable since Python 2.7
    return [action.dest for group in parser._action_groups if group.title != control_title
            for action in group._group_actions if action.dest != 'help']


class Checkpoints:
    """The run's checkpoints in cfg['snapshot_path']: resume() restores the states of one into nets, optimizers
    and scaler; save() writes latest.pth / final.pth; validated() keeps best.pth, the best validation score's.
    Every rank makes every call (the RNG states are gathered); rank 0 alone writes."""

    def __init__(self, cfg, nets, optimizers, scaler, procs):
        self.cfg, self.nets, self.optimizers, self.scaler, self.procs = cfg, nets, optimizers, scaler, procs
        self.best, self.resumed_from = dict(NO_BEST), None

    def path(self, name):
        return Path(self.cfg['snapshot_path']) / name

    def resume(self, keys):
        """The first iteration to run: with --resume the checkpoint's, every state restored (see restore; keys:
        the run keys it must share); otherwise 0, refused where the folder already holds checkpoints, which a
        new run would overwrite."""
        cfg, procs = self.cfg, self.procs
        path = None
        if cfg['resume'] == 'auto':
            found = [p for p in map(self.path, ('final.pth', 'latest.pth')) if p.is_file()]
            path = max(found, key=lambda p: iteration_of(load_checkpoint(p), p)) if found else None
        elif cfg['resume']:
            path = Path(cfg['resume'])
        if path is None:
            if procs.is_main and any(self.path('').glob('*.pth')):
                raise UsageError(f'{cfg["snapshot_path"]} already holds checkpoints; pass --resume auto to '
                                 f'continue it, or a new --exp / --snapshot_path')
            return 0
        iteration, self.best = restore(path, cfg, keys, self.nets, self.optimizers, self.scaler, procs)
        self.resumed_from = path
        if iteration >= cfg['max_iterations'] and procs.is_main:
            print(f'nothing to do: {path} is already at iteration {iteration} of {cfg["max_iterations"]}')
        return iteration

    def save(self, name, iteration, log):
        """<run folder>/name: the networks, their optimisers, the scaler, every rank's RNG state, the settings and
        the best validation score; every row of the log on disk first, so a resume after a kill loses none."""
        log.flush()
        rng = self.procs.rng_states()
        if self.procs.is_main:
            save_checkpoint({'iteration': iteration, 'config': self.cfg, 'method': self.cfg['method'],
                             **{n: m.state_dict() for n, m in self.nets.items()},
                             **{'optimizer_' + n[-1]: o.state_dict() for n, o in self.optimizers.items()},
                             'rng': rng, 'scaler': self.scaler.state_dict(), 'best': self.best}, self.path(name))

    def validated(self, dice, iteration, log):
        """Log a validation score, and save best.pth when it beats the best so far. Under torchrun the ranks'
        BatchNorm statistics differ: rank 0's score decides for all."""
        dice = self.procs.broadcast(dice)
        log.info(f'iteration {iteration}: validation Dice {dice:.4f}')
        log.scalars(iteration - 1, {'val_dice': dice})
        if dice > self.best['dice']:
            self.best = {'dice': dice, 'iteration': iteration}
            self.save('best.pth', iteration, log)


def iteration_of(ckpt, path):
    if not isinstance(ckpt, dict) or not isinstance(ckpt.get('iteration'), int):
        raise CheckpointError(f'{path}: not a training checkpoint (no iteration number); '
                              f'--resume takes a latest.pth / final.pth written by train.py')
    return ckpt['iteration']


def restore(path, cfg, keys, nets, optimizers, scaler, procs):
    """Load nets {'net_a': module, ...}, optimizers {'net_a': SGD, ...}, the gradient scaler's state (where the
    checkpoint has one) and this rank's RNG state from the checkpoint at `path`; return its iteration and best
    validation score. Refuses a file that is unreadable, foreign, of another architecture, saved with other
    settings or by fewer processes than this run has."""
    ckpt = load_checkpoint(path)
    iteration = iteration_of(ckpt, path)
    missing = [k for k in ['config', 'rng', *nets, *('optimizer_' + n[-1] for n in optimizers)] if k not in ckpt]
    if missing or not isinstance(ckpt['config'], dict):
        raise CheckpointError(f'{path}: missing {", ".join(missing) or "config"}; a checkpoint of another '
                              f'--method or not written by train.py')
    config = current_names(ckpt['config'])
    differ = [k for k in keys if json.dumps(config.get(k)) != json.dumps(cfg[k])]
    saved = ', '.join(f'{k} {json.dumps(config.get(k))}, now {json.dumps(cfg[k])}' for k in differ)
    # architecture first: the keys that do not fit say most about a checkpoint of another network
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
    rng = ckpt['rng']
    written_by = len(rng['ranks']) if isinstance(rng, dict) and 'ranks' in rng else None  # None: older layout
    # Each rank's batches and random state belong to its rank of a world of that size. Fewer processes go on
    # (rank r takes rank r's state) with a smaller global batch, said out loud; more would lack states.
    if written_by is not None and written_by < procs.world_size:
        raise CheckpointError(f'{path}: written by {written_by} process(es), this run has {procs.world_size}: the '
                              f'extra ranks have no random state; resume with at most {written_by} (torchrun '
                              f'--nproc_per_node {written_by}), or start a new --exp')
    if written_by is not None and written_by > procs.world_size and procs.is_main:
        print(f'warning: {path} was written by {written_by} processes, this run has {procs.world_size}: it goes on '
              f'with a global batch of {procs.world_size * cfg["batch_size"]} volumes instead of '
              f'{written_by * cfg["batch_size"]}, so not as the {written_by} processes would have gone on; for '
              f'that, resume with torchrun --nproc_per_node {written_by}', file=sys.stderr)
    try:
        for name, opt in optimizers.items():
            opt.load_state_dict(ckpt['optimizer_' + name[-1]])
        procs.set_rng_state(rng)
        if ckpt.get('scaler'):  # {}: saved with the scaler off; older files have none
            scaler.load_state_dict(ckpt['scaler'])
    except (KeyError, IndexError, TypeError, ValueError, RuntimeError) as e:
        raise CheckpointError(f'{path}: damaged optimiser, RNG or scaler state ({type(e).__name__}: {e})') from None
    best = ckpt.get('best', NO_BEST)
    if not (isinstance(best, dict) and isinstance(best.get('dice'), float)):
        raise CheckpointError(f'{path}: damaged best validation score {best!r}')
    return iteration, dict(best)
