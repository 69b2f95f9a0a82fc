"""The processes of a training run: torchrun's process group, every random state, and stop signals.

    procs = Processes(gpu, seed, deterministic, tf32)   # device, process group, the seeds (the one place)
    nets = procs.wrap(nets, sync_bn)                     # DDP under torchrun, the same networks otherwise
    with StopSignals() as stop: ... stop.requested(procs) ...

A scheduler stops a job by signalling every process of it (`timeout` and Ctrl-C signal the process group, SLURM
the job's processes), DataLoader workers included; a worker killed that way takes the main process down before
it can save. DataLoader(worker_init_fn=worker_init) keeps the workers alive through such a signal, so that the
main process alone decides: it finishes the step, saves latest.pth and exits.
"""
import os
import random
import signal
import sys
import threading

import numpy as np
import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

from utils.cli import UsageError
from utils.device import device_of, set_cudnn, set_tf32


def select_device(gpu, local_rank=None):
    """device_of(gpu); under torchrun (local_rank given) each process owns the GPU of its LOCAL_RANK, and
    '-1'/'cpu' still mean the CPU (the processes then talk over gloo). Another index than the default 0 cannot
    hold for every process: it is replaced, with one warning from local rank 0."""
    gpu = str(gpu).strip().lower()
    if local_rank is None or gpu in ('-1', 'cpu'):
        if ',' in gpu:
            raise UsageError(f'--gpu {gpu}: one process uses one GPU; for several, run torchrun --nproc_per_node '
                             f'{len(gpu.split(","))} train.py ... (with CUDA_VISIBLE_DEVICES={gpu})')
        return device_of(gpu)
    if not gpu.isdigit():
        raise UsageError(f'--gpu {gpu}: under torchrun each process uses the GPU of its LOCAL_RANK; choose the '
                         f'GPUs with CUDA_VISIBLE_DEVICES, or pass --gpu -1 for the CPU')
    if gpu != '0' and local_rank == 0:
        print(f'warning: --gpu {gpu} is replaced under torchrun: each process uses the GPU of its LOCAL_RANK '
              f'(process i: cuda:i); choose the GPUs with CUDA_VISIBLE_DEVICES', file=sys.stderr)
    if not torch.cuda.is_available():
        return torch.device('cpu')
    if local_rank >= torch.cuda.device_count():
        raise UsageError(f'LOCAL_RANK {local_rank}: only {torch.cuda.device_count()} CUDA device(s) visible; '
                         f'lower torchrun --nproc_per_node')
    return torch.device('cuda', local_rank)


