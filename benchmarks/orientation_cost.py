"""What a mirrored input costs: a small V-Net trained on LA as stored, tested on its test volumes as stored and
with x, y or both reversed (what a scan stored LPS instead of RAS looked like to the networks before the
importers brought every scan to the recipe's orientation).

    python -m benchmarks.orientation_cost --la_root data/LA [--iterations 300] [--train 12] [--test 4]

CPU-sized: every volume is resampled by --scale (image linear, label nearest), a supervised V-Net (network A,
--n_filters) is trained on the first --train ids of train.list with random crops of --patch and no flips
(train.py's defaults: --rotflip is off), then the next --test ids are segmented by utils.inference's sliding
window as stored and mirrored (the map mirrored back before scoring) and the Dice of each is printed, with
the mean drop against the stored input. The point is the gap between rows, not the Dice itself.
"""
import argparse
import json
import time
from pathlib import Path

import h5py
import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage

from dataloaders.datasets import LA_SUBDIR, read_list
from networks import build_net
from utils.cli import run_cli
from utils.inference import test_single_case
from utils.metrics import calculate_metric_percase

# (name, axes reversed) of each test input: the stored one first, the reference of the drops
MIRRORS = (('as stored', ()), ('x reversed', (0,)), ('y reversed', (1,)), ('x and y reversed', (0, 1)))


def load_case(root, case_id, scale):
    """(image float32, label uint8), both (X,Y,Z) resampled by `scale`, of one LA case."""
    with h5py.File(Path(root) / LA_SUBDIR / case_id / 'mri_norm2.h5', 'r') as f:
        image, label = f['image'][()], f['label'][()]
    return (ndimage.zoom(image, scale, order=1).astype(np.float32),
            ndimage.zoom(label, scale, order=0).astype(np.uint8))


def random_crop(image, label, patch, rng):
    """A (patch) crop of both at a random place, the volume padded first where it is smaller."""
    pads = [(0, max(p - n, 0)) for p, n in zip(patch, image.shape)]
    image, label = np.pad(image, pads), np.pad(label, pads)
    start = [int(rng.integers(0, n - p + 1)) for n, p in zip(image.shape, patch)]
    box = tuple(slice(s, s + p) for s, p in zip(start, patch))
    return image[box], label[box]


def train_net(cases, args):
    """A supervised V-Net (network A) trained on (image, label) cases: cross-entropy plus soft Dice, SGD."""
    torch.manual_seed(args.seed)
    rng = np.random.default_rng(args.seed)
    net = build_net('a', 2, args.n_filters)
    net.train()
    optimiser = torch.optim.SGD(net.parameters(), lr=args.lr, momentum=0.9, weight_decay=1e-4)
    for _ in range(args.iterations):
        batch = [random_crop(*cases[int(rng.integers(len(cases)))], args.patch, rng) for _ in range(args.batch)]
        image = torch.from_numpy(np.stack([b[0] for b in batch]))[:, None]
        label = torch.from_numpy(np.stack([b[1] for b in batch]).astype(np.int64))
        logits = net(image)
        logits = logits[0] if isinstance(logits, (tuple, list)) else logits
        foreground = torch.softmax(logits, 1)[:, 1]
        dice = 1 - (2 * (foreground * label).sum() + 1) / (foreground.sum() + label.sum() + 1)
        loss = F.cross_entropy(logits, label) + dice
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
    net.eval()
    return net


def mirrored_dice(net, image, label, axes, args):
    """Dice (%) of the map of `image` with `axes` reversed, the map reversed back onto the label."""
    flipped = np.ascontiguousarray(np.flip(image, axes)) if axes else image
    stride_xy, stride_z = args.patch[0] // 2, args.patch[2] // 2
    with torch.no_grad():
        pred, _ = test_single_case([net], flipped, stride_xy, stride_z, args.patch, 2)
    pred = np.flip(pred, axes) if axes else pred
    return 100 * calculate_metric_percase(pred, label)[0]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--la_root', required=True, help='the LA folder (train.list, 2018LA_Seg_Training Set/)')
    parser.add_argument('--scale', type=float, default=0.5, help='resampling factor of every volume (0.5)')
    parser.add_argument('--patch', type=lambda t: tuple(int(v) for v in t.split(',')), default=(64, 64, 48))
    parser.add_argument('--n_filters', type=int, default=4)
    parser.add_argument('--iterations', type=int, default=300)
    parser.add_argument('--batch', type=int, default=2)
    parser.add_argument('--lr', type=float, default=0.01)
    parser.add_argument('--train', type=int, default=12, help='training cases: the first ids of train.list')
    parser.add_argument('--test', type=int, default=4, help='test cases: the ids after the training ones')
    parser.add_argument('--seed', type=int, default=1337)
    parser.add_argument('--threads', type=int, default=2)
    parser.add_argument('--out', default=None, help='also write the figures as JSON here')
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    ids = read_list(Path(args.la_root) / 'train.list')
    started = time.perf_counter()
    train_cases = [load_case(args.la_root, i, args.scale) for i in ids[:args.train]]
    test_ids = ids[args.train:args.train + args.test]
    net = train_net(train_cases, args)
    trained = time.perf_counter() - started
    dice = {name: [mirrored_dice(net, *load_case(args.la_root, i, args.scale), axes, args) for i in test_ids]
            for name, axes in MIRRORS}
    reference = np.mean(dice[MIRRORS[0][0]])
    for name, values in dice.items():
        print(f'{name:18s} Dice {np.mean(values):6.2f} %  ({reference - np.mean(values):+.2f} below as stored; '
              f'per case {", ".join(f"{v:.1f}" for v in values)})')
    seconds = time.perf_counter() - started
    print(f'trained {args.iterations} iterations in {trained:.0f} s; {seconds:.0f} s in all')
    if args.out:
        Path(args.out).write_text(json.dumps({'args': {k: v for k, v in vars(args).items()}, 'test_ids': test_ids,
                                              'dice': dice, 'seconds': seconds}, indent=2) + '\n')
    return 0


if __name__ == '__main__':
    run_cli(main)
