"""Sliding-window inference of one volume (the lineage's test_single_case, device-resident). Imports only numpy and
torch, so the file can be copied alone; utils/evaluation.py runs it over a list of cases and scores them.

Window placement is the literature's, so numbers stay comparable: along an axis of (padded) length L with patch p
and stride s there are n = ceil((L - p) / s) + 1 windows starting at min(s * i, L - p), i = 0..n-1. The score map is
    score(v) = Σ_windows w(v - start) · p_window(v - start) / Σ_windows w(v - start)
with w = 1 (plain average, the lineage) or an importance map such as gaussian_weight(). p_window is the softmax of
one network, or the mean of the softmaxes of several. Networks are NOT switched to eval mode here: the caller does
that (net.eval()), because train.py validates a network it then keeps training.
"""

import itertools
import math

import numpy as np
import torch


def window_starts(dim, patch, stride):
    """Start indices of the windows along one axis of length dim >= patch (literature placement, see module doc)."""
    dim, patch, stride = int(dim), int(patch), int(stride)
    if patch < 1 or stride < 1:
        raise ValueError(f'patch ({patch}) and stride ({stride}) must be >= 1')
    if dim < patch:
        raise ValueError(f'axis length {dim} is smaller than the patch {patch}: pad the volume first')
    n = -(-(dim - patch) // stride) + 1  # integer ceil
    return [min(stride * i, dim - patch) for i in range(n)]


def overlap_strides(patch_size, overlap):
    """(stride_xy, stride_z) for a fractional overlap F in [0, 1): stride = max(1, floor(p * (1 - F))).

    stride_xy comes from the smaller of the two in-plane patch sides, so the overlap is at least F along both.
    """
    overlap = float(overlap)
    if not 0.0 <= overlap < 1.0:
        raise ValueError(f'overlap must be in [0, 1), got {overlap}')

    def step(p):
        return max(1, math.floor(p * (1.0 - overlap) + 1e-9))  # epsilon: 0.3 * 10 must give 3, not 2
    return step(min(patch_size[0], patch_size[1])), step(patch_size[2])


def gaussian_weight(patch_size, sigma_scale=1 / 8):
    """Importance map (X,Y,Z) float32 tensor: Π_d exp(-(i_d - c_d)² / (2 σ_d²)), c_d = (p_d - 1) / 2,
    σ_d = sigma_scale · p_d, scaled to max 1 and floored at 1e-6 (corners underflow otherwise and a voxel covered
    only by window corners would divide 0 by 0)."""
    if sigma_scale <= 0:
        raise ValueError(f'sigma_scale must be > 0, got {sigma_scale}')
    axes = []
    for p in patch_size:
        i = torch.arange(int(p), dtype=torch.float64)
        sigma = sigma_scale * p
        axes.append(torch.exp(-((i - (p - 1) / 2) ** 2) / (2 * sigma ** 2)))
    w = axes[0][:, None, None] * axes[1][None, :, None] * axes[2][None, None, :]
    return (w / w.max()).clamp_min(1e-6).float()


def _module_device(module):
    param = next(itertools.chain(module.parameters(), module.buffers()), None)
    return param.device if param is not None else torch.device('cpu')


def _mean_softmax(nets, batch, num_classes, amp=None):
    """(B,C,px,py,pz) float32 mean over nets of softmax(logits); a net may return logits or (logits, features, ...).
    amp: None, or the dtype the forward passes autocast to (the softmax stays float32)."""
    prob = None
    for net in nets:
        with torch.autocast(batch.device.type, dtype=amp, enabled=amp is not None):
            out = net(batch)
        logits = out[0] if isinstance(out, (tuple, list)) else out
        if logits.shape[1] != num_classes:
            raise ValueError(f'network returned {logits.shape[1]} channels, expected num_classes={num_classes}')
        p = torch.softmax(logits.float(), dim=1)
        prob = p if prob is None else prob.add_(p)
    if len(nets) > 1:
        prob.div_(len(nets))
    return prob


def _coverage(length, starts, patch, device):
    # how many windows cover each index along one axis; the unweighted count map is the outer product of three
    cover = torch.zeros(length, dtype=torch.float32, device=device)
    for s in starts:
        cover[s:s + patch] += 1
    return cover


@torch.inference_mode()
def test_single_case(net, image, stride_xy, stride_z, patch_size, num_classes, device=None, batch_size=1,
                     weight=None, channels_last=False, amp=None):
    """Sliding-window segmentation of one volume.

    net: module or list/tuple of modules (their softmax outputs are averaged), already in eval mode.
    image: numpy (X,Y,Z). Axes shorter than the patch are zero-padded, pad//2 before and the rest after (lineage),
    and the padding is removed from the outputs. device: where windows run and scores accumulate (default: the first
    net's device); the image goes there once and the results come back once. batch_size: windows per forward pass.
    weight: optional (px,py,pz) importance map (e.g. gaussian_weight(patch_size)); None = plain average.
    channels_last: the windows and the networks in torch.channels_last_3d (faster 3D convolutions on the CPU), else
    both contiguous; the networks are converted in place, as net.to(memory_format=...) does (a no-op when they are
    in that format already).
    amp: None (float32), or the dtype the forward passes autocast to (torch.float16 / torch.bfloat16; --amp passes
    utils.device.amp_dtype(device)); softmax, averaging and scores stay float32.
    Returns (label_map int64 numpy (X,Y,Z), score_map float32 numpy (C,X,Y,Z)).
    """
    if amp is not None and not isinstance(amp, torch.dtype):
        raise ValueError(f'amp={amp!r}: expected None or the autocast dtype, e.g. torch.bfloat16')
    nets = list(net) if isinstance(net, (list, tuple)) else [net]
    if not nets:
        raise ValueError('net is an empty list')
    image = np.asarray(image)
    if image.ndim != 3:
        raise ValueError(f'image must be 3-D (X,Y,Z), got shape {image.shape}')
    patch = tuple(int(p) for p in patch_size)
    if len(patch) != 3 or batch_size < 1:
        raise ValueError(f'patch_size must have 3 entries and batch_size be >= 1, got {patch_size}, {batch_size}')
    device = _module_device(nets[0]) if device is None else torch.device(device)
    memory_format = torch.channels_last_3d if channels_last else torch.contiguous_format
    for n in nets:
        n.to(memory_format=memory_format)

    pads = [(max(p - s, 0) // 2, max(p - s, 0) - max(p - s, 0) // 2) for s, p in zip(image.shape, patch)]
    vol = torch.from_numpy(np.ascontiguousarray(image, dtype=np.float32)).to(device)
    if any(a or b for a, b in pads):
        flat = [n for pair in reversed(pads) for n in pair]  # F.pad wants the last axis first
        vol = torch.nn.functional.pad(vol, flat)
    starts = [window_starts(n, p, s) for n, p, s in zip(vol.shape, patch, (stride_xy, stride_xy, stride_z))]
    windows = list(itertools.product(*starts))
    px, py, pz = patch

    score = torch.zeros((num_classes,) + tuple(vol.shape), dtype=torch.float32, device=device)
    if weight is None:
        cx, cy, cz = (_coverage(n, st, p, device) for n, st, p in zip(vol.shape, starts, patch))
        count = cx[:, None, None] * cy[None, :, None] * cz[None, None, :]
    else:
        weight = torch.as_tensor(weight, dtype=torch.float32).to(device)
        if tuple(weight.shape) != patch:
            raise ValueError(f'weight shape {tuple(weight.shape)} differs from patch_size {patch}')
        count = torch.zeros(tuple(vol.shape), dtype=torch.float32, device=device)

    for first in range(0, len(windows), batch_size):
        chunk = windows[first:first + batch_size]
        batch = torch.stack([vol[x:x + px, y:y + py, z:z + pz] for x, y, z in chunk]).unsqueeze(1)
        prob = _mean_softmax(nets, batch.contiguous(memory_format=memory_format), num_classes, amp)
        if weight is not None:
            prob.mul_(weight)
        for k, (x, y, z) in enumerate(chunk):
            score[:, x:x + px, y:y + py, z:z + pz] += prob[k]
            if weight is not None:
                count[x:x + px, y:y + py, z:z + pz] += weight
    score.div_(count)

    (x0, _), (y0, _), (z0, _) = pads
    w, h, d = image.shape
    score = score[:, x0:x0 + w, y0:y0 + h, z0:z0 + d]
    label = score.argmax(dim=0)
    return label.cpu().numpy(), score.cpu().numpy()


# pytest collects functions named test_* that a test module imports; this is a library function, not a test
test_single_case.__test__ = False
