"""What the benchmark scripts share: timing, and one train.py training step at a chosen precision and memory format.

Not a script: benchmarks.speed and benchmarks.gpu_check import it.
"""
import math
import time

import torch

import train
from utils.config import amp_dtype

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


def make_step(cfg, device, image, label, amp=False, channels_last=False, nets=None):
    """A closure doing one dual training step on a fixed batch as train.py's loop does: both networks and every
    loss term of cfg under autocast in amp_dtype(device) when amp (with the gradient scaler for float16), networks
    and input in channels_last_3d when channels_last, one backward, both SGD steps. It returns the step's loss
    record (train.dual_losses), detached. nets: {'net_a', 'net_b'} to train (default: new ones from cfg)."""
    nets = train.build_networks(cfg, device) if nets is None else nets
    memory_format = torch.channels_last_3d if channels_last else torch.contiguous_format
    for net in nets.values():
        net.to(memory_format=memory_format)
    image = image.contiguous(memory_format=memory_format)
    dtype = amp_dtype(device) if amp else None
    scaler = torch.amp.GradScaler('cuda', enabled=dtype == torch.float16)
    opts = [torch.optim.SGD(nets[n].parameters(), lr=cfg['base_lr'], momentum=0.9, weight_decay=1e-4)
            for n in ('net_a', 'net_b')]
    gen = torch.Generator(device=device).manual_seed(0)

    def step():
        with torch.autocast(torch.device(device).type, dtype=dtype, enabled=amp):
            loss, record, _ = train.dual_losses(nets['net_a'](image), nets['net_b'](image), label, cfg,
                                                cfg['max_iterations'], gen, 1)
        for opt in opts:
            opt.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        for opt in opts:
            scaler.step(opt)
        scaler.update()
        return {k: v.detach() for k, v in record.items()}
    step.nets = nets
    return step
