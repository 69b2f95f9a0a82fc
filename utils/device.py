"""The device of --gpu and how it computes: for train.py, test.py and segment.py alike."""
import sys

import torch

from utils.cli import UsageError


def device_of(gpu):
    """'-1'/'cpu' -> the CPU; 'N' -> cuda:N, or the CPU with one warning line when CUDA is absent."""
    gpu = str(gpu).strip().lower()
    if gpu in ('-1', 'cpu'):
        return torch.device('cpu')
    if not gpu.isdigit():
        raise UsageError(f'--gpu {gpu}: expected a CUDA index, -1 or cpu')
    if not torch.cuda.is_available():
        print(f'warning: --gpu {gpu}: CUDA is not available, running on the CPU', file=sys.stderr)
        return torch.device('cpu')
    if int(gpu) >= torch.cuda.device_count():
        raise UsageError(f'--gpu {gpu}: only {torch.cuda.device_count()} CUDA device(s) visible')
    return torch.device('cuda', int(gpu))


def amp_dtype(device):
    """The autocast dtype of --amp: float16 on CUDA (train.py adds a gradient scaler), bfloat16 elsewhere, whose
    float32 exponent range needs no scaler."""
    return torch.float16 if torch.device(device).type == 'cuda' else torch.bfloat16


def use_channels_last(flag, device):
    """--channels_last resolved on `device`: the flag's 0 or 1, else on for the CPU only."""
    return device.type == 'cpu' if flag is None else bool(flag)


def set_cudnn(deterministic):
    """deterministic: cuDNN's deterministic algorithms, picked without timing, so a run repeats bit for bit;
    otherwise benchmark mode, which times the candidates once per input shape and keeps the fastest (the pick
    may differ between processes, and with it the last bits)."""
    torch.backends.cudnn.deterministic = bool(deterministic)
    torch.backends.cudnn.benchmark = not deterministic


def set_tf32(enabled):
    """--tf32: float32 convolutions and matrix products on CUDA in TensorFloat-32 (10 mantissa bits instead of
    23) or in true float32. Set both ways: cuDNN's own default is TF32 for convolutions on Ampere and later."""
    precision = 'tf32' if enabled else 'ieee'
    # conv and rnn alike: torch refuses to read cuDNN's overall TF32 flag while the two differ
    torch.backends.cudnn.conv.fp32_precision = precision
    torch.backends.cudnn.rnn.fp32_precision = precision
    torch.backends.cuda.matmul.fp32_precision = precision
