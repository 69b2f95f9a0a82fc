"""Seeds and random states, so a run can be repeated and a resumed run continues exactly.

Data randomness does not live here: crops and flips draw from generators keyed by
(seed, iteration, sample index) in the data loader. What remains global is torch's
generator (dropout), which checkpoints carry as tensors.
"""
import random

import numpy as np
import torch


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


def rng_state():
    """Global torch RNG states as tensors (loadable with weights_only=True)."""
    state = {'torch': torch.get_rng_state()}
    if torch.cuda.is_available():
        state['cuda'] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state):
    torch.set_rng_state(state['torch'])
    if 'cuda' in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state['cuda'])
