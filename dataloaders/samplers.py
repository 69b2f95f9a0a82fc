"""Batch samplers: labeled + unlabeled batches, labeled-only batches, and a fixed-iteration wrapper.

All randomness comes from np.random.default_rng([seed, epoch, stream, _TAG]): two instances with the
same seed and epoch agree, so every DDP rank computes the same global batch and takes its own slice.
(_TAG keeps these streams apart from the per-sample generators default_rng([seed, iteration, index]).)

Epochs: each pass (each iter() of a sampler) is one epoch. set_epoch(e) makes the next pass epoch e
exactly (train.py resumes through it); a pass started without a set_epoch call since the previous one
is the epoch after the previous one. So a plain `for epoch ...: for batch in DataLoader(ds,
batch_sampler=sampler)` loop, which never calls set_epoch, gets a fresh labeled order and fresh
unlabeled volumes every epoch instead of repeating epoch 0.
"""
import operator

import numpy as np

_TAG = 0x53414D50
_PRIMARY, _SECONDARY = 1, 2


def _positive_int(value, name):
    value = operator.index(value)
    if value <= 0:
        raise ValueError(f'{name} must be a positive integer, got {value}')
    return value


def _index_list(indices, name):
    indices = [operator.index(i) for i in indices]
    if len(set(indices)) != len(indices):
        dup = next(i for i in indices if indices.count(i) > 1)
        raise ValueError(f'{name} contains index {dup} more than once')
    return indices


class _EpochBatchSampler:
    """Seed, epoch and replica bookkeeping shared by the two samplers below."""

    def __init__(self, seed, num_replicas, rank):
        self.seed = operator.index(seed)
        if self.seed < 0:
            raise ValueError(f'seed must be >= 0, got {self.seed}')
        self.num_replicas = _positive_int(num_replicas, 'num_replicas')
        self.rank = operator.index(rank)
        if not 0 <= self.rank < self.num_replicas:
            raise ValueError(f'rank {self.rank} is outside 0..{self.num_replicas - 1}')
        self.epoch = 0
        self._pinned = True  # the first pass is epoch 0 unless set_epoch names another

    def set_epoch(self, epoch):
        """Make the next pass epoch `epoch`; later passes without another call count on from it."""
        self.epoch = operator.index(epoch)
        self._pinned = True

    def __iter__(self):
        if not self._pinned:
            self.epoch += 1
        self._pinned = False
        # The epoch is passed on, not read later from self: a generator's body runs at its first next(),
        # by when another pass or a set_epoch call may have changed self.epoch.
        return self._batches(self.epoch)

    def _rng(self, epoch, stream):
        return np.random.default_rng([self.seed, epoch, stream, _TAG])

    def _primary_batches(self, epoch, indices, per_rank):
        """This rank's slices of global batches (per_rank * num_replicas) of one shuffled pass; drop the rest."""
        order = self._rng(epoch, _PRIMARY).permutation(len(indices))
        size = per_rank * self.num_replicas
        for start in range(0, len(order) - size + 1, size):
            mine = order[start + self.rank * per_rank: start + (self.rank + 1) * per_rank]
            yield [indices[j] for j in mine]


