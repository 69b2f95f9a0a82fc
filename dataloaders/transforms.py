"""Augmentations on numpy dict samples {'image': (X,Y,Z), 'label': (X,Y,Z), ...}.

Every transform is called as t(sample, rng) with rng a np.random.Generator and draws randomness from
it alone, so a sample seeded from (seed, iteration, index) is the same with any num_workers and on
resume. rng=None means a fresh np.random.default_rng(). Keys other than 'image' and 'label' pass
through untouched.
"""
import numpy as np
import torch

SPATIAL_KEYS = ('image', 'label')


def _as_size(output_size):
    size = tuple(int(s) for s in output_size)
    if len(size) != 3 or min(size) < 1:
        raise ValueError(f'output_size must be 3 positive ints, got {output_size!r}')
    return size


def pad_and_crop(sample, output_size, rng=None):
    """Zero-pad image and label to at least output_size, then cut the same output_size box from both.

    Padding is split evenly (the odd voxel after). The box corner is uniform over the valid range
    when rng is given (random crop), centred when rng is None (center crop).
    """
    shape = sample['image'].shape[:3]
    pad = [max(s - d, 0) for s, d in zip(output_size, shape)]
    padded = [d + p for d, p in zip(shape, pad)]
    if rng is None:
        corner = [(d - s) // 2 for d, s in zip(padded, output_size)]
    else:
        corner = [int(rng.integers(0, d - s + 1)) for d, s in zip(padded, output_size)]
    box = tuple(slice(c, c + s) for c, s in zip(corner, output_size))
    out = dict(sample)
    for key in SPATIAL_KEYS:
        if key in sample:
            array = sample[key]
            if any(pad):
                widths = [(p // 2, p - p // 2) for p in pad] + [(0, 0)] * (array.ndim - 3)
                array = np.pad(array, widths, mode='constant', constant_values=0)
            out[key] = array[box]
    return out


class RandomCrop:
    """Random output_size box (X,Y,Z) of image and label; zero-pads volumes smaller than the box."""

    def __init__(self, output_size):
        self.output_size = _as_size(output_size)

    def __call__(self, sample, rng=None):
        return pad_and_crop(sample, self.output_size, np.random.default_rng() if rng is None else rng)


class CenterCrop:
    """Central output_size box of image and label; zero-pads volumes smaller than the box."""

    def __init__(self, output_size):
        self.output_size = _as_size(output_size)

    def __call__(self, sample, rng=None):
        return pad_and_crop(sample, self.output_size, None)


class RandomRotFlip:
    """Rotate by k*90 degrees in the (X,Y) plane, k uniform in 0..3, then flip along X or Y (the lineage's)."""

    def __call__(self, sample, rng=None):
        rng = np.random.default_rng() if rng is None else rng
        k = int(rng.integers(0, 4))
        axis = int(rng.integers(0, 2))
        out = dict(sample)
        for key in SPATIAL_KEYS:
            if key in sample:
                out[key] = np.ascontiguousarray(np.flip(np.rot90(sample[key], k, axes=(0, 1)), axis=axis))
        return out


NORMALIZE_MODES = ('none', 'zscore')


def normalize_intensity(image, mode):
    """'zscore': (image - mean) / std over the whole volume (std floored at 1e-8); 'none': image as stored.

    Why: the lineage z-scored each raw scan over its full field of view and then cropped around the
    atrium, so the stored LA crops differ in scale from case to case; re-z-scoring the stored volume removes that.
    image: numpy (X,Y,Z). Returns float32.
    """
    if mode not in NORMALIZE_MODES:
        raise ValueError(f'normalize mode must be one of {NORMALIZE_MODES}, got {mode!r}')
    image = np.asarray(image, dtype=np.float32)
    if mode == 'none':
        return image
    mean, std = image.mean(dtype=np.float64), image.std(dtype=np.float64)
    return ((image - mean) / max(std, 1e-8)).astype(np.float32)


class NormalizeIntensity:
    """normalize_intensity on the whole stored volume; put it first, before any crop."""

    def __init__(self, mode='zscore'):
        normalize_intensity(np.zeros(1), mode)  # refuse an unknown mode now, not in a worker
        self.mode = mode

    def __call__(self, sample, rng=None):
        return {**sample, 'image': normalize_intensity(sample['image'], self.mode)}

    def __repr__(self):
        return f'NormalizeIntensity({self.mode!r})'


class RandomNoise:
    """image + clip(N(0, sigma^2), -2 sigma, 2 sigma) + mu, per voxel; the label is untouched."""

    def __init__(self, mu=0.0, sigma=0.1):
        self.mu, self.sigma = float(mu), float(sigma)

    def __call__(self, sample, rng=None):
        rng = np.random.default_rng() if rng is None else rng
        image = sample['image']
        noise = np.clip(self.sigma * rng.standard_normal(image.shape), -2 * self.sigma, 2 * self.sigma) + self.mu
        return {**sample, 'image': (image + noise).astype(np.float32)}


class ToTensor:
    """{'image': float32 tensor (1,X,Y,Z), 'label': int64 tensor (X,Y,Z)}; other keys pass through."""

    def __call__(self, sample, rng=None):
        out = dict(sample)
        out['image'] = torch.from_numpy(np.ascontiguousarray(sample['image'], dtype=np.float32)[None])
        if 'label' in sample:
            out['label'] = torch.from_numpy(np.ascontiguousarray(sample['label'], dtype=np.int64))
        return out


class Compose:
    """Apply transforms in order, handing every one the same rng."""

    def __init__(self, transforms):
        self.transforms = list(transforms)

    def __call__(self, sample, rng=None):
        rng = np.random.default_rng() if rng is None else rng
        for t in self.transforms:
            sample = t(sample, rng)
        return sample

    def __repr__(self):
        return f'Compose({self.transforms!r})'
