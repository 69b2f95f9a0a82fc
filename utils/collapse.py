"""Are the pseudo-labels mostly background? A watch on their foreground share, and what it does not tell.

With the unsupervised terms at full weight from the first iteration (the paper's schedule), two networks
whose early guesses agree on background can reward each other for it. The watch reports when the
pseudo-labels' foreground share stays far below the labeled volumes' share. It is a description of the
pseudo-labels, not a forecast of the final Dice: on 20 runs of the pair on half-resolution LA (10 seeds,
600 iterations) it fired in 2 of the 4 runs that ended more than 3 points behind a V-Net trained on the
labels alone and in 3 of the 16 that did not, and no quantity the runs log separated the two groups by 30 %
of the run (docs/results.md, "seed study").
"""
from collections import deque


class CollapseWatch:
    """Feed it each iteration's pseudo-label and labeled-batch foreground shares; it returns a warning once,
    the first time the pseudo-labels' mean share over the last `window` iterations is below `ratio` times the
    labeled volumes' mean share over the same iterations, and None otherwise (and ever after)."""

    def __init__(self, window, ratio=0.25):
        self.pseudo, self.labeled = deque(maxlen=window), deque(maxlen=window)
        self.ratio, self.warned = ratio, False

    def update(self, pseudo_fg, label_fg):
        self.pseudo.append(pseudo_fg)
        self.labeled.append(label_fg)
        if self.warned or len(self.pseudo) < self.pseudo.maxlen:
            return None
        pseudo, labeled = sum(self.pseudo) / len(self.pseudo), sum(self.labeled) / len(self.labeled)
        if pseudo >= self.ratio * labeled:
            return None
        self.warned = True
        return (f'the pseudo-labels mark {100 * pseudo:.1f} % of the unlabeled voxels as foreground against '
                f'{100 * labeled:.1f} % in the labeled volumes over the last {len(self.pseudo)} iterations: '
                f'they are mostly background now. Not a forecast: runs recover from this, and runs fall behind '
                f'without it (docs/results.md, seed study); --ramp_unsup 1 ramps the unsupervised terms in')
