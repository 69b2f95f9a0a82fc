"""Seeds and random states, so a run can be repeated and a resumed run continues exactly.

Data randomness does not live here: crops and flips draw from generators keyed by
(seed, iteration, sample index) in the data loader. What remains global is torch's
generator (dropout), which checkpoints carry as tensors.
"""
import random

import numpy as np
import torch
import torch.distributed as dist


def seed_everything(seed, deterministic=True):
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    set_cudnn(deterministic)


def set_cudnn(deterministic):
    """deterministic: cuDNN's deterministic algorithms, picked without timing, so a run repeats bit for bit;
    otherwise benchmark mode, which times the candidate algorithms once per input shape and keeps the fastest
    (the pick may differ between processes, and with it the last bits)."""
    torch.backends.cudnn.deterministic = bool(deterministic)
    torch.backends.cudnn.benchmark = not deterministic


def set_tf32(enabled):
    """--tf32: float32 convolutions (cuDNN) and matrix products (CUDA) in TensorFloat-32, whose products keep 10
    mantissa bits instead of 23 (1), or in true float32 (0). Set both ways explicitly: cuDNN's own default is
    TF32 for convolutions on Ampere and later, so float32 there would otherwise not be float32. No effect on
    the CPU."""
    precision = 'tf32' if enabled else 'ieee'
    # conv and rnn alike: torch refuses to read cuDNN's overall TF32 flag while the two differ
    torch.backends.cudnn.conv.fp32_precision = precision
    torch.backends.cudnn.rnn.fp32_precision = precision
    torch.backends.cuda.matmul.fp32_precision = precision


def seed_worker(worker_id):
    """DataLoader worker_init_fn: give each worker distinct, reproducible global seeds."""
    seed = torch.initial_seed() % 2**32
    random.seed(seed)
    np.random.seed(seed)


def step_generator(seed, iteration, device):
    """A torch generator for one training iteration: the same draw after a resume."""
    g = torch.Generator(device=device)
    g.manual_seed(seed * 1_000_003 + iteration)
    return g


def rng_state(device='cpu'):
    """This process's torch generator states as tensors (loadable with weights_only=True): the CPU's, and on
    CUDA the generator of the run's own device only, so that a checkpoint does not depend on how many GPUs
    were visible."""
    state = {'torch': torch.get_rng_state()}
    if torch.device(device).type == 'cuda':
        state['cuda'] = torch.cuda.get_rng_state(device)
    return state


def rng_states(device='cpu', world_size=1):
    """A checkpoint's 'rng': {'ranks': [rank 0's rng_state, rank 1's, ...]}, each process's own generators
    (dropout masks differ per rank). Under torchrun every rank must call it: the states are gathered."""
    own = rng_state(device)
    if world_size == 1:
        return {'ranks': [own]}
    # One flat tensor per rank on the backend's device (NCCL moves CUDA tensors only); every rank's states
    # have the same sizes, as every rank runs the same torch on the same kind of device.
    flat = torch.cat([own['torch'], own.get('cuda', own['torch'][:0])]).to(device)
    gathered = [torch.empty_like(flat) for _ in range(world_size)]
    dist.all_gather(gathered, flat)
    n = own['torch'].numel()
    return {'ranks': [{'torch': g[:n].cpu().clone(), **({'cuda': g[n:].cpu().clone()} if 'cuda' in own else {})}
                      for g in gathered]}


def saved_world_size(state):
    """How many processes wrote a checkpoint's 'rng'; None for the layout of older versions (one state)."""
    return len(state['ranks']) if 'ranks' in state else None


def set_rng_state(state, rank=0, device='cpu'):
    """Restore rank `rank`'s generators from a checkpoint's 'rng' (rng_states' layout, or the older one of a
    single state with every visible GPU's CUDA generator: the run's device's entry where it has one). A
    CUDA state restores on a CUDA run only."""
    device = torch.device(device)
    if 'ranks' in state:
        own = state['ranks'][rank]
    else:
        own = {'torch': state['torch']}
        index = device.index if device.index is not None else 0
        if device.type == 'cuda' and index < len(state.get('cuda', ())):
            own['cuda'] = state['cuda'][index]
    torch.set_rng_state(own['torch'])
    if 'cuda' in own and device.type == 'cuda':
        torch.cuda.set_rng_state(own['cuda'], device)
