"""The run machinery around train.py's loop: the device and torchrun's process group, the seeds, resume or a
new run folder, the loader that feeds the iterations, checkpoints, validation and best.pth, iterations.csv /
log.txt / TensorBoard, the collapse watch and stop signals.

train.py uses it through a few calls:

    run = RunControl(cfg, run_keys)                   # device, process group, seeds
    ...                                               # data, networks, optimisers
    start = run.start(nets, optimizers, scaler, num_cases, val_set)   # resume or a new folder
    train_nets = run.distribute(nets)                 # DDP wrappers under torchrun
    with run.stop_signals():
        for it, batch in run.batches(dataset, batch_sampler):
            ...                                       # one training step
            run.record(it, lr, record, extra, image, label)
            run.after_step(it)                        # validation, checkpoints, a stop signal
    run.finish()
"""
import json
import sys
import time
from pathlib import Path

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader

from dataloaders import IterationBatchSampler
from utils.checkpoint import save_checkpoint
from utils.collapse import CollapseWatch
from utils.config import (PRESETS, amp_dtype, cpu_cost_warning, env_rank, init_distributed, select_device,
                          use_channels_last)
from utils.inference import test_single_case
from utils.metrics import calculate_metric_percase
from utils.resume import resume_point
from utils.run_log import RunRecords, host_values, setup_logger
from utils.seeding import rng_states, seed_everything, set_tf32
from utils.signals import StopSignals, worker_init


def mean_over_ranks(tensor):
    """The mean of `tensor` over torchrun's processes (in place); the tensor itself in a single process."""
    if dist.is_initialized() and dist.get_world_size() > 1:
        dist.all_reduce(tensor)
        tensor /= dist.get_world_size()
    return tensor


def validate(eval_nets, cases, cfg, device):
    """Mean Dice of the averaged networks on the validation cases (sliding window)."""
    preset = PRESETS[cfg['dataset']]
    for net in eval_nets:
        net.eval()
    dices = []
    for i in range(len(cases)):
        sample = cases[i]
        pred, _ = test_single_case(eval_nets, sample['image'], preset['stride_xy'], preset['stride_z'],
                                   cfg['patch_size'], cfg['num_classes'], device=device,
                                   channels_last=cfg['channels_last'], amp=amp_dtype(device) if cfg['amp'] else None)
        dices.append(calculate_metric_percase(pred > 0, sample['label'] > 0)[0])
    for net in eval_nets:
        net.train()
    dice = sum(dices) / len(dices)
    if dist.is_initialized():  # ranks' BatchNorm statistics differ: rank 0's score (logged, saved) decides for all
        score = torch.tensor([dice], dtype=torch.float64, device=device)
        dist.broadcast(score, 0)
        dice = score.item()
    return dice


