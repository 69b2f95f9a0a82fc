"""Sampler invariants over many epochs, replica splitting, determinism, resume, and clear errors."""
from collections import Counter

import pytest
from torch.utils.data import DataLoader

from dataloaders.samplers import IterationBatchSampler, LabeledBatchSampler, TwoStreamBatchSampler

PRIMARY = list(range(8))
SECONDARY = list(range(8, 30))


def test_two_stream_invariants_over_many_epochs():
    sampler = TwoStreamBatchSampler(PRIMARY, SECONDARY, batch_size=5, secondary_batch_size=3, seed=3)
    assert len(sampler) == 4
    seen_secondary = Counter()
    orders = set()
    for epoch in range(60):
        sampler.set_epoch(epoch)
        batches = list(sampler)
        assert len(batches) == len(sampler)
        primary_part = [i for b in batches for i in b[:2]]
        assert all(len(b) == 5 for b in batches)
        assert all(i in PRIMARY for i in primary_part)          # labeled first
        assert all(i in SECONDARY for b in batches for i in b[2:])
        assert sorted(primary_part) == PRIMARY                  # each labeled index once per epoch
        assert all(len(set(b)) == 5 for b in batches)
        orders.add(tuple(primary_part))
        seen_secondary.update(i for b in batches for i in b[2:])
    assert len(orders) > 50                                      # a fresh order each epoch
    assert set(seen_secondary) == set(SECONDARY)
    assert max(seen_secondary.values()) < 3 * min(seen_secondary.values())


