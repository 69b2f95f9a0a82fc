"""TensorBoard curves and slice pictures of a training run (train.py --tensorboard), in <run>/tensorboard/.

The package tensorboard is optional: it is imported only when this log is enabled.
"""
from pathlib import Path

import numpy as np
import torch

from dataloaders.pictures import grey_window, optional_import, view

# iterations.csv records the winner as A or B; as a number its smoothed curve is A's share of wins.
WINNER_VALUE = {'A': 1.0, 'B': 0.0}
SEPARATOR = 2  # white pixel columns between the panels of a slice picture


def summary_writer_class():
    """torch's SummaryWriter; exits with one line naming the package when tensorboard is missing."""
    return optional_import('torch.utils.tensorboard', '--tensorboard', 'tensorboard').SummaryWriter


def slice_strip(image, masks, num_classes):
    """The middle axial slice of image (X, Y, Z) in grey, then each label map of `masks` (0 black, the
    highest class white), side by side: one (H, W) float picture in [0, 1]."""
    z = image.shape[2] // 2
    low, high = grey_window(image)
    panels = [np.clip((view(image, 2, z) - low) / (high - low), 0, 1)]
    panels += [view(mask, 2, z) / max(num_classes - 1, 1) for mask in masks]
    gap = np.ones((panels[0].shape[0], SEPARATOR))
    strip = [p for panel in panels for p in (panel, gap)][:-1]
    return np.concatenate(strip, axis=1).astype(np.float32)


class TensorBoardLog:
    """The values of each iterations.csv row as scalars, with the iteration as step, and slice pictures.

    A resumed run re-does the iterations from its checkpoint on, so the writer purges whatever an
    interrupted run logged from `start_iteration` on: the curves continue without a duplicate step.
    Disabled (enabled=False: other ranks, or no --tensorboard), every method does nothing.
    """

    def __init__(self, run_dir, start_iteration=0, enabled=True):
        self.writer = None
        if enabled:
            self.writer = summary_writer_class()(str(Path(run_dir) / 'tensorboard'), purge_step=start_iteration)

    def scalars(self, iteration, row):
        """row: {name: float, or 'A'/'B' for the winner}, as written to iterations.csv."""
        if self.writer is None:
            return
        for name, value in row.items():
            self.writer.add_scalar(name, WINNER_VALUE[value] if name == 'winner' else float(value), iteration)

    @torch.no_grad()
    def slices(self, iteration, nets, image, label, first_unlabeled, num_classes):
        """Middle axial slice of the batch's first labeled volume (image, label, each network's prediction)
        and, when first_unlabeled is not None, of that unlabeled volume (image, predictions).

        nets: {name: module}; the predictions are eval-mode (no dropout, BatchNorm running statistics), which
        changes neither the networks nor any random state, so a logged run trains exactly as one without.
        """
        if self.writer is None:
            return
        picks = [('labeled', 0)] + ([('unlabeled', first_unlabeled)] if first_unlabeled is not None else [])
        batch = image[[i for _, i in picks]]
        preds = {}
        for name, net in nets.items():
            was_training = net.training
            net.eval()
            preds[name] = net(batch)[0].argmax(dim=1).cpu().numpy()
            net.train(was_training)
        for k, (kind, i) in enumerate(picks):
            volume = image[i, 0].float().cpu().numpy()
            masks = ([label[i].cpu().numpy()] if kind == 'labeled' else []) + [p[k] for p in preds.values()]
            names = ['image'] + (['label'] if kind == 'labeled' else []) + list(preds)
            self.writer.add_image(f'slices/{kind} ({", ".join(names)})', slice_strip(volume, masks, num_classes),
                                  iteration, dataformats='HW')

    def close(self):
        if self.writer is not None:
            self.writer.close()
