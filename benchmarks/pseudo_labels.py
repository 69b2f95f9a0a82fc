"""How good are the pseudo-labels the dual losses train on? Measured against the hidden labels.

    python -m benchmarks.pseudo_labels --checkpoint RUN/final.pth --root_path benchmarks/cache/scale0.5-float16

The unlabeled volumes of a run (train.list after the first --labelnum ids) have labels on disk that
training never reads. This script draws batches of random crops from them, as training does, runs
both networks of a dual checkpoint (train mode by default, so dropout and batch statistics are those
the losses see) and scores what terms 5 and 6 would train on: each network's argmax, the union
pseudo-label yhat of L_cps and its reliable set R, and the winner's argmax that L_urps distils.
"""
import argparse
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from dataloaders.datasets import read_case, read_list

from dataloaders.transforms import RandomCrop, normalize_intensity
from dataloaders.datasets import LA_PATTERN, LA_SUBDIR
from losses import cross_pseudo_label
from utils.checkpoint import load_checkpoint, load_weights
from utils.cli import OneLineParser, UsageError, run_cli
from networks import build_net


def dice(pred, gt):
    inter = (pred & gt).sum()
    total = pred.sum() + gt.sum()
    return float(2 * inter / total) if total else 1.0


def crop_batch(cases, crop, batch, rng):
    """`batch` random crops of random cases, as training's RandomCrop draws them."""
    crops = [crop(dict(zip(('image', 'label'), cases[rng.integers(len(cases))])), rng) for _ in range(batch)]
    image = torch.from_numpy(np.stack([c['image'] for c in crops]))[:, None].float()
    return image, torch.from_numpy(np.stack([c['label'] for c in crops])).long()


def main(argv=None):
    p = OneLineParser(description=__doc__.split('\n')[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument('--checkpoint', required=True, nargs='+', help='dual checkpoints (final.pth of train.py)')
    p.add_argument('--root_path', required=True)
    p.add_argument('--pattern', default=f'{LA_SUBDIR}/{LA_PATTERN}')
    p.add_argument('--batches', type=int, default=40)
    p.add_argument('--eval', action='store_true', help='eval mode (no dropout, running BN statistics)')
    p.add_argument('--seed', type=int, default=0)
    args = p.parse_args(argv)
    torch.set_grad_enabled(False)

    for path in args.checkpoint:
        ckpt = load_checkpoint(path)
        cfg = ckpt.get('config') if isinstance(ckpt, dict) else None
        if not cfg or 'net_b' not in ckpt:
            raise UsageError(f'{path}: not a dual checkpoint written by train.py')
        nets = [build_net(w, cfg['num_classes'], cfg['n_filters'], has_dropout=not args.eval) for w in 'ab']
        for net, key in zip(nets, ('net_a', 'net_b')):
            load_weights(net, ckpt[key], f'{path} [{key}]')
            net.train(not args.eval)
        ids = read_list(Path(args.root_path) / 'train.list')[cfg['labelnum']:]
        cases = [read_case(Path(args.root_path) / args.pattern.format(id=i)) for i in ids]
        # as training saw them (checkpoints from before --normalize trained on the stored values)
        cases = [(normalize_intensity(image, cfg.get('normalize', 'none')), label) for image, label in cases]
        patch = cfg['patch_size']
        crop = RandomCrop(patch)
        unlabeled_bs = cfg['batch_size'] - cfg['labeled_bs']
        rng = np.random.default_rng(args.seed)
        torch.manual_seed(args.seed)

        stats = {k: [] for k in ('A', 'B', 'winner', 'yhat', 'mean', 'R share', 'acc in R', 'acc out R',
                                 'fg recall in R', 'fg precision in R', 'fg share', 'fg share in R')}
        volume = {k: 0 for k in ('truth', 'A', 'B', 'yhat')}
        for _ in range(args.batches):
            image, gt = crop_batch(cases, crop, unlabeled_bs, rng)
            gt = gt > 0
            prob_a, prob_b = (F.softmax(net(image)[0], dim=1) for net in nets)
            pseudo, reliable = cross_pseudo_label(prob_a, prob_b, cfg['uncertain_percent'], cfg.get('cps_filter', cfg.get('filter', 'global')))
            arg_a, arg_b, yhat = prob_a.argmax(1) > 0, prob_b.argmax(1) > 0, pseudo > 0
            # the winner is picked on labeled data in training; here: the one closer to the truth
            stats['A'].append(dice(arg_a, gt))
            stats['B'].append(dice(arg_b, gt))
            stats['winner'].append(max(stats['A'][-1], stats['B'][-1]))
            stats['yhat'].append(dice(yhat, gt))
            stats['mean'].append(dice((prob_a + prob_b).argmax(1) > 0, gt))
            stats['R share'].append(float(reliable.float().mean()))
            stats['acc in R'].append(float((yhat == gt)[reliable].float().mean()))
            stats['acc out R'].append(float((yhat == gt)[~reliable].float().mean()) if (~reliable).any() else float('nan'))
            stats['fg recall in R'].append(float((yhat & reliable & gt).sum() / gt.sum().clamp_min(1)))
            stats['fg precision in R'].append(float((yhat & reliable & gt).sum() / (yhat & reliable).sum().clamp_min(1)))
            stats['fg share'].append(float(gt.float().mean()))
            stats['fg share in R'].append(float((yhat & reliable).sum() / reliable.sum().clamp_min(1)))
            for k, mask in (('truth', gt), ('A', arg_a), ('B', arg_b), ('yhat', yhat)):
                volume[k] += int(mask.sum())
        print(f'{path} ({len(ids)} unlabeled volumes, {args.batches} batches of {unlabeled_bs} crops '
              f'{"x".join(map(str, patch))}, {"eval" if args.eval else "train"} mode)')
        print('  Dice vs hidden labels: ' + ', '.join(f'{k} {100 * np.mean(stats[k]):.2f}'
                                                       for k in ('A', 'B', 'winner', 'yhat', 'mean')))
        print('  ' + ', '.join(f'{k} {100 * np.nanmean(stats[k]):.2f} %' for k in list(stats)[5:]))
        print('  predicted / true foreground volume: ' + ', '.join(f'{k} {volume[k] / volume["truth"]:.2f}'
                                                                   for k in ('A', 'B', 'yhat')))


if __name__ == '__main__':
    run_cli(main)
