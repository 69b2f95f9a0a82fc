"""The precision every loss computes in: float32 for half-precision inputs (autocast's float16 / bfloat16),
the input's own for float32 and float64 (so gradcheck in float64 still works)."""
import torch


def wide_dtype(tensor):
    """float32 for a float16 / bfloat16 tensor, else its own float dtype."""
    return torch.promote_types(tensor.dtype, torch.float32)


def widen(tensor):
    """tensor in wide_dtype(tensor): a copy for half precision, the tensor itself (no copy) otherwise."""
    return tensor.to(wide_dtype(tensor))