class RunControl:
    """One training run's machinery; see the module's docstring for the order of the calls. Every rank makes
    every call (they synchronise under torchrun); rank 0 alone writes files."""

    def __init__(self, cfg, run_keys):
        """Pick the device (cfg['channels_last'] resolved on it), join torchrun's process group, seed, and set
        cuDNN's determinism and TF32 as the flags say."""
        self.cfg, self.run_keys = cfg, run_keys
        self.rank, self.world_size, local_rank = env_rank()
        self.is_main = self.rank == 0
        self.device = select_device(cfg['gpu'], local_rank)
        cfg['channels_last'] = use_channels_last(cfg['channels_last'], self.device)
        if self.world_size > 1:
            init_distributed(self.device)
        if self.is_main and (cost := cpu_cost_warning(cfg, self.device)):
            print(cost, file=sys.stderr)
        seed_everything(cfg['seed'], bool(cfg['deterministic']))
        set_tf32(cfg['tf32'])
        self.dir = Path(cfg['snapshot_path'])
        self.start_iteration, self.best, self.stop, self.t0 = 0, None, None, None

    def barrier(self):
        """Under torchrun: wait until every rank is here (e.g. rank 0 has written what the others read)."""
        if self.world_size > 1:
            dist.barrier()

    def start(self, nets, optimizers, scaler, num_cases, val_set=None):
        """The first iteration to run: a new run's 0, or with --resume the checkpoint's, whose states are restored
        into nets, optimizers and scaler (utils/resume.py refuses a checkpoint of another run). Writes
        config.json and opens the records. A run already at max_iterations has nothing to do: start() says so,
        leaves the process group and returns max_iterations. val_set: validation cases (None: no validation)."""
        cfg = self.cfg
        self.nets, self.optimizers, self.scaler, self.val_set = nets, optimizers, scaler, val_set
        start, resume_path, self.best = resume_point(cfg, self.run_keys, nets, optimizers, self.is_main, scaler,
                                                     self.rank, self.world_size, self.device)
        self.start_iteration = start
        if start >= cfg['max_iterations']:
            if self.is_main:
                print(f'nothing to do: {resume_path} is already at iteration {start} of {cfg["max_iterations"]}')
            self._leave_process_group()
            return start
        if self.is_main:
            self.dir.mkdir(parents=True, exist_ok=True)
            (self.dir / 'config.json').write_text(json.dumps(cfg, indent=2) + '\n')
        self.barrier()  # the folder exists before any rank writes into it
        self.log = setup_logger(self.dir, enabled=self.is_main)
        self.log.info(f'{cfg["method"]} on {cfg["dataset"]} ({num_cases} cases, {cfg["labelnum"]} labeled), '
                      f'device {self.device}, world size {self.world_size}, run folder {self.dir}')
        if resume_path is not None:
            self.log.info(f'resumed from {resume_path} at iteration {start}')
        self.records = RunRecords(self.dir, self.log, cfg, start, enabled=self.is_main)
        self.makes_pseudo = cfg['method'] == 'dual' and (cfg['lambda_cps'] > 0 or cfg['lambda_con'] > 0)
        self.watch = CollapseWatch(window=min(100, max(5, cfg['max_iterations'] // 20)))
        return start

    def distribute(self, nets):
        """nets with DistributedDataParallel wrappers of the trained networks under torchrun (gradients averaged
        across ranks; --sync_bn: SyncBatchNorm), else nets itself. Checkpoints keep the unwrapped networks."""
        if self.world_size == 1:
            return nets
        wrapped = dict(nets)
        for n in self.optimizers:
            net = torch.nn.SyncBatchNorm.convert_sync_batchnorm(nets[n]) if self.cfg['sync_bn'] else nets[n]
            wrapped[n] = DistributedDataParallel(net, device_ids=[self.device.index] if self.device.type == 'cuda'
                                                 else None)
        self.nets = {n: (m.module if isinstance(m, DistributedDataParallel) else m) for n, m in wrapped.items()}
        return wrapped

    def stop_signals(self):
        """Context manager for the loop: SIGINT / SIGTERM finish the step, save latest.pth and exit."""
        self.stop = StopSignals()
        return self.stop

    def batches(self, dataset, batch_sampler):
        """(iteration, batch) for iterations start..max_iterations-1, in order.

        The sampler gives each iteration's keys (index, seed, iteration), from which the dataset draws every
        crop, and the loader draws its workers' base seed from its own generator, not the global one: a resumed
        run sees the same data and dropout with any num_workers. worker_init: the workers live through a stop
        signal sent to the whole job, so the step finishes and saves."""
        cfg = self.cfg
        sampler = IterationBatchSampler(batch_sampler, cfg['seed'], cfg['max_iterations'],
                                        start_iteration=self.start_iteration)
        loader = DataLoader(dataset, batch_sampler=sampler, num_workers=cfg['num_workers'],
                            pin_memory=self.device.type == 'cuda', worker_init_fn=worker_init,
                            generator=torch.Generator().manual_seed(cfg['seed']))
        self.t0 = time.time()
        return enumerate(loader, self.start_iteration)  # the loader keeps the sampler's order of iterations

    def record(self, it, lr, record, extra, image, label):
        """One iterations.csv row ({'lr', *record, *extra}, the row train.py documents) to every record; stops
        the run on a non-finite loss term; feeds the collapse watch; TensorBoard slice pictures of the batch."""
        # the winner, a device tensor, goes to the host with the record in host_values' one copy
        values = host_values({**record, **{k: v for k, v in extra.items() if torch.is_tensor(v)}}, it, self.dir)
        row = {'lr': lr, **values, **extra}
        if 'winner' in row:
            row['winner'] = 'A' if values['winner'] else 'B'
        if self.makes_pseudo:
            self.records.warn(self.watch.update(values['pseudo_fg'], values['label_fg']))
        self.records.write(it, row)
        cfg = self.cfg
        if cfg['image_every'] and (it + 1) % cfg['image_every'] == 0:
            self.records.board.slices(it, {n: self.nets[n] for n in ('net_a', 'net_b', 'ema') if n in self.nets},
                                      image, label, cfg['labeled_bs'] if cfg['method'] != 'sup' else None,
                                      cfg['num_classes'])

    def after_step(self, it):
        """After iteration `it`: validation (best.pth on a better score), latest.pth every --save_every, and on
        a stop signal latest.pth and exit 128 + the signal's number."""
        cfg, done = self.cfg, it + 1
        if self.val_set is not None and done % cfg['val_every'] == 0:
            dice = validate([self.nets[n] for n in self.optimizers], self.val_set, cfg, self.device)
            self.log.info(f'iteration {done}: validation Dice {dice:.4f}')
            self.records.board.scalars(it, {'val_dice': dice})
            if dice > self.best['dice']:
                self.best = {'dice': dice, 'iteration': done}
                self.checkpoint('best.pth', done)
        if done % cfg['save_every'] == 0 and done < cfg['max_iterations']:
            self.checkpoint('latest.pth', done)
        if self.stop.requested(self.world_size, self.device) and done < cfg['max_iterations']:
            self.checkpoint('latest.pth', done)
            self.records.close(f'stopped by signal {self.stop.signum} after iteration {done}; '
                               f'continue with --resume auto')
            sys.exit(128 + self.stop.signum)

    def checkpoint(self, name, iteration):
        """Every rank calls it (the RNG states are gathered); rank 0 writes."""
        self.records.table.flush()  # every row up to the checkpoint is on disk: a resume after a kill loses none
        rng = rng_states(self.device, self.world_size)
        if self.is_main:
            save_checkpoint({'iteration': iteration, 'config': self.cfg, 'method': self.cfg['method'],
                             **{n: m.state_dict() for n, m in self.nets.items()},
                             **{'optimizer_' + n[-1]: o.state_dict() for n, o in self.optimizers.items()},
                             'rng': rng, 'scaler': self.scaler.state_dict(), 'best': self.best}, self.dir / name)

    def finish(self):
        """final.pth, the closing log line, and the process group left."""
        last = self.cfg['max_iterations']
        self.checkpoint('final.pth', last)
        self.records.close(f'finished {last - self.start_iteration} iterations in {time.time() - self.t0:.0f} s; '
                           f'final checkpoint {self.dir / "final.pth"}')
        self._leave_process_group()

    def _leave_process_group(self):
        if self.world_size > 1:
            # every rank waits until rank 0 has written the last checkpoint: a rank that tears gloo down while
            # another still uses the group can abort ("terminate called without an active exception")
            dist.barrier()
            dist.destroy_process_group()
