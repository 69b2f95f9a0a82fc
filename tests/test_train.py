"""train.py end to end on tiny phantoms (CPU): every method, the loss terms' gradients, pair-sup,
bit-exact resume with any num_workers, a 2-process torchrun run, and the run-folder rules.

Runs are in-process (train.main) where a real process is not needed; one thread, so results are
the same in every process and the tiny networks run fast on a small CPU.
"""
import csv
import importlib.util
import json
import math
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

import train
from dataloaders.datasets import H5Dataset
from dataloaders.samplers import IterationBatchSampler, TwoStreamBatchSampler
from dataloaders.transforms import Compose, RandomCrop, ToTensor, normalize_intensity
from conftest import ITERATION_COLUMNS, require_extra, train_argv
from losses import supervised_loss
from networks import ResNet34VNet, VNet
from utils.cli import UsageError, run_cli
from utils.checkpoint import CheckpointError, save_checkpoint
from utils.processes import select_device
from utils.resume import restore, run_keys
from utils.run_log import CollapseWatch, IterationCSV

REPO = Path(__file__).resolve().parents[1]
SEED = 1337
# What the iterations.csv of each method must hold (written out in conftest, not read from train.py).
TERMS = ITERATION_COLUMNS
# The torchrun test logs to TensorBoard too when the optional package is there.
TENSORBOARD = ['--tensorboard'] if importlib.util.find_spec('tensorboard') else []
UNSUPERVISED_OFF = ['--alpha_mc', '0', '--lambda_reg', '0', '--lambda_urps', '0', '--lambda_cps', '0',
                    '--lambda_con', '0']


pytestmark = pytest.mark.usefixtures('one_thread')


def args(data, run, *extra, **flags):
    return train_argv(data, run, *extra, **{'log_every': 1, **flags})


def load(path):
    return torch.load(path, map_location='cpu', weights_only=True)


def assert_same_run(a, b, path=''):
    """Every tensor equal (torch.equal) and every other value equal, config aside from paths/workers."""
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b), path
    elif isinstance(a, dict):
        ignore = {'snapshot_path', 'resume', 'num_workers', 'save_every'} if path.endswith('config') else set()
        assert set(a) - ignore == set(b) - ignore, path
        for k in set(a) - ignore:
            assert_same_run(a[k], b[k], f'{path}/{k}')
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), path
        for i, (x, y) in enumerate(zip(a, b)):
            assert_same_run(x, y, f'{path}/{i}')
    else:
        assert a == b, path


def read_csv(path):
    with open(path, newline='') as f:
        return list(csv.DictReader(f))


@pytest.fixture(scope='module')
def reference(phantoms, tmp_path_factory):
    """An uninterrupted dual run of 8 iterations, checkpointed at 4."""
    run = tmp_path_factory.mktemp('reference') / 'run'
    train.main(args(phantoms, run, max_iterations=8, save_every=4))
    return run


# ------------------------------------------------------------------------------------------ methods

@pytest.mark.parametrize('method,labelnum', [('dual', 4), ('mt', 4), ('sup', 4), ('sup', 8)])
def test_every_method_writes_a_complete_run(phantoms, reference, tmp_path, method, labelnum):
    if method == 'dual':
        run, iterations = reference, 8
    else:
        run, iterations = tmp_path / 'run', 3
        handlers = signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)
        train.main(args(phantoms, run, method=method, labelnum=labelnum, max_iterations=iterations))
        assert (signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)) == handlers  # restored
    ckpt = load(run / 'final.pth')
    nets = {'dual': {'net_a': VNet, 'net_b': ResNet34VNet}, 'mt': {'net_a': VNet, 'ema': VNet},
            'sup': {'net_a': VNet}}[method]
    optimizers = {'dual': ['optimizer_a', 'optimizer_b'], 'mt': ['optimizer_a'], 'sup': ['optimizer_a']}[method]
    assert set(ckpt) == {'iteration', 'config', 'method', 'rng', 'scaler', 'best', *nets, *optimizers}
    assert ckpt['iteration'] == iterations and ckpt['method'] == method
    for name, cls in nets.items():
        cls(n_channels=1, n_classes=2, n_filters=2).load_state_dict(ckpt[name])  # strict: every key fits
    for name in optimizers:
        assert ckpt[name]['state'] and ckpt[name]['param_groups'][0]['momentum'] == 0.9
    [own] = ckpt['rng']['ranks']  # one process: one state, the CPU's only
    assert set(own) == {'torch'} and own['torch'].dtype == torch.uint8
    assert ckpt['scaler'] == {}  # float32: the gradient scaler is off
    saved = json.loads((run / 'config.json').read_text())
    assert isinstance(ckpt['config'], dict) and json.loads(json.dumps(ckpt['config'])) == saved
    assert saved['method'] == method and saved['labelnum'] == labelnum
    assert saved['channels_last'] is True  # the CPU's default
    assert saved['tf32'] == 0 and torch.backends.cudnn.conv.fp32_precision == 'ieee'  # true float32 by default

    rows = read_csv(run / 'iterations.csv')
    assert list(rows[0]) == ['iteration'] + TERMS[method]
    assert [int(r['iteration']) for r in rows] == list(range(iterations))
    for r in rows:
        for k in TERMS[method]:
            if k == 'winner':
                assert r[k] in ('A', 'B')
            else:
                assert math.isfinite(float(r[k])), (k, r[k])
            if k in ('reliable', 'pseudo_fg', 'reliable_fg'):  # shares
                assert 0 <= float(r[k]) <= 1, (k, r[k])
    log = (run / 'log.txt').read_text()
    assert f'{method} on la' in log and f'finished {iterations} iterations' in log


@pytest.fixture
def two_gpus(monkeypatch):
    """CUDA made to look present with 2 devices: select_device only asks, it touches no GPU."""
    monkeypatch.setattr(torch.cuda, 'is_available', lambda: True)
    monkeypatch.setattr(torch.cuda, 'device_count', lambda: 2)


