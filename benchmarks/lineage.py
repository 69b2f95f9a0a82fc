"""The lineage's sliding-window inference, written out, for the speed benchmarks to compare against.

Not used by test.py (utils.inference.test_single_case is); kept out of the benchmark scripts so that
they import a module, not each other.
"""
import contextlib
import math

import numpy as np
import torch


def per_window_loop(nets, image, stride_xy, stride_z, patch, num_classes, device, grad):
    """The lineage's sliding window, written out: pad on the host, visit windows at min(s*i, L-p), average
    the nets' softmax per window, accumulate score and count maps in numpy, divide, argmax, unpad."""
    pads = [(max(p - n, 0) // 2, max(p - n, 0) - max(p - n, 0) // 2) for n, p in zip(image.shape, patch)]
    padded = np.pad(image, pads, mode='constant')
    X, Y, Z = padded.shape
    px, py, pz = patch
    score = np.zeros((num_classes, X, Y, Z), np.float32)
    count = np.zeros((X, Y, Z), np.float32)
    steps = [math.ceil((n - p) / s) + 1 for n, p, s in zip((X, Y, Z), patch, (stride_xy, stride_xy, stride_z))]
    with contextlib.nullcontext() if grad else torch.no_grad():
        for i in range(steps[0]):
            xs = min(stride_xy * i, X - px)
            for j in range(steps[1]):
                ys = min(stride_xy * j, Y - py)
                for k in range(steps[2]):
                    zs = min(stride_z * k, Z - pz)
                    window = padded[xs:xs + px, ys:ys + py, zs:zs + pz][None, None].astype(np.float32)
                    x = torch.from_numpy(window).to(device)
                    prob = sum(torch.softmax(net(x)[0], dim=1) for net in nets) / len(nets)
                    score[:, xs:xs + px, ys:ys + py, zs:zs + pz] += prob.detach().cpu().numpy()[0]
                    count[xs:xs + px, ys:ys + py, zs:zs + pz] += 1
    score /= count[None]
    (x0, _), (y0, _), (z0, _) = pads
    w, h, d = image.shape
    score = score[:, x0:x0 + w, y0:y0 + h, z0:z0 + d]
    return score.argmax(0), score
