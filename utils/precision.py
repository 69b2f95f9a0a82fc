"""Whether bfloat16 autocast trains correctly on this CPU, checked at a run's own layer shapes.

Some oneDNN builds compute the weight gradient of a 3D convolution under CPU bfloat16 autocast wrongly at
particular small spatial shapes (huge, NaN or changing from call to call), while forward passes stay right
(docs/results.md, "bfloat16 convolution gradients on the CPU"). Which shapes fail depends on the CPU and the
build, so train.py --amp on the CPU runs check_cpu_amp before its first step; test.py --amp (forward only) needs
no check. It is imported only then: a niche the reading path does not need.
"""
import math

import torch

from utils.cli import UsageError

# Largest accepted relative (Frobenius) error of a bfloat16 weight gradient against float32 on the same
# bfloat16-rounded inputs: bfloat16 keeps 8 significant bits, so a sound kernel stays far below it.
GRAD_TOLERANCE = 1e-2
LEVELS = 5  # the V-Net's resolutions: the patch, then halved 4 times
CHECK_BATCH = 2
# Work per checked layer (input voxels x input channels x output channels): above it the channels shrink, so that
# a full-size patch is checked in seconds; the spatial shape, which decides the fault, is always the run's own.
MAX_WORK = 2 ** 21


def layer_shapes(patch_size, n_filters):
    """(name, transposed, input shape, weight shape, stride) of the convolutions of the V-Net pair at
    `patch_size` (divisible by 16): per level k the 3x3x3 convolution on patch / 2^k with n_filters * 2^k
    channels, and between levels the stride-2 down- and up-sampling convolutions."""
    layers = []
    for k in range(LEVELS):
        spatial = tuple(s // 2 ** k for s in patch_size)
        channels = n_filters * 2 ** k
        size = 'x'.join(map(str, spatial))
        layers.append((f'the {size} level (1/{2 ** k} of the patch)', False, (CHECK_BATCH, channels, *spatial),
                       (channels, channels, 3, 3, 3), 1))
        if k + 1 < LEVELS:
            below = tuple(s // 2 for s in spatial)
            pair = f'{size} and {"x".join(map(str, below))}'
            layers.append((f'the down-sampling between {pair}', False, (CHECK_BATCH, channels, *spatial),
                           (2 * channels, channels, 2, 2, 2), 2))
            layers.append((f'the up-sampling between {pair}', True, (CHECK_BATCH, 2 * channels, *below),
                           (2 * channels, channels, 2, 2, 2), 2))
    return [shrink(layer) for layer in layers]


def shrink(layer):
    """The layer with its channels divided by a power of 2 (at least 2 each) until it fits MAX_WORK."""
    name, transposed, x_shape, w_shape, stride = layer
    voxels = math.prod(x_shape[2:])
    while voxels * w_shape[0] * w_shape[1] > MAX_WORK and min(w_shape[:2]) > 2:
        w_shape = (w_shape[0] // 2, w_shape[1] // 2) + w_shape[2:]
        x_shape = (x_shape[0], x_shape[1] // 2) + x_shape[2:]
    return name, transposed, x_shape, w_shape, stride


def convolve(x, weight, transposed, stride):
    """A layer of layer_shapes: 3x3x3 with padding 1 (stride 1), or 2x2x2 with stride 2."""
    conv = torch.nn.functional.conv_transpose3d if transposed else torch.nn.functional.conv3d
    return conv(x, weight, None, stride=stride, padding=1 if stride == 1 else 0)


def weight_grad(x, weight, grad_out, transposed, stride, dtype):
    """d(sum(convolve(x, weight) * grad_out)) / d weight, under CPU autocast in `dtype` (None: float32)."""
    weight = weight.detach().requires_grad_(True)
    with torch.autocast('cpu', dtype=dtype or torch.bfloat16, enabled=dtype is not None):
        out = convolve(x, weight, transposed, stride)
    out.float().backward(grad_out)
    return weight.grad


def layer_problem(layer, memory_format, dtype=torch.bfloat16, grad_fn=None):
    """Why `dtype`'s weight gradient of `layer` (from layer_shapes) cannot be trusted: 'non-finite', 'not
    repeatable' or 'relative error E'; None when it is finite, repeats exactly and is within GRAD_TOLERANCE of
    float32. grad_fn (default weight_grad) is what computes a gradient; tests pass a faulty one."""
    grad_fn = grad_fn or weight_grad
    _, transposed, x_shape, w_shape, stride = layer
    g = torch.Generator().manual_seed(0)
    # every input exactly representable in bfloat16, so that float32 computes the same sum more precisely
    x = torch.randn(x_shape, generator=g).bfloat16().float().contiguous(memory_format=memory_format)
    weight = (torch.randn(w_shape, generator=g) / (w_shape[1] * 8) ** 0.5).bfloat16().float()
    with torch.no_grad():
        out_shape = convolve(x, weight, transposed, stride).shape
    grad_out = torch.randn(out_shape, generator=g).bfloat16().float().contiguous(memory_format=memory_format)
    first, second = (grad_fn(x, weight, grad_out, transposed, stride, dtype) for _ in range(2))
    if not (first.isfinite().all() and second.isfinite().all()):
        return 'non-finite'
    if not torch.equal(first, second):
        return 'not repeatable'
    reference = grad_fn(x, weight, grad_out, transposed, stride, None).double()
    error = float((first.double() - reference).norm() / reference.norm().clamp_min(1e-30))
    return None if error <= GRAD_TOLERANCE else f'relative error {error:.1e} against float32'


def check_cpu_amp(amp, device, patch_size, n_filters, channels_last, grad_fn=None):
    """Refuse train.py --amp on a CPU whose bfloat16 convolution weight gradients are wrong at this run's
    layer shapes (see the module's docstring): one line naming the shape and what to do. Nothing to check
    without --amp (amp None) or on CUDA."""
    if amp is None or torch.device(device).type != 'cpu':
        return
    memory_format = torch.channels_last_3d if channels_last else torch.contiguous_format
    patch = ','.join(map(str, patch_size))
    for layer in layer_shapes(patch_size, n_filters):
        problem = layer_problem(layer, memory_format, amp, grad_fn)
        if problem:
            raise UsageError(f'--amp: on this CPU, bfloat16 convolution weight gradients at {layer[0]} of '
                             f'--patch_size {patch} are wrong ({problem}; a oneDNN fault at some small '
                             f'shapes): train without --amp (float32), or with a patch whose V-Net levels '
                             f'avoid that shape')