def test_drops_incomplete_primary_batch_and_cycles_secondary_as_permutations():
    # 7 labeled / 3 per batch -> 2 batches; 4 unlabeled consumed 3 per batch straddle cycles.
    primary, secondary = list(range(7)), [10, 11, 12, 13]
    sampler = TwoStreamBatchSampler(primary, secondary, batch_size=6, secondary_batch_size=3, seed=0)
    assert len(sampler) == 2
    big = TwoStreamBatchSampler(list(range(400)), secondary, batch_size=6, secondary_batch_size=3, seed=1)
    stream = [i for b in big for i in b[3:]]
    assert len(stream) == 133 * 3
    for c in range(len(stream) // 4):                            # every cycle of 4 is a permutation
        assert sorted(stream[4 * c: 4 * c + 4]) == secondary
    assert all(len(set(b[3:])) == 3 for b in big)                # no repeat inside a batch
    for epoch in range(20):
        sampler.set_epoch(epoch)
        batches = list(sampler)
        assert len(batches) == 2 and len(set(i for b in batches for i in b[:3])) == 6


def test_same_seed_and_epoch_agree_other_seed_differs():
    a = TwoStreamBatchSampler(PRIMARY, SECONDARY, 4, 2, seed=7)
    b = TwoStreamBatchSampler(PRIMARY, SECONDARY, 4, 2, seed=7)
    c = TwoStreamBatchSampler(PRIMARY, SECONDARY, 4, 2, seed=8)
    a.set_epoch(5), b.set_epoch(5), c.set_epoch(5)
    first = list(a)
    a.set_epoch(5)
    assert first == list(b) == list(a)
    assert first != list(c)
    b.set_epoch(6)
    assert first != list(b)


def test_plain_loop_without_set_epoch_sees_every_unlabeled_index_and_fresh_orders():
    """The lineage's loop, which never calls set_epoch: each epoch must not replay epoch 0."""
    loader = DataLoader(list(range(80)), batch_sampler=TwoStreamBatchSampler(range(8), range(8, 80), 4, 2))
    seen, orders = set(), set()
    for epoch in range(60):
        batches = [b.tolist() for b in loader]
        assert len(batches) == 4 and sorted(i for b in batches for i in b[:2]) == list(range(8))
        orders.add(tuple(i for b in batches for i in b[:2]))
        seen.update(i for b in batches for i in b[2:])
    assert seen == set(range(8, 80))      # each epoch draws 8 of the 72; epoch 0 repeated would give 8
    assert len(orders) == 60

    labeled = DataLoader(list(range(10)), batch_sampler=LabeledBatchSampler(range(10), 2, seed=1))
    firsts = {tuple(tuple(b.tolist()) for b in labeled) for _ in range(20)}
    assert len(firsts) == 20


@pytest.mark.parametrize('make', [lambda: TwoStreamBatchSampler(PRIMARY, SECONDARY, 4, 2, seed=5),
                                  lambda: LabeledBatchSampler(PRIMARY, 2, seed=5)])
def test_set_epoch_pins_the_pass_and_later_passes_count_on(make):
    plain = make()
    passes = [list(plain) for _ in range(6)]                 # epochs 0..5
    assert len({str(p) for p in passes}) == 6
    pinned = make()
    for epoch in (3, 3, 0, 5):
        pinned.set_epoch(epoch)
        assert list(pinned) == passes[epoch]                 # set_epoch(e) is epoch e, however often
    pinned.set_epoch(2)
    assert [list(pinned) for _ in range(3)] == passes[2:5]  # then 3, 4 without another call
    pinned.set_epoch(1)
    started = iter(pinned)                                   # a pass keeps the epoch it was started in
    pinned.set_epoch(4)
    assert list(started) == passes[1] and list(pinned) == passes[4]


def rank_streams(make, replicas, iterations, start=0):
    """Per rank, the batches train.py's IterationBatchSampler hands it (indices only)."""
    return [[[k[0] for k in b] for b in IterationBatchSampler(make(r), 3, iterations, start)]
            for r in range(replicas)]


def test_rank_slices_as_train_py_draws_them():
    """What train.py under torchrun trains on: each rank its own slice of each stream, the same ratio."""
    labelnum, cases, replicas, steps = 4, 8, 2, 12
    two_stream = rank_streams(lambda r: TwoStreamBatchSampler(range(labelnum), range(labelnum, cases), 2, 1, seed=3,
                                                              num_replicas=replicas, rank=r), replicas, steps)
    for step in zip(*two_stream):
        flat = [i for b in step for i in b]
        assert len(set(flat)) == len(flat)                   # the ranks never share a volume in a step
        assert all(len(b) == 2 and b[0] < labelnum <= b[1] for b in step)  # 1 labeled, then 1 unlabeled
    per_epoch = labelnum // replicas                         # steps per epoch: every labeled id once
    for e in range(steps // per_epoch):
        epoch = [b[0] for rank in two_stream for b in rank[e * per_epoch:(e + 1) * per_epoch]]
        assert sorted(epoch) == list(range(labelnum))

    labeled = rank_streams(lambda r: LabeledBatchSampler(range(labelnum), 1, seed=3, num_replicas=replicas,
                                                         rank=r), replicas, steps)
    for step in zip(*labeled):
        assert len(step[0]) == 1 and step[0] != step[1]
    # a rank resumed mid-run draws the tail of its own stream
    for r, stream in enumerate(rank_streams(lambda r: TwoStreamBatchSampler(
            range(labelnum), range(labelnum, cases), 2, 1, seed=3, num_replicas=replicas, rank=r),
            replicas, steps, start=5)):
        assert stream == two_stream[r][5:]


@pytest.mark.parametrize('replicas', [2, 4])
def test_replicas_split_the_global_batch(replicas):
    primary, secondary = list(range(16)), list(range(16, 40))
    ranks = [TwoStreamBatchSampler(primary, secondary, 3, 1, seed=2, num_replicas=replicas, rank=r)
             for r in range(replicas)]
    assert all(len(s) == 16 // (2 * replicas) for s in ranks)
    for epoch in range(10):
        for s in ranks:
            s.set_epoch(epoch)
        per_rank = [list(s) for s in ranks]
        labeled_epoch = []
        for step in zip(*per_rank):
            assert all(len(b) == 3 and b[0] in primary and b[1] in primary and b[2] in secondary for b in step)
            flat = [i for b in step for i in b]
            assert len(set(flat)) == len(flat)                   # disjoint across ranks
            labeled_epoch += [i for b in step for i in b[:2]]
        assert sorted(labeled_epoch) == primary


def test_labeled_batch_sampler():
    sampler = LabeledBatchSampler(list(range(10)), batch_size=4, seed=1)
    assert len(sampler) == 2
    firsts = set()
    for epoch in range(30):
        sampler.set_epoch(epoch)
        batches = list(sampler)
        flat = [i for b in batches for i in b]
        assert len(batches) == 2 and all(len(b) == 4 for b in batches) and len(set(flat)) == 8
        firsts.add(tuple(batches[0]))
    assert len(firsts) > 20
    r0 = LabeledBatchSampler(list(range(10)), 2, seed=1, num_replicas=2, rank=0)
    r1 = LabeledBatchSampler(list(range(10)), 2, seed=1, num_replicas=2, rank=1)
    assert len(r0) == 2
    flat = [i for b in list(r0) + list(r1) for i in b]
    assert len(flat) == 8 and len(set(flat)) == 8


@pytest.mark.parametrize('args, words', [
    ((PRIMARY, SECONDARY, 0, 0), 'batch_size must be a positive integer, got 0'),
    ((PRIMARY, SECONDARY, 4, -1), 'got -1'),
    ((PRIMARY, SECONDARY, 4, 0), 'LabeledBatchSampler'),
    ((PRIMARY, SECONDARY, 4, 4), 'secondary_batch_size 4 must be smaller than batch_size 4'),
    ((PRIMARY, SECONDARY, 12, 3), 'primary batch size 9'),
    ((PRIMARY, [30, 31], 6, 3), 'secondary batch size 3'),
    ((PRIMARY, [], 4, 2), 'LabeledBatchSampler'),
    ((PRIMARY + [1], SECONDARY, 4, 2), 'index 1 more than once'),
])
def test_two_stream_errors_name_the_number(args, words):
    with pytest.raises(ValueError, match=words):
        TwoStreamBatchSampler(*args)


def test_replica_errors():
    with pytest.raises(ValueError, match='primary batch size 2 x 5 replicas'):
        TwoStreamBatchSampler(PRIMARY, SECONDARY, 4, 2, num_replicas=5, rank=0)
    with pytest.raises(ValueError, match='rank 2'):
        LabeledBatchSampler(PRIMARY, 2, num_replicas=2, rank=2)
    with pytest.raises(ValueError, match='batch_size 3 x 3 replicas'):
        LabeledBatchSampler(PRIMARY, 3, num_replicas=3, rank=0)


def test_iteration_sampler_resume_is_the_tail_of_the_full_run():
    def run(start):
        inner = TwoStreamBatchSampler(PRIMARY, SECONDARY, 4, 2, seed=11)
        return list(IterationBatchSampler(inner, seed=11, num_iterations=37, start_iteration=start))

    full = run(0)
    assert len(full) == 37
    assert [b[0][2] for b in full] == list(range(37))
    assert all(key[1] == 11 and len(b) == 4 for b in full for key in b)
    for start in (1, 4, 9, 36, 37):
        resumed = run(start)
        assert resumed == full[start:]
        inner = TwoStreamBatchSampler(PRIMARY, SECONDARY, 4, 2, seed=11)
        assert len(IterationBatchSampler(inner, 11, 37, start)) == 37 - start
    # epochs differ: iteration 0 and 4 (next epoch) do not repeat the same labeled order
    assert [k[0] for b in full[:4] for k in b[:2]] != [k[0] for b in full[4:8] for k in b[:2]]


def test_iteration_sampler_errors():
    inner = LabeledBatchSampler(PRIMARY, 2)
    with pytest.raises(ValueError, match='start_iteration 11'):
        IterationBatchSampler(inner, 0, 10, 11)