class TwoStreamBatchSampler(_EpochBatchSampler):
    """Batches of (batch_size - secondary_batch_size) primary (labeled) indices, then secondary_batch_size
    secondary (unlabeled) ones.

    An epoch is one pass over the primary indices in a fresh order (the last incomplete batch dropped);
    the secondary indices cycle in fresh orders as often as needed, each cycle a full permutation, and
    no global batch holds a secondary index twice. With num_replicas > 1 the global batch is
    batch_size * num_replicas with the same ratio, and rank r takes the r-th slice of each stream, so
    ranks never share an index within a step. len() = len(primary) // (primary batch * num_replicas).

    Each pass is a new epoch (a new primary order and a new draw of secondary indices) unless
    set_epoch(e) was called since the last pass, which makes the pass epoch e: a plain loop over a
    DataLoader sees every secondary index in time, and a resumed run can replay any epoch exactly.
    """

    def __init__(self, primary_indices, secondary_indices, batch_size, secondary_batch_size, seed=0,
                 num_replicas=1, rank=0):
        super().__init__(seed, num_replicas, rank)
        self.primary = _index_list(primary_indices, 'primary_indices')
        self.secondary = _index_list(secondary_indices, 'secondary_indices')
        self.batch_size = _positive_int(batch_size, 'batch_size')
        self.secondary_batch_size = operator.index(secondary_batch_size)
        self.primary_batch_size = self.batch_size - self.secondary_batch_size
        if not self.secondary:
            raise ValueError('secondary_indices is empty: for labeled-only training use LabeledBatchSampler '
                             '(--method sup)')
        if self.secondary_batch_size <= 0:
            raise ValueError(f'secondary_batch_size must be >= 1, got {self.secondary_batch_size}; for '
                             'labeled-only batches use LabeledBatchSampler (--method sup)')
        if self.secondary_batch_size >= self.batch_size:
            raise ValueError(f'secondary_batch_size {self.secondary_batch_size} must be smaller than batch_size '
                             f'{self.batch_size} so every batch holds a labeled item')
        r = self.num_replicas
        if self.primary_batch_size * r > len(self.primary):
            raise ValueError(f'primary batch size {self.primary_batch_size} x {r} replicas exceeds the '
                             f'{len(self.primary)} primary (labeled) indices')
        if self.secondary_batch_size * r > len(self.secondary):
            raise ValueError(f'secondary batch size {self.secondary_batch_size} x {r} replicas exceeds the '
                             f'{len(self.secondary)} secondary (unlabeled) indices')

    def __len__(self):
        return len(self.primary) // (self.primary_batch_size * self.num_replicas)

    def _secondary_batches(self, epoch):
        """Endless global batches of secondary positions; each cycle of the stream is one permutation."""
        rng = self._rng(epoch, _SECONDARY)
        size, n = self.secondary_batch_size * self.num_replicas, len(self.secondary)
        rest = []
        while True:
            if len(rest) >= size:
                batch, rest = rest[:size], rest[size:]
            else:
                # The batch straddles two cycles: fill it from the next permutation without repeating
                # what the old cycle already put in; the skipped ones stay in the new cycle, later.
                head, fresh = rest, rng.permutation(n).tolist()
                taken = set(head)
                front = [j for j in fresh if j not in taken][:size - len(head)]
                chosen = set(front)
                batch, rest = head + front, [j for j in fresh if j not in chosen]
            yield batch

    def _batches(self, epoch):
        per_rank = self.secondary_batch_size
        lo, hi = self.rank * per_rank, (self.rank + 1) * per_rank
        for primary, secondary in zip(self._primary_batches(epoch, self.primary, self.primary_batch_size),
                                      self._secondary_batches(epoch)):
            yield primary + [self.secondary[j] for j in secondary[lo:hi]]


class LabeledBatchSampler(_EpochBatchSampler):
    """Random batches of batch_size indices, one pass per epoch (last incomplete batch dropped);
    for supervised-only training. Replicas split each global batch like TwoStreamBatchSampler.

    Each pass is a new epoch in a new order unless set_epoch(e) was called since the last pass, which
    makes the pass epoch e.
    """

    def __init__(self, indices, batch_size, seed=0, num_replicas=1, rank=0):
        super().__init__(seed, num_replicas, rank)
        self.indices = _index_list(indices, 'indices')
        self.batch_size = _positive_int(batch_size, 'batch_size')
        if self.batch_size * self.num_replicas > len(self.indices):
            raise ValueError(f'batch_size {self.batch_size} x {self.num_replicas} replicas exceeds the '
                             f'{len(self.indices)} indices')

    def __len__(self):
        return len(self.indices) // (self.batch_size * self.num_replicas)

    def _batches(self, epoch):
        return self._primary_batches(epoch, self.indices, self.batch_size)


class IterationBatchSampler:
    """Run a batch sampler over epochs for iterations start_iteration..num_iterations-1.

    Yields [(index, seed, iteration), ...] per batch: the dataset seeds each sample from that key, so the
    stream is independent of num_workers, and resuming at start_iteration yields exactly the tail of the
    full run. Skipping never touches the data: whole epochs are skipped by arithmetic, the rest of one
    epoch by drawing (index-only) batches. len() = num_iterations - start_iteration.
    """

    def __init__(self, batch_sampler, seed, num_iterations, start_iteration=0):
        self.batch_sampler = batch_sampler
        self.seed = operator.index(seed)
        self.num_iterations = operator.index(num_iterations)
        self.start_iteration = operator.index(start_iteration)
        if not 0 <= self.start_iteration <= self.num_iterations:
            raise ValueError(f'start_iteration {self.start_iteration} must lie in 0..num_iterations '
                             f'({self.num_iterations})')
        if len(batch_sampler) < 1:
            raise ValueError('the batch sampler yields no batch per epoch')

    def __len__(self):
        return self.num_iterations - self.start_iteration

    def __iter__(self):
        per_epoch = len(self.batch_sampler)
        iteration = self.start_iteration
        epoch, skip = divmod(iteration, per_epoch)
        while iteration < self.num_iterations:
            self.batch_sampler.set_epoch(epoch)
            for j, batch in enumerate(self.batch_sampler):
                if j < skip:
                    continue
                if iteration >= self.num_iterations:
                    return
                yield [(int(i), self.seed, iteration) for i in batch]
                iteration += 1
            epoch, skip = epoch + 1, 0