def test_gpu_under_torchrun_is_the_local_rank_or_the_cpu(two_gpus, capsys):
    assert [select_device(g, 1) for g in ('-1', 'cpu', '0')] == [torch.device('cpu')] * 2 + [torch.device('cuda', 1)]
    assert select_device('1', 1) == torch.device('cuda', 1)  # local rank 0 alone warns, once for the run
    assert select_device('0', None) == torch.device('cuda', 0)  # no torchrun: the flag's index
    assert capsys.readouterr().err == ''  # none of these warns
    assert select_device('1', 0) == torch.device('cuda', 0)
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 1 and lines[0].startswith('warning: --gpu 1 is replaced') and 'LOCAL_RANK' in lines[0]
    with pytest.raises(UsageError, match='LOCAL_RANK 2: only 2 CUDA'):
        select_device('0', 2)
    with pytest.raises(UsageError, match='--gpu 0,1: under torchrun'):
        select_device('0,1', 0)


def test_gpu_index_without_cuda_falls_back_to_cpu_with_one_warning(phantoms, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(torch.cuda, 'is_available', lambda: False)
    train.main(args(phantoms, tmp_path / 'run', method='sup', gpu=0, max_iterations=1))
    cuda = [line for line in capsys.readouterr().err.splitlines() if 'CUDA' in line]
    assert cuda == ['warning: --gpu 0: CUDA is not available, running on the CPU']
    assert 'device cpu' in (tmp_path / 'run' / 'log.txt').read_text()


# --------------------------------------------------------------------------------- the loss terms

WEIGHTS = ('alpha_mc', 'lambda_reg', 'lambda_urps', 'lambda_cps', 'lambda_con')


def term_cfg(**on):
    """train.dual_step's settings, every weight 0 but those in `on`."""
    cfg = dict(labeled_bs=2, conf_thresh=0.5, uncertain_percent=20, contrast_tau=0.1, contrast_samples=64,
               rampup=10, cps_filter='classwise', ramp_unsup=False, **{w: 0.0 for w in WEIGHTS})
    cfg.update(on)
    return cfg


class NoBackward:
    """A gradient scaler and optimiser that do nothing: dual_step's terms keep their graphs for the test to ask
    which network each term's gradient reaches, and no weight moves."""

    def scale(self, loss):
        return self

    def backward(self):
        pass

    def zero_grad(self, set_to_none=True):
        pass

    def step(self, optimizer):
        pass

    def update(self):
        pass


def dual_terms(net_a, net_b, image, label, cfg, it):
    """train.dual_step's (total, record, extra) on the tiny pair, without its backward pass and steps."""
    idle = NoBackward()
    return train.dual_step(net_a, net_b, idle, idle, idle, image, label, it, torch.Generator(), **cfg)


@pytest.fixture(scope='module')
def tiny_pair():
    torch.manual_seed(1)  # a seed where both untrained networks predict both classes
    kw = dict(n_channels=1, n_classes=2, n_filters=2)
    net_a, net_b = VNet(**kw), ResNet34VNet(**kw)
    image = torch.randn(4, 1, 16, 16, 16)
    label = (torch.rand(4, 16, 16, 16) > 0.6).long()
    return net_a, net_b, image, label


def grads(loss, net_a, net_b):
    """Which networks the loss's gradient reaches: a subset of {'A', 'B'}."""
    params = list(net_a.parameters()) + list(net_b.parameters())
    g = torch.autograd.grad(loss, params, allow_unused=True, retain_graph=True)
    n = len(list(net_a.parameters()))
    reached = set()
    for name, part in (('A', g[:n]), ('B', g[n:])):
        if any(x is not None and x.abs().sum() > 0 for x in part):
            reached.add(name)
    return reached


@pytest.mark.parametrize('winner', ['A', 'B'])
@pytest.mark.parametrize('weight,term,nets', [
    (None, 'sup_a', 'A'), (None, 'sup_b', 'B'),
    ('alpha_mc', 'mc_a', 'A'), ('alpha_mc', 'mc_b', 'B'),
    ('lambda_reg', 'reg', 'AB'),
    ('lambda_urps', 'urps', 'loser'),
    ('lambda_cps', 'cps_a', 'A'), ('lambda_cps', 'cps_b', 'B'),
    ('lambda_con', 'con', 'loser'),
])
def test_each_term_reaches_exactly_the_networks_method_md_says(tiny_pair, monkeypatch, winner, weight, term, nets):
    net_a, net_b, image, label = tiny_pair
    # make `winner` win the competition: the other network's Dice loss is raised by 2 (Dice is in 0..1)
    calls = []

    def biased(logits, target):
        sup, dice = supervised_loss(logits, target)
        calls.append(None)
        loser_call = 1 if winner == 'A' else 0
        return sup, dice + (2.0 if len(calls) - 1 == loser_call else 0.0)
    monkeypatch.setattr(train, 'supervised_loss', biased)

    cfg = term_cfg(**({weight: 1.0} if weight else {}))
    total, record, extra = dual_terms(net_a, net_b, image, label, cfg, 5)
    assert ('A' if extra['winner'] else 'B') == winner
    expected = {'A', 'B'} - {winner} if nets == 'loser' else set(nets)
    assert grads(record[term], net_a, net_b) == expected
    # the total is the supervised pair plus this term with its weight, nothing else
    on = {'alpha_mc': ['mc_a', 'mc_b'], 'lambda_reg': ['reg'], 'lambda_urps': ['urps'],
          'lambda_cps': ['cps_a', 'cps_b'], 'lambda_con': ['con']}.get(weight, [])
    factor = extra['con_weight'] if weight == 'lambda_con' else 1.0
    assert 0 < factor <= 1
    expect_total = record['sup_a'] + record['sup_b'] + factor * sum((record[t] for t in on), torch.zeros(()))
    assert torch.allclose(total, expect_total, rtol=1e-6, atol=1e-7)
    for t in ('mc_a', 'mc_b', 'reg', 'urps', 'cps_a', 'cps_b', 'con'):
        assert (record[t] != 0) == (t in on), t  # every term that is on is nonzero here


@pytest.mark.parametrize('ramp_unsup', [False, True])
def test_total_weighs_each_term_by_its_own_weight_and_ramps_reg_urps_and_cps_only(tiny_pair, ramp_unsup):
    """L = sup + alpha (mc_a + mc_b) + r (l_reg reg + l_urps urps + l_cps (cps_a + cps_b)) + l_con ramp con.
    Each weight is distinct and no term is 0, so a swapped, dropped or doubled weight, or a ramp put on the
    wrong term (mc, or con twice), changes the total."""
    net_a, net_b, image, label = tiny_pair
    w = dict(alpha_mc=0.3, lambda_reg=0.7, lambda_urps=1.9, lambda_cps=2.9, lambda_con=0.45)
    cfg = term_cfg(ramp_unsup=ramp_unsup, **w)
    total, r, extra = dual_terms(net_a, net_b, image, label, cfg, 3)
    ramp = math.exp(-5 * (1 - 3 / 10) ** 2)  # sigmoid ramp at iteration 3 of 10
    assert extra['con_weight'] == pytest.approx(0.45 * ramp)
    assert extra['unsup_weight'] == pytest.approx(ramp if ramp_unsup else 1.0)
    assert all(r[t] != 0 for t in ('mc_a', 'mc_b', 'reg', 'urps', 'cps_a', 'cps_b', 'con'))
    u = ramp if ramp_unsup else 1.0
    expect = (r['sup_a'] + r['sup_b'] + 0.3 * (r['mc_a'] + r['mc_b']) + 0.45 * ramp * r['con']
              + u * (0.7 * r['reg'] + 1.9 * r['urps'] + 2.9 * (r['cps_a'] + r['cps_b'])))
    assert torch.allclose(total, expect, rtol=1e-6)


@pytest.mark.parametrize('winner', ['A', 'B'])
def test_winner_picked_on_the_device_gives_the_terms_of_the_python_choice_exactly(tiny_pair, monkeypatch, winner):
    """L_urps and L_con take the winner's and the loser's tensors through torch.where on a 0-d device tensor:
    equal to the bit to the terms computed from the pair picked in Python."""
    from losses import prototype_contrastive_loss, urps_loss
    net_a, net_b, image, label = tiny_pair
    bias = {'A': (0.0, 2.0), 'B': (2.0, 0.0)}[winner]  # the other network's Dice loss raised past any real one
    calls = []

    def biased(logits, target):
        sup, dice = supervised_loss(logits, target)
        calls.append(None)
        return sup, dice + bias[len(calls) - 1]
    monkeypatch.setattr(train, 'supervised_loss', biased)
    cfg = term_cfg(lambda_urps=1.0, lambda_con=1.0, lambda_cps=1.0, cps_filter='global')
    out_a, out_b = net_a(image), net_b(image)  # no dropout: the outputs dual_step computes, bit for bit
    idle = NoBackward()
    _, record, extra = train.dual_step(net_a, net_b, idle, idle, idle, image, label, 5,
                                       torch.Generator().manual_seed(4), **cfg)
    assert bool(extra['winner']) == (winner == 'A')
    (la, fa), (lb, fb) = out_a, out_b
    pa, pb = torch.softmax(la.float(), 1), torch.softmax(lb.float(), 1)
    (teacher, student), (loser_f, loser_p) = ((pa, lb), (fb, pb)) if winner == 'A' else ((pb, la), (fa, pa))
    assert torch.equal(record['urps'], urps_loss(student.float(), teacher))
    pseudo, reliable = train.cross_pseudo_label(pa[2:], pb[2:], 20, 'global')
    con = prototype_contrastive_loss(loser_f[2:], loser_p[2:], pseudo, reliable, 0.1, 64,
                                     torch.Generator().manual_seed(4))
    assert record['con'] != 0 and torch.equal(record['con'], con)


class HostReads(torch.utils._python_dispatch.TorchDispatchMode):
    """Counts the operations that make the host wait for a CUDA device: reading a value (item, bool, int),
    and those whose output size depends on the data (nonzero, boolean-mask indexing, masked_select, bincount,
    unique). On the CPU they cost nothing, but the count is the same as on a GPU."""
    SYNCING = {'_local_scalar_dense', 'nonzero', 'masked_select', 'bincount', '_unique2', 'unique_consecutive',
               'unique_dim', 'repeat_interleave'}

    def __init__(self):
        super().__init__()
        self.reads = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = func.overloadpacket.__name__
        masks = name in ('index', 'index_put', 'index_put_') and any(
            isinstance(i, torch.Tensor) and i.dtype == torch.bool for i in (args[1] or ()) if i is not None)
        if name in self.SYNCING or masks:
            self.reads.append(name)
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize('method,cps_filter', [('dual', 'global'), ('dual', 'classwise'), ('mt', 'global'),
                                                ('sup', 'global')])
def test_a_training_step_never_waits_for_the_device(tiny_pair, monkeypatch, method, cps_filter):
    """One train_step of every method, every term but L_con on (its own file's business), reads nothing back
    from the device: the winner (was 1 read), the classwise filter (was 8), the EMA. On a GPU each read would
    stall the host until the queued kernels finish."""
    net_a, net_b, image, label = tiny_pair

    def cuda_one_hot(x, num_classes):  # F.one_hot's CUDA path: on the CPU only it reads min and max to check x
        return torch.zeros(*x.shape, num_classes, dtype=torch.long).scatter_(-1, x.unsqueeze(-1), 1)
    monkeypatch.setattr(torch.nn.functional, 'one_hot', cuda_one_hot)
    cfg = {**term_cfg(alpha_mc=0.5, lambda_reg=1.0, lambda_urps=1.0, lambda_cps=1.0), 'cps_filter': cps_filter,
           'method': method, 'ema_decay': 0.99, 'consistency': 0.1, 'base_lr': 0.01}
    nets = {'dual': {'net_a': net_a, 'net_b': net_b}, 'mt': {'net_a': net_a, 'ema': train.copy.deepcopy(net_a)},
            'sup': {'net_a': net_a}}[method]
    saved = {n: {k: v.clone() for k, v in m.state_dict().items()} for n, m in nets.items()}
    optimizers = train.build_optimizers(cfg, nets)
    with HostReads() as counter:
        train.train_step(nets, optimizers, train.grad_scaler(None), image, label, cfg, 5, torch.Generator())
    for n, m in nets.items():  # the module-scoped pair is shared with other tests
        m.load_state_dict(saved[n])
    assert counter.reads == []


def test_ema_update_equals_the_per_parameter_loop():
    torch.manual_seed(0)
    student, teacher = VNet(n_channels=1, n_classes=2, n_filters=2), VNet(n_channels=1, n_classes=2, n_filters=2)
    loop = train.copy.deepcopy(teacher)
    for it, decay in ((0, 0.99), (3, 0.99), (500, 0.99), (500, 0.9)):
        train.update_ema(teacher, student, decay, it)
        a = min(1.0 - 1.0 / (it + 1), decay)
        with torch.no_grad():
            for t, s in zip(loop.parameters(), student.parameters()):
                t.mul_(a).add_(s, alpha=1.0 - a)
        for t, u in zip(teacher.parameters(), loop.parameters()):
            assert torch.equal(t, u)
        with torch.no_grad():
            for s in student.parameters():
                s.add_(torch.randn_like(s))
    assert not torch.equal(next(teacher.parameters()), next(student.parameters()))


def test_add_noise_is_the_clipped_gaussian_of_the_mean_teacher():
    x = torch.full((200_000,), 3.0)
    y = train.add_noise(x, 0.1, torch.Generator().manual_seed(0))
    d = y - x
    assert d.abs().max() <= 0.2 + 1e-6 and abs(d.mean()) < 1e-3
    # a standard normal clipped at +-2 has std 0.9594 and 4.55 % of its mass at the clips
    assert d.std() == pytest.approx(0.09594, rel=0.01)
    assert (d.abs() > 0.2 - 1e-6).float().mean() == pytest.approx(0.0455, abs=0.002)
    assert torch.equal(y, train.add_noise(x, 0.1, torch.Generator().manual_seed(0)))


@pytest.mark.parametrize('cps_filter', ['global', 'classwise', 'none'])
def test_cps_variants_reach_exactly_their_own_network(tiny_pair, cps_filter):
    net_a, net_b, image, label = tiny_pair
    cfg = term_cfg(lambda_cps=1.0, cps_filter=cps_filter)
    total, record, extra = dual_terms(net_a, net_b, image, label, cfg, 5)
    assert grads(record['cps_a'], net_a, net_b) == {'A'} and grads(record['cps_b'], net_a, net_b) == {'B'}
    assert (record['reliable'] == 1) == (cps_filter == 'none')
    assert 0 < record['pseudo_fg'] < 1 and 0 <= record['reliable_fg'] <= 1


def test_dual_step_returns_what_its_docstring_says(tiny_pair):
    net_a, net_b, image, label = tiny_pair
    cfg = term_cfg(**{w: 1.0 for w in WEIGHTS})
    result = dual_terms(net_a, net_b, image, label, cfg, 5)
    assert isinstance(result, tuple) and len(result) == 3
    total, record, extra = result
    assert list(record) == ITERATION_COLUMNS['dual'][1:17] and record['loss'] is total
    assert all(isinstance(v, torch.Tensor) and v.dim() == 0 for v in record.values())
    assert record['label_fg'] == (label[:2] > 0).float().mean()
    assert list(extra) == ITERATION_COLUMNS['dual'][17:]
    assert extra['winner'].dtype == torch.bool and extra['winner'].dim() == 0  # read by the host only to log
    assert all(isinstance(extra[k], (int, float)) for k in ('con_weight', 'unsup_weight'))


def test_training_normalises_each_volume_like_test_py(phantoms):
    """train.py's samples are crops of normalize_intensity(volume), the function test.py applies too."""
    cfg = dict(normalize='zscore', rotflip=False, patch_size=(16, 16, 16))
    dataset = H5Dataset(phantoms, transform=train.train_transform(cfg))
    plain = H5Dataset(phantoms)
    for index in range(2):
        raw = plain[index]
        raw['image'] = 3 * raw['image'] + 5  # a scanner with another scale: normalisation undoes it
        want = Compose([RandomCrop((16, 16, 16)), ToTensor()])(
            {**raw, 'image': normalize_intensity(raw['image'], 'zscore')}, np.random.default_rng([7, 0, index]))
        got = train.train_transform(cfg)(raw, np.random.default_rng([7, 0, index]))
        assert torch.allclose(got['image'], want['image'], atol=1e-5) and torch.equal(got['label'], want['label'])
        assert torch.equal(dataset[(index, 7, 0)]['label'], want['label'])


LOSS_FUNCTIONS = {'alpha_mc': ['confident_disagreement', 'mutual_correction_loss'],
                  'lambda_reg': ['cosine_consistency_loss'], 'lambda_urps': ['urps_loss'],
                  'lambda_cps': ['cps_loss'], 'lambda_con': ['prototype_contrastive_loss']}


@pytest.mark.parametrize('off', [[w] for w in WEIGHTS] + [['lambda_cps', 'lambda_con'], list(WEIGHTS)])
def test_terms_at_weight_zero_are_not_computed(tiny_pair, monkeypatch, off):
    net_a, net_b, image, label = tiny_pair
    banned = [f for w in off for f in LOSS_FUNCTIONS[w]]
    if 'lambda_cps' in off and 'lambda_con' in off:
        banned.append('cross_pseudo_label')  # the pseudo-labels serve only terms 6 and 7
    for name in banned:
        def refuse(*a, _name=name, **k):
            raise AssertionError(f'{_name} computed at weight 0')
        monkeypatch.setattr(train, name, refuse)
    cfg = term_cfg(**{w: (0.0 if w in off else 1.0) for w in WEIGHTS})
    with torch.no_grad():
        total, record, _ = dual_terms(net_a, net_b, image, label, cfg, 5)
    assert torch.isfinite(total)


def test_pair_sup_equals_supervised_training_of_both_networks_by_hand(phantoms, tmp_path):
    steps, labelnum = 3, 4
    # the hand loop below reads the volumes as stored, in the contiguous memory format
    train.main(args(phantoms, tmp_path / 'run', *UNSUPERVISED_OFF, max_iterations=steps, labelnum=labelnum,
                    normalize='none', channels_last=0))
    trained = load(tmp_path / 'run' / 'final.pth')

    # the same seeds, the same networks, the same keyed batches, plain SGD on each supervised loss
    torch.manual_seed(SEED)  # train.py seeds once, before the networks are made
    kw = dict(n_channels=1, n_classes=2, n_filters=2, normalization='batchnorm', has_dropout=True)
    net_a, net_b = VNet(**kw).train(), ResNet34VNet(**kw).train()
    optims = [torch.optim.SGD(n.parameters(), lr=0.01, momentum=0.9, weight_decay=1e-4) for n in (net_a, net_b)]
    data = H5Dataset(phantoms, transform=Compose([RandomCrop((16, 16, 16)), ToTensor()]), num_classes=2)
    batches = TwoStreamBatchSampler(range(labelnum), range(labelnum, len(data)), 2, 1, seed=SEED)
    for keys in IterationBatchSampler(batches, SEED, steps):
        samples = [data[k] for k in keys]
        image = torch.stack([s['image'] for s in samples])
        label = torch.stack([s['label'] for s in samples])
        for net, opt in zip((net_a, net_b), optims):  # A's forward first, as train.py draws dropout
            opt.zero_grad()
            loss, _ = supervised_loss(net(image)[0][:1], label[:1])
            loss.backward()
        for opt in optims:
            opt.step()
    for name, net in (('net_a', net_a), ('net_b', net_b)):
        for k, v in net.state_dict().items():
            assert torch.equal(trained[name][k], v), (name, k)


# ----------------------------------------------------------------------------------------- resume

@pytest.mark.parametrize('num_workers', [0, 2])
def test_resume_is_bit_exact_with_any_num_workers(phantoms, reference, tmp_path, num_workers):
    if num_workers:  # the whole run with workers equals the reference run without
        full = tmp_path / 'full'
        train.main(args(phantoms, full, max_iterations=8, save_every=4, num_workers=num_workers))
        assert_same_run(load(reference / 'final.pth'), load(full / 'final.pth'))
        source = full
    else:
        source = reference
    # 4 iterations (the checkpoint at 4) + resume 4 == the uninterrupted 8
    resumed = tmp_path / 'resumed'
    resumed.mkdir()
    half = load(source / 'latest.pth')
    assert half['iteration'] == 4
    shutil.copy(source / 'latest.pth', resumed / 'latest.pth')
    shutil.copy(source / 'iterations.csv', resumed / 'iterations.csv')
    train.main(args(phantoms, resumed, '--resume', 'auto', max_iterations=8, num_workers=num_workers))
    assert 'resumed from' in (resumed / 'log.txt').read_text()
    assert_same_run(load(reference / 'final.pth'), load(resumed / 'final.pth'))
    assert read_csv(resumed / 'iterations.csv') == read_csv(reference / 'iterations.csv')


@pytest.mark.parametrize('flags', [['--channels_last', '0'], ['--amp'], ['--amp', '--channels_last', '0']],
                         ids=['contiguous', 'amp', 'amp-contiguous'])
def test_resume_is_bit_exact_in_contiguous_format_and_with_cpu_amp(phantoms, tmp_path, flags):
    full, resumed = tmp_path / 'full', tmp_path / 'resumed'
    # --amp at 48x48x32: V-Net levels down to 3x3x2, clear of the 2x2x1 and 2x2x2 at which some CPUs' bfloat16
    # weight gradients are wrong (utils/precision.py; train.py refuses --amp there)
    patch = dict(patch_size='48,48,32') if '--amp' in flags else {}
    train.main(args(phantoms, full, *flags, max_iterations=4, save_every=2, **patch))
    if '--amp' in flags:  # on the CPU --amp trains in bfloat16: not the float32 weights of the same 2 steps
        float32 = [f for f in flags if f != '--amp']
        train.main(args(phantoms, tmp_path / 'float32', *float32, max_iterations=2, rampup=4, **patch))
        assert not torch.equal(load(full / 'latest.pth')['net_a']['block_one.conv.0.weight'],
                               load(tmp_path / 'float32' / 'final.pth')['net_a']['block_one.conv.0.weight'])
    resumed.mkdir()
    shutil.copy(full / 'latest.pth', resumed / 'latest.pth')
    train.main(args(phantoms, resumed, *flags, '--resume', 'auto', max_iterations=4, **patch))
    assert_same_run(load(full / 'final.pth'), load(resumed / 'final.pth'))


@pytest.mark.parametrize('method', ['mt', 'sup'])
def test_resume_is_bit_exact_for_the_baselines(phantoms, tmp_path, method):
    full, resumed = tmp_path / 'full', tmp_path / 'resumed'
    train.main(args(phantoms, full, method=method, max_iterations=6, save_every=3))
    resumed.mkdir()
    shutil.copy(full / 'latest.pth', resumed / 'latest.pth')
    train.main(args(phantoms, resumed, '--resume', 'auto', method=method, max_iterations=6))
    assert_same_run(load(full / 'final.pth'), load(resumed / 'final.pth'))


def test_checkpoint_of_the_older_rng_layout_still_resumes_exactly(phantoms, reference, tmp_path):
    """Older versions saved one process's state as {'torch': cpu, 'cuda': [one per visible GPU]}, no scaler, and
    called --cps_filter 'filter' in the config."""
    run = tmp_path / 'run'
    run.mkdir()
    old = load(reference / 'latest.pth')
    old['rng'] = {'torch': old['rng']['ranks'][0]['torch']}
    del old['scaler']
    old['config']['filter'] = old['config'].pop('cps_filter')
    save_checkpoint(old, run / 'latest.pth')
    train.main(args(phantoms, run, '--resume', 'auto', max_iterations=8))
    assert_same_run(load(reference / 'final.pth'), load(run / 'final.pth'))


def test_gradient_scaler_state_is_saved_and_restored(phantoms, tmp_path, monkeypatch):
    # train.py's float16 scaler (CUDA) as an enabled CPU scaler, its scale doubling every 3 finite steps
    monkeypatch.setattr(train, 'grad_scaler', lambda amp: torch.amp.GradScaler('cpu', init_scale=2.0 ** 10,
                                                                                growth_interval=3))
    full, resumed = tmp_path / 'full', tmp_path / 'resumed'
    train.main(args(phantoms, full, method='sup', max_iterations=8, save_every=4))
    assert load(full / 'latest.pth')['scaler']['scale'] == 2.0 ** 11  # 4 steps: one doubling, 1 step towards next
    resumed.mkdir()
    shutil.copy(full / 'latest.pth', resumed / 'latest.pth')
    train.main(args(phantoms, resumed, '--resume', 'auto', method='sup', max_iterations=8))
    scaler = load(resumed / 'final.pth')['scaler']
    assert scaler['scale'] == 2.0 ** (10 + 8 // 3) and scaler['_growth_tracker'] == 8 % 3  # as if uninterrupted
    assert_same_run(load(full / 'final.pth'), load(resumed / 'final.pth'))


def test_resume_auto_on_a_finished_run_has_nothing_to_do(phantoms, reference, tmp_path, capsys):
    run = tmp_path / 'run'
    run.mkdir()
    shutil.copy(reference / 'final.pth', run / 'final.pth')
    shutil.copy(reference / 'latest.pth', run / 'latest.pth')
    train.main(args(phantoms, run, '--resume', 'auto', max_iterations=8))
    assert 'nothing to do' in capsys.readouterr().out
    assert sorted(p.name for p in run.iterdir()) == ['final.pth', 'latest.pth']  # nothing written


def test_run_folder_with_checkpoints_is_refused_without_resume(phantoms, reference, tmp_path):
    run = tmp_path / 'run'
    run.mkdir()
    shutil.copy(reference / 'latest.pth', run / 'latest.pth')
    before = (run / 'latest.pth').read_bytes()
    with pytest.raises(SystemExit) as e:
        run_cli(train.main, args(phantoms, run, max_iterations=8))
    assert 'already holds checkpoints' in str(e.value.code) and '--resume auto' in str(e.value.code)
    assert (run / 'latest.pth').read_bytes() == before
    assert sorted(p.name for p in run.iterdir()) == ['latest.pth']


# Flags that change how a run runs, not what it computes: a resume may change them (written out here).
RUN_CONTROL = {'root_path', 'pattern', 'exp', 'snapshot_path', 'gpu', 'debug', 'num_workers', 'save_every',
               'log_every', 'resume', 'val_list', 'val_every', 'tensorboard', 'image_every'}


def test_a_resume_must_match_every_flag_but_run_control():
    parser = train.build_parser()
    flags = set(vars(parser.parse_args([])))
    assert RUN_CONTROL <= flags
    keys = run_keys(parser, train.RUN_CONTROL)
    assert sorted(keys) == sorted(flags - RUN_CONTROL)
    for flag in ('normalize', 'cps_filter', 'ramp_unsup', *WEIGHTS, 'seed', 'uncertain_percent', 'conf_thresh',
                 'contrast_tau', 'contrast_samples', 'ema_decay', 'consistency',
                 'amp', 'deterministic', 'sync_bn', 'channels_last', 'tf32'):  # each changes the numbers
        assert flag in keys, flag
    # refusing a changed --cps_filter / --lambda_cps: tests/test_robustness.py, resume_other_*


def test_resume_with_other_run_control_flags_is_the_same_run(phantoms, reference, tmp_path):
    run = tmp_path / 'run'
    run.mkdir()
    shutil.copy(reference / 'latest.pth', run / 'latest.pth')
    train.main(args(phantoms, run, '--resume', 'auto', max_iterations=8, log_every=3, save_every=2))
    ref, got = load(reference / 'final.pth'), load(run / 'final.pth')
    for key in ('net_a', 'net_b', 'optimizer_a', 'optimizer_b', 'rng'):
        assert_same_run(ref[key], got[key], key)
    assert got['config']['log_every'] == 3


def test_a_new_logged_value_gets_its_csv_column(phantoms, tmp_path, monkeypatch):
    real = train.dual_step

    def with_new_term(*a, **k):
        total, record, extra = real(*a, **k)
        return total, {**record, 'new_term': 2 * record['loss']}, {**extra, 'new_extra': 'x'}
    monkeypatch.setattr(train, 'dual_step', with_new_term)
    run = tmp_path / 'run'
    train.main(args(phantoms, run, max_iterations=2))
    rows = read_csv(run / 'iterations.csv')
    columns = ITERATION_COLUMNS['dual']
    record_end = columns.index('reliable_fg') + 1  # the record's columns, then the extra values
    assert list(rows[0]) == ['iteration', *columns[:record_end], 'new_term', *columns[record_end:], 'new_extra']
    assert [r['new_extra'] for r in rows] == ['x', 'x']
    assert [float(r['new_term']) for r in rows] == pytest.approx([2 * float(r['loss']) for r in rows], rel=1e-5)
    assert 'new_term ' in (run / 'log.txt').read_text()


def test_iteration_csv_resumed_keeps_the_rows_before_the_checkpoint(tmp_path):
    path = tmp_path / 'iterations.csv'
    table = IterationCSV(path)
    for it in range(4):
        table.write(it, {'lr': 0.01, 'loss': 1.0 / (it + 1), 'old': 'o'})
    table.close()
    path.write_text(path.read_text() + '4,0.01')  # a row cut short by a kill
    table = IterationCSV(path, start_iteration=2)
    assert path.read_text().count('\n') == 5  # left as it was until the first new row
    table.write(2, {'lr': 0.001, 'loss': 0.25, 'new': 7})
    table.close()
    assert read_csv(path) == [
        {'iteration': '0', 'lr': '0.01', 'loss': '1', 'new': '', 'old': 'o'},
        {'iteration': '1', 'lr': '0.01', 'loss': '0.5', 'new': '', 'old': 'o'},
        {'iteration': '2', 'lr': '0.001', 'loss': '0.25', 'new': '7', 'old': ''}]
    assert path.read_text().splitlines()[0] == 'iteration,lr,loss,new,old'


# ------------------------------------------------------------------------------------ TensorBoard

def tensorboard_events(run):
    """The run's TensorBoard folder as TensorBoard reads it (what a restart purged left out)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    events = EventAccumulator(str(run / 'tensorboard'), size_guidance={'scalars': 0, 'images': 0})
    events.Reload()
    return events


def test_tensorboard_holds_the_csv_values_and_a_resume_adds_no_duplicate_step(phantoms, reference, tmp_path):
    require_extra('tensorboard')
    run = tmp_path / 'run'
    flags = dict(max_iterations=8, save_every=4, image_every=4)
    train.main(args(phantoms, run, '--tensorboard', **flags))
    ref, got = load(reference / 'final.pth'), load(run / 'final.pth')
    for key in ('net_a', 'net_b', 'optimizer_a', 'optimizer_b', 'rng'):  # logging changes no step of training
        assert_same_run(ref[key], got[key], key)

    rows = read_csv(run / 'iterations.csv')
    events = tensorboard_events(run)
    assert sorted(events.Tags()['scalars']) == sorted(TERMS['dual'])
    first = {}
    for tag in TERMS['dual']:
        first[tag] = [(e.step, e.value) for e in events.Scalars(tag)]
        assert [step for step, _ in first[tag]] == list(range(8)), tag
        want = [float(r[tag] == 'A') if tag == 'winner' else float(r[tag]) for r in rows]
        assert [v for _, v in first[tag]] == pytest.approx(want, rel=1e-5, abs=1e-7), tag
    pictures = {tag.split(' ')[0]: events.Images(tag) for tag in events.Tags()['images']}
    assert sorted(pictures) == ['slices/labeled', 'slices/unlabeled']
    for kind, panels in (('slices/labeled', 4), ('slices/unlabeled', 3)):  # 16x16 slices with 2-pixel gaps
        assert [(p.step, p.width, p.height) for p in pictures[kind]] == [(3, 18 * panels - 2, 16),
                                                                          (7, 18 * panels - 2, 16)]

    # killed after iteration 6: latest.pth at 4 is kept, the curves went on; the resumed run logs 4..7 again
    (run / 'final.pth').unlink()
    train.main(args(phantoms, run, '--tensorboard', '--resume', 'auto', **flags))
    assert len(list((run / 'tensorboard').iterdir())) == 2  # a second event file in the same folder
    events = tensorboard_events(run)
    for tag in TERMS['dual']:
        assert [(e.step, e.value) for e in events.Scalars(tag)] == first[tag], tag  # no duplicate, no jump
    for tag in events.Tags()['images']:
        assert [p.step for p in events.Images(tag)] == [3, 7]


def test_tensorboard_missing_is_one_line(phantoms, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, 'torch.utils.tensorboard', None)  # as if tensorboard were not installed
    with pytest.raises(SystemExit) as stop:
        run_cli(train.main, args(phantoms, tmp_path / 'run', '--tensorboard'))
    assert stop.value.code == 'error: --tensorboard needs the package tensorboard: pip install tensorboard'
    assert not (tmp_path / 'run').exists()


# ------------------------------------------------------------------------------------ distributed

def torchrun(*argv):
    cmd = [sys.executable, '-m', 'torch.distributed.run', '--standalone', '--nproc_per_node', '2', 'train.py', *argv]
    proc = subprocess.run(cmd, cwd=REPO, env={**os.environ, 'OMP_NUM_THREADS': '1'}, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]


def test_torchrun_two_processes_gloo_and_its_exact_resume(phantoms, tmp_path, capsys):
    run, resumed, steps = tmp_path / 'run', tmp_path / 'resumed', 4
    flags = dict(max_iterations=steps, labelnum=4, batch_size=2, labeled_bs=1, image_every=2, save_every=2)
    torchrun(*args(phantoms, run, *TENSORBOARD, **flags))
    # which volumes each rank trains on: tests/test_samplers.py, test_rank_slices_as_train_py_draws_them

    # only rank 0 writes the run's files: one set, each line once
    files = ['config.json', 'final.pth', 'iterations.csv', 'latest.pth', 'log.txt']
    assert sorted(p.name for p in run.iterdir()) == files + (['tensorboard'] if TENSORBOARD else [])
    if TENSORBOARD:
        assert len(list((run / 'tensorboard').iterdir())) == 1
        assert [e.step for e in tensorboard_events(run).Scalars('loss')] == list(range(steps))
    log = (run / 'log.txt').read_text()
    assert log.count('world size 2') == 1 and log.count('finished') == 1
    assert [int(r['iteration']) for r in read_csv(run / 'iterations.csv')] == list(range(steps))
    final = load(run / 'final.pth')
    assert final['iteration'] == steps
    cpu_states = [r['torch'] for r in final['rng']['ranks']]  # each rank's own generator: its own dropout masks
    assert len(cpu_states) == 2 and not torch.equal(*cpu_states)

    # stopped at the checkpoint of iteration 2 and resumed: every tensor as in the uninterrupted run
    resumed.mkdir()
    shutil.copy(run / 'latest.pth', resumed / 'latest.pth')
    torchrun(*args(phantoms, resumed, *TENSORBOARD, '--resume', 'auto', **flags))
    assert 'resumed from' in (resumed / 'log.txt').read_text()
    assert_same_run(final, load(resumed / 'final.pth'))

    # fewer processes go on from rank 0's state, with a smaller global batch, and say so; more are refused
    train.main(args(phantoms, tmp_path / 'fewer', '--resume', str(run / 'latest.pth'), **flags))
    warning = capsys.readouterr().err
    assert 'written by 2 processes, this run has 1' in warning and 'global batch of 2 volumes instead of 4' in warning
    fewer = load(tmp_path / 'fewer' / 'final.pth')
    assert fewer['iteration'] == steps and len(fewer['rng']['ranks']) == 1
    cfg = train.parse_args(args(phantoms, tmp_path / 'more', **flags))
    cfg['channels_last'] = fewer['config']['channels_last']  # as train.py resolves it on the CPU
    nets = train.build_networks(cfg, torch.device('cpu'))
    with pytest.raises(CheckpointError, match='written by 1 process.*this run has 2.*at most 1'):
        restore(tmp_path / 'fewer' / 'final.pth', cfg, run_keys(train.build_parser(), train.RUN_CONTROL), nets,
                train.build_optimizers(cfg, nets), train.grad_scaler(None),
                SimpleNamespace(rank=1, world_size=2, is_main=False, device=torch.device('cpu')))


def test_num_classes_comes_from_the_import_recipe_and_a_contradicting_flag_is_refused(tmp_path):
    (tmp_path / 'dataset.json').write_text(json.dumps({'format_version': 1, 'num_classes': 3}))
    folder = ['--dataset', 'h5', '--root_path', str(tmp_path)]
    cfg = train.parse_args(folder)
    assert cfg['num_classes'] == 3 and cfg['recipe']['num_classes'] == 3
    assert train.parse_args(folder + ['--num_classes', '3'])['num_classes'] == 3
    with pytest.raises(UsageError, match=r'--num_classes 2, but .*dataset.json says the import made 3 classes'):
        train.parse_args(folder + ['--num_classes', '2'])
    assert train.parse_args(['--dataset', 'h5', '--root_path', str(tmp_path / 'none')])['num_classes'] == 2
    (tmp_path / 'dataset.json').write_text('{not json')
    with pytest.raises(UsageError, match='dataset.json: not a readable import recipe'):
        train.parse_args(folder)


def test_a_renamed_flag_is_refused_naming_its_new_name():
    with pytest.raises(UsageError, match='--filter is now called --cps_filter'):
        train.parse_args(['--filter', 'classwise'])


# --------------------------------------------------------------------------------- the paper by default

def papers_settings():
    """{flag: value} from the table under "## The papers' settings" in docs/method.md."""
    text = (REPO / 'docs' / 'method.md').read_text()
    section = text.split("## The papers' settings", 1)[1].split('\n## ', 1)[0]
    rows = [line.split('|')[1:3] for line in section.splitlines() if line.startswith('| `--')]
    return {flag.strip().strip('`'): value.strip() for flag, value in rows}


def test_no_flags_train_the_papers_settings_of_docs_method_md():
    """With no flags, every row of docs/method.md's table of the papers' settings is what train.py resolves:
    a default moved away from the paper (say --cps_filter classwise or --ramp_unsup 1 again) fails here."""
    table = papers_settings()
    assert {'--cps_filter', '--ramp_unsup', '--lambda_urps', '--lambda_cps', '--max_iterations'} <= set(table)
    defaults = train.parse_args([])
    stored = {action.dest: action for action in train.build_parser()._actions}
    for flag, value in table.items():
        dest = flag[2:]
        if value in ('on', 'off'):  # a switch
            assert stored[dest].const is True and defaults[dest] is (value == 'on'), flag
        else:
            assert defaults[dest] == train.parse_args([flag, value])[dest], f'{flag}: default {defaults[dest]}'
    assert defaults['dataset'] == 'la' and defaults['method'] == 'dual'


def test_our_options_are_marked_ours_in_help():
    text = ' '.join(train.build_parser().format_help().split())
    assert 'per predicted class (classwise, ours) or no filter (none, ours)' in text
    assert "1: they ramp in with term 7's sigmoid (ours" in text
    assert 'a data step of ours' in text


# --------------------------------------------------------------------------------- a collapsing run says so

def test_collapse_watch_warns_once_when_the_window_mean_stays_far_below():
    watch = CollapseWatch(window=3, ratio=0.25)
    # a full window is needed; one low value in a healthy window is not a collapse
    assert [watch.update(p, 0.2) for p in (0.0, 0.0, 0.2)] == [None, None, None]  # mean 0.067 >= 0.05
    assert watch.update(0.0, 0.2) is None  # window (0, 0.2, 0): mean 0.067
    assert watch.update(0.0, 0.2) is None  # window (0.2, 0, 0)
    message = watch.update(0.0, 0.2)  # window (0, 0, 0): mean 0 < 0.05
    assert message is not None and '--ramp_unsup 1' in message and '0.0 %' in message and '20.0 %' in message
    assert all(watch.update(0.0, 0.2) is None for _ in range(5))  # once per run


def force_background(monkeypatch):
    """Both networks start predicting background everywhere: a foreground bias of -20 on their output conv."""
    real = train.build_networks

    def biased(cfg, device):
        nets = real(cfg, device)
        for net in nets.values():
            out = [m for m in net.modules() if isinstance(m, torch.nn.Conv3d)][-1]
            with torch.no_grad():
                out.bias[1:] -= 20.0
        return nets
    monkeypatch.setattr(train, 'build_networks', biased)


@pytest.mark.parametrize('collapse', [True, False])
def test_a_collapsing_run_warns_once_and_a_healthy_one_not(phantoms, tmp_path, monkeypatch, capsys, collapse):
    """20 iterations at lr 0, window 5: a pair held at background warns exactly once, naming --ramp_unsup 1, in
    log.txt and on the console; the same pair from its untouched initialisation, whose pseudo-labels mark about
    as much foreground as the labels, does not warn."""
    if collapse:
        force_background(monkeypatch)
    run = tmp_path / 'run'
    train.main(args(phantoms, run, max_iterations=20, base_lr=0.0))
    rows = read_csv(run / 'iterations.csv')
    pseudo = np.mean([float(r['pseudo_fg']) for r in rows[-5:]])
    labeled = np.mean([float(r['label_fg']) for r in rows[-5:]])
    log = (run / 'log.txt').read_text()
    console = capsys.readouterr().err
    if collapse:
        assert pseudo == 0 and labeled > 0
        assert log.count('warning: ') == 1 and 'mostly background' in log and '--ramp_unsup 1' in log
        assert console.count('--ramp_unsup 1') == 1
    else:
        assert pseudo >= 0.25 * labeled  # the premise: these pseudo-labels are not collapsing
        assert 'warning' not in log and '--ramp_unsup' not in console


# --------------------------------------------------------------------------------- best.pth and resume

def test_best_pth_survives_a_resume_when_later_validations_are_worse(phantoms, tmp_path, monkeypatch):
    """Validation Dice 0.9 at iteration 2, then 0.5, the run stops after its checkpoint at 4; resumed, it
    validates 0.6 and 0.7. best.pth must keep the iteration-2 model, and every checkpoint carries the best
    score (a resume that forgot it would write best.pth again at iteration 6)."""
    scores = [0.9, 0.5, 'stop']

    def scripted(*a, **k):
        score = scores.pop(0)
        if score == 'stop':
            raise KeyboardInterrupt
        return score
    monkeypatch.setattr(train, 'validate', scripted)
    run = tmp_path / 'run'
    flags = dict(max_iterations=8, save_every=2, val_every=2)
    with pytest.raises(KeyboardInterrupt):
        train.main(args(phantoms, run, '--val_list', str(phantoms / 'test.list'), **flags))
    best_before = load(run / 'best.pth')
    assert best_before['iteration'] == 2 and best_before['best'] == {'dice': 0.9, 'iteration': 2}
    assert load(run / 'latest.pth')['iteration'] == 4 and load(run / 'latest.pth')['best']['dice'] == 0.9

    scores[:] = [0.6, 0.7]
    train.main(args(phantoms, run, '--val_list', str(phantoms / 'test.list'), '--resume', 'auto', **flags))
    best = load(run / 'best.pth')
    assert best['iteration'] == 2 and best['best'] == {'dice': 0.9, 'iteration': 2}
    assert_same_run(best_before['net_a'], best['net_a'])
    assert load(run / 'final.pth')['best'] == {'dice': 0.9, 'iteration': 2}
