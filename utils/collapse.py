"""Is the pair collapsing to background? A watch on the pseudo-labels' foreground share.

With the unsupervised terms at full weight from the first iteration (the paper's schedule), two networks
whose early guesses agree on background can reward each other for it until they predict background
everywhere. The sign comes long before the empty test masks: the pseudo-labels' foreground share stays
far below the labeled volumes' foreground share.
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
                f'{100 * labeled:.1f} % in the labeled volumes over the last {len(self.pseudo)} iterations: the '
                f'pair may be collapsing to background; --ramp_unsup 1 ramps the unsupervised terms in')
