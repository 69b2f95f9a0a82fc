"""What the benchmark scripts share: timing, and one train.py training step at a chosen precision and memory format.

Not a script: benchmarks.speed and benchmarks.gpu_check import it.
"""
import math
import time

import torch

import train
from utils.device import amp_dtype

# train.py's loss weights of pair-sup: the two networks with their supervised losses only
SUPERVISED_ONLY = dict(alpha_mc=0, lambda_reg=0, lambda_urps=0, lambda_cps=0, lambda_con=0)
# The four settings the precision comparisons measure: (name, amp, channels_last); the first is the reference.
SETTINGS = (('float32', False, False), ('amp', True, False), ('channels_last', False, True),
            ('amp + channels_last', True, True))


def sync(device):
    if torch.device(device).type == 'cuda':
        torch.cuda.synchronize(device)


def timed(fn, device, repeats):
    """Fastest of `repeats` calls, after one untimed warm-up call."""
    fn()
    best = math.inf
    for _ in range(repeats):
        sync(device)
        t0 = time.perf_counter()
        fn()
        sync(device)
        best = min(best, time.perf_counter() - t0)
    return best


def timed_side_by_side(fns, device, repeats, warmup=1):
    """{name: fastest of `repeats` calls} for several closures, interleaved round by round so that a load that
    comes and goes (other jobs on the machine) weighs on every one of them alike; `warmup` untimed calls each."""
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    best = dict.fromkeys(fns, math.inf)
    for _ in range(repeats):
        for name, fn in fns.items():
            sync(device)
            t0 = time.perf_counter()
            fn()
            sync(device)
            best[name] = min(best[name], time.perf_counter() - t0)
    return best


def step_on_batch(cfg, device, image, label, amp=False, channels_last=False, nets=None):
    """A closure doing one training step on a fixed batch through train.train_step, the step train.py's loop
    runs (so a benchmark times what training does, not a copy that can drift from it): networks, optimisers
    and gradient scaler are built once, as train.py builds them; autocast in amp_dtype(device) when amp;
    networks and input in channels_last_3d when channels_last; every loss term at its full ramp (iteration
    max_iterations). It returns the step's loss record, detached. nets: build_networks' dict to train
    (default: new ones from cfg); step.nets holds them."""
    nets = train.build_networks(cfg, device) if nets is None else nets
    memory_format = torch.channels_last_3d if channels_last else torch.contiguous_format
    for net in nets.values():
        net.to(memory_format=memory_format)
    image = image.contiguous(memory_format=memory_format)
    dtype = amp_dtype(device) if amp else None
    optimizers = train.build_optimizers(cfg, nets)
    scaler = train.grad_scaler(dtype)
    gen = torch.Generator(device=device).manual_seed(0)

    def step():
        _, record, _ = train.train_step(nets, optimizers, scaler, image, label, cfg, cfg['max_iterations'], gen,
                                        amp=dtype)
        return {k: v.detach() for k, v in record.items()}
    step.nets = nets
    return step
