"""Graceful stop: SIGINT or SIGTERM (Ctrl-C, a pre-empting scheduler) asks the training loop to
save a checkpoint and exit after the current step, instead of killing it mid-write.

    with StopSignals() as stop:
        for ...:
            step()
            if stop.requested(world_size, device):
                save(); sys.exit(128 + stop.signum)
"""
import signal

import torch
import torch.distributed as dist


class StopSignals:
    """Context manager that records the first SIGINT/SIGTERM; a second one raises KeyboardInterrupt
    (the impatient user's way out). The previous handlers come back on exit."""

    def __init__(self, signals=(signal.SIGINT, signal.SIGTERM)):
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
