"""The V-Net pair: published keys and outputs, shapes, errors, dropout, init."""
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from networks import ResNet34VNet, VNet, build_network
from networks.resnet_vnet import BasicBlock

# The published networks' key lists and outputs (see fixtures/FORWARD_FIXTURE.md), kept with the tests so that
# every clone proves it loads their state dicts and computes what they compute.
FIXTURES = Path(__file__).resolve().parent / 'fixtures'
NETWORKS = {'vnet': (VNet, 'vnet_state_dict.txt', 9_448_866),
            'resnet34': (ResNet34VNet, 'resnet34_vnet_state_dict.txt', 17_930_354)}
NORMALIZATIONS = ('batchnorm', 'groupnorm', 'instancenorm', 'none')


def _reference_keys(filename):
    """[(key, shape string)] from a reference list; shape '' for 0-dim tensors."""
    lines = (FIXTURES / filename).read_text().splitlines()
    return [tuple(line.split('\t')) for line in lines if line.strip() and not line.startswith('#')]


def _fixture_weights(model):
    """The recipe of fixtures/FORWARD_FIXTURE.md: weights depend only on state_dict order."""
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, t in model.state_dict().items():
            if not t.is_floating_point():
                continue
            u = torch.rand(t.shape, generator=g) * 2 - 1
            if t.dim() >= 2:
                t.copy_(u / math.sqrt(t[0].numel()))
            elif name.endswith('running_var'):
                t.copy_(1 + (u + 1) / 2)
            elif name.endswith('weight'):
                t.copy_(1 + 0.1 * u)
            else:
                t.copy_(0.1 * u)


@pytest.mark.parametrize('name', NETWORKS)
def test_state_dict_matches_reference(name):
    """Bug caught: a layer renamed, reordered or resized, after which the published checkpoints no longer load."""
    cls, filename, _ = NETWORKS[name]
    ours = [(k, 'x'.join(map(str, t.shape))) for k, t in cls().state_dict().items()]
    assert ours == _reference_keys(filename)


@pytest.mark.parametrize('name', NETWORKS)
def test_parameter_count(name):
    cls, _, expected = NETWORKS[name]
    assert sum(p.numel() for p in cls().parameters() if p.requires_grad) == expected


@pytest.mark.parametrize('name', NETWORKS)
def test_forward_fixture(name):
    """Bug caught: the same keys computing something else (the full-resolution skip connection halved, padding,
    activation order, the feature tap): the published outputs are no longer reproduced. Not caught: the deepest
    skip (x4) halved, to which these weights' outputs are insensitive (measured: 1e-7)."""
    fixture = np.load(FIXTURES / 'forward_fixture.npz')
    model = NETWORKS[name][0](n_channels=1, n_classes=2, n_filters=16, has_dropout=True)
    _fixture_weights(model)
    model.eval()
    with torch.no_grad():
        logits, features = model(torch.from_numpy(fixture['input']))
    for ours, key in ((logits, f'{name}_logits'), (features, f'{name}_features')):
        expected = torch.from_numpy(fixture[key])
        assert ours.shape == expected.shape, key
        assert torch.allclose(ours, expected, rtol=1e-4, atol=1e-5), key


@pytest.mark.parametrize('normalization', NORMALIZATIONS)
@pytest.mark.parametrize('name', NETWORKS)
def test_forward_shapes_non_cubic(name, normalization):
    model = build_network(name, n_channels=2, n_classes=3, n_filters=4,
                          normalization=normalization, has_dropout=True)
    logits, features = model(torch.randn(2, 2, 16, 32, 48))
    assert logits.shape == (2, 3, 16, 32, 48)
    assert features.shape == (2, 4, 16, 32, 48)
    # features are exactly what the 1x1x1 output conv sees
    assert torch.allclose(model.out_conv(features), logits, atol=1e-6)


@pytest.mark.parametrize('name', NETWORKS)
def test_spatial_size_not_divisible_by_16(name):
    model = build_network(name, n_filters=2)
    with pytest.raises(ValueError, match=r'\(1, 1, 16, 24, 16\).*divisible by 16'):
        model(torch.randn(1, 1, 16, 24, 16))


@pytest.mark.parametrize('name', NETWORKS)
def test_bad_normalization(name):
    with pytest.raises(ValueError, match='layernorm'):
        build_network(name, n_filters=2, normalization='layernorm')


def test_build_network_names():
    assert type(build_network('vnet', n_filters=2)) is VNet
    assert type(build_network('resnet34', n_filters=2)) is ResNet34VNet
    with pytest.raises(ValueError, match=r"'resnet34'.*'vnet'"):
        build_network('unet')


@pytest.mark.parametrize('name', NETWORKS)
def test_dropout_only_in_train_mode(name):
    x = torch.randn(2, 1, 16, 16, 16)
    model = build_network(name, n_filters=4, has_dropout=True)
    torch.manual_seed(0)
    with torch.no_grad():
        model.train()
        assert not torch.equal(model(x)[1], model(x)[1])
        model.eval()
        assert torch.equal(model(x)[1], model(x)[1])
        # without dropout, train mode is deterministic too (BatchNorm uses batch statistics)
        plain = build_network(name, n_filters=4, has_dropout=False).train()
        assert torch.equal(plain(x)[1], plain(x)[1])


@pytest.mark.parametrize('name', NETWORKS)
def test_dropout_after_bottleneck(name):
    # Dropout3d also acts on the bottleneck x5: each channel the decoder gets is 0 or 2 * x5.
    model = build_network(name, n_filters=4, has_dropout=True).train()
    seen = []
    model.block_five_up.register_forward_pre_hook(lambda m, args: seen.append(args[0]))
    x = torch.randn(2, 1, 32, 32, 32)
    torch.manual_seed(0)
    with torch.no_grad():
        x5 = model.encode(x)[4]
        model(x)
    dropped = seen[0].flatten(2)
    x5 = x5.flatten(2)
    zeroed = (dropped == 0).all(-1)
    assert torch.allclose(dropped[~zeroed], 2 * x5[~zeroed])
    assert (zeroed & (x5 != 0).any(-1)).any()


@pytest.mark.parametrize('name', NETWORKS)
def test_init(name):
    model = build_network(name, n_filters=4)
    last_bns = {id(m.bn2) for m in model.modules() if isinstance(m, BasicBlock)}
    assert len(last_bns) == (16 if name == 'resnet34' else 0)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm3d):
            assert torch.all(m.weight == (0 if id(m) in last_bns else 1))
            assert torch.all(m.bias == 0)
    # kaiming_normal_ (fan_in, gain sqrt(2)) on the widest conv: std close to sqrt(2 / fan_in)
    w = model.block_six.conv[0].weight
    assert abs(w.std().item() / math.sqrt(2 / w[0].numel()) - 1) < 0.1
