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
    if deterministic:
        torch.backends.cudnn.deterministic = True
        torch.backends.cudnn.benchmark = False
    else:
        torch.backends.cudnn.benchmark = True


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