class Processes:
    """This process's place in the run: device, rank, world size; under torchrun the process group (NCCL between
    GPUs, gloo between CPU processes). Seeds Python, NumPy and torch with seed + rank, so that each rank draws its
    own dropout masks; the networks start equal on every rank because DDP copies rank 0's weights."""

    def __init__(self, gpu, seed, deterministic=True, tf32=False):
        env = os.environ
        torchrun = 'RANK' in env and 'WORLD_SIZE' in env
        self.rank, self.world_size = (int(env['RANK']), int(env['WORLD_SIZE'])) if torchrun else (0, 1)
        self.is_main = self.rank == 0
        self.device = select_device(gpu, int(env.get('LOCAL_RANK', 0)) if torchrun else None)
        if self.world_size > 1:
            dist.init_process_group('nccl' if self.device.type == 'cuda' else 'gloo')
            if self.device.type == 'cuda':
                torch.cuda.set_device(self.device)
        self.seed = seed + self.rank
        random.seed(self.seed)
        np.random.seed(self.seed % 2**32)
        torch.manual_seed(self.seed)
        set_cudnn(deterministic)
        set_tf32(tf32)

    def barrier(self):
        """Under torchrun: wait until every rank is here (e.g. rank 0 has written what the others read)."""
        if self.world_size > 1:
            dist.barrier()

    def mean(self, tensor):
        """The mean of `tensor` over the processes (in place); the tensor itself in a single process."""
        if self.world_size > 1:
            dist.all_reduce(tensor)
            tensor /= self.world_size
        return tensor

    def broadcast(self, value):
        """Rank 0's float `value` on every rank."""
        if self.world_size == 1:
            return value
        tensor = torch.tensor([value], dtype=torch.float64, device=self.device)
        dist.broadcast(tensor, 0)
        return tensor.item()

    def wrap(self, nets, trained, sync_bn=False):
        """nets with the `trained` ones in DistributedDataParallel under torchrun (gradients averaged over the
        ranks, rank 0's weights copied to all; sync_bn: SyncBatchNorm), else nets itself."""
        if self.world_size == 1:
            return nets
        ids = [self.device.index] if self.device.type == 'cuda' else None
        for n, m in nets.items():
            if n not in trained:  # e.g. the mean teacher: rank 0's too (DDP copies those it wraps)
                for tensor in m.state_dict().values():
                    dist.broadcast(tensor, 0)
        return {n: DistributedDataParallel(torch.nn.SyncBatchNorm.convert_sync_batchnorm(m) if sync_bn else m,
                                           device_ids=ids) if n in trained else m for n, m in nets.items()}

    def step_generator(self, iteration):
        """The generator of one iteration's own draws (the contrastive samples): the same after a resume."""
        return torch.Generator(device=self.device).manual_seed(self.seed * 1_000_003 + iteration)

    def rng_states(self):
        """A checkpoint's 'rng': {'ranks': [rank 0's generators, rank 1's, ...]} as tensors (CPU, and the run's
        own CUDA device only). Under torchrun every rank must call it: the states are gathered."""
        own = {'torch': torch.get_rng_state()}
        if self.device.type == 'cuda':
            own['cuda'] = torch.cuda.get_rng_state(self.device)
        if self.world_size == 1:
            return {'ranks': [own]}
        # one flat tensor per rank on the backend's device (NCCL moves CUDA tensors only)
        flat = torch.cat([own['torch'], own.get('cuda', own['torch'][:0])]).to(self.device)
        gathered = [torch.empty_like(flat) for _ in range(self.world_size)]
        dist.all_gather(gathered, flat)
        n = own['torch'].numel()
        return {'ranks': [{'torch': g[:n].cpu().clone(), **({'cuda': g[n:].cpu().clone()} if 'cuda' in own else {})}
                          for g in gathered]}

    def set_rng_state(self, state):
        """Restore this rank's generators from a checkpoint's 'rng' (rng_states' layout, or the older single state
        with every visible GPU's CUDA generator). A CUDA state restores on a CUDA run only."""
        if 'ranks' in state:
            own = state['ranks'][self.rank]
        else:
            own, index = {'torch': state['torch']}, self.device.index or 0
            if self.device.type == 'cuda' and index < len(state.get('cuda', ())):
                own['cuda'] = state['cuda'][index]
        torch.set_rng_state(own['torch'])
        if 'cuda' in own and self.device.type == 'cuda':
            torch.cuda.set_rng_state(own['cuda'], self.device)

    def leave(self):
        """Leave the process group. Every rank first waits for rank 0, which may still be writing the final
        checkpoint: a rank that tears gloo down while another still uses it can abort the job."""
        if self.world_size > 1:
            dist.barrier()
            dist.destroy_process_group()


STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


class StopSignals:
    """Context manager that records the first SIGINT/SIGTERM, so the loop can finish its step, save and exit;
    a second one raises KeyboardInterrupt (the impatient user's way out). The old handlers come back on exit."""

    def __init__(self):
        self.signum, self.previous = 0, {}

    def _handler(self, signum, frame):
        if self.signum:
            raise KeyboardInterrupt
        self.signum = signum

    def __enter__(self):
        self.previous = {s: signal.signal(s, self._handler) for s in STOP_SIGNALS}
        return self

    def __exit__(self, *exc):
        for s, handler in self.previous.items():
            signal.signal(s, handler)
        return False

    def requested(self, procs):
        """The signal number to stop for (0: go on). Under torchrun a signal that reached any rank stops all of
        them after the same step, so no rank waits forever on the others."""
        if procs.world_size > 1:
            flag = torch.tensor([self.signum], device=procs.device)
            dist.all_reduce(flag, op=dist.ReduceOp.MAX)
            self.signum = int(flag.item())
        return self.signum


def worker_init(worker_id):
    """DataLoader worker_init_fn: distinct, reproducible global seeds per worker, and SIGINT/SIGTERM from anyone
    but the main process ignored. The main process's own SIGTERM (how the DataLoader ends a worker) still ends
    it, and a worker whose main process died ends through the DataLoader's watchdog."""
    seed = torch.initial_seed() % 2**32
    random.seed(seed)
    np.random.seed(seed)
    if not hasattr(signal, 'sigwaitinfo'):  # no sender to tell apart (macOS, Windows)
        return
    # blocked signals wait for sigwaitinfo, which names the sender; threads started later inherit the mask
    signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)
    threading.Thread(target=_end_on_parents_signal, args=(os.getppid(),), daemon=True).start()


def _end_on_parents_signal(parent):
    while True:
        info = signal.sigwaitinfo(STOP_SIGNALS)
        if info.si_pid == parent:
            os._exit(128 + info.si_signo)
