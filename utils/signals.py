"""Graceful stop: SIGINT or SIGTERM (Ctrl-C, a pre-empting scheduler) asks the training loop to
save a checkpoint and exit after the current step, instead of killing it mid-write.

    with StopSignals() as stop:
        for ...:
            step()
            if stop.requested(world_size, device):
                save(); sys.exit(128 + stop.signum)

A scheduler stops a job by signalling every process of it (`timeout` and Ctrl-C signal the process
group, SLURM the job's processes), DataLoader workers included; a worker killed that way takes the
main process down before it can save. DataLoader(worker_init_fn=worker_init) keeps the workers alive
through such a signal, so that the main process alone decides.
"""
import os
import signal
import threading

import torch
import torch.distributed as dist

from utils.seeding import seed_worker

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


class StopSignals:
    """Context manager that records the first SIGINT/SIGTERM; a second one raises KeyboardInterrupt
    (the impatient user's way out). The previous handlers come back on exit."""

    def __init__(self, signals=STOP_SIGNALS):
        self.signals = signals
        self.signum = 0
        self.previous = {}

    def _handler(self, signum, frame):
        if self.signum:
            raise KeyboardInterrupt
        self.signum = signum

    def __enter__(self):
        self.previous = {s: signal.signal(s, self._handler) for s in self.signals}
        return self

    def __exit__(self, *exc):
        for s, handler in self.previous.items():
            signal.signal(s, handler)
        return False

    def requested(self, world_size=1, device=None):
        """The signal number to stop for (0: go on). Under DDP the ranks agree: a signal that reached
        any rank stops all of them after the same step, so no rank waits forever on the others."""
        if world_size > 1:
            flag = torch.tensor([self.signum], device=device)
            dist.all_reduce(flag, op=dist.ReduceOp.MAX)
            self.signum = int(flag.item())
        return self.signum


def worker_init(worker_id):
    """DataLoader worker_init_fn of a loader read inside StopSignals: seed_worker, and SIGINT/SIGTERM from
    anyone but the main process are ignored. The main process's own SIGTERM (how the DataLoader and
    multiprocessing end a worker that does not stop) still ends the worker, and a worker whose main
    process died ends through the DataLoader's watchdog, so no worker outlives the run."""
    seed_worker(worker_id)
    if not hasattr(signal, 'sigwaitinfo'):  # no sender to tell apart (macOS, Windows): as before
        return
    # Blocked signals wait for sigwaitinfo, which names the sender; threads started later inherit the mask.
    signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)
    threading.Thread(target=_end_on_parents_signal, args=(os.getppid(),), daemon=True).start()


def _end_on_parents_signal(parent):
    while True:
        info = signal.sigwaitinfo(STOP_SIGNALS)
        if info.si_pid == parent:
            os._exit(128 + info.si_signo)
