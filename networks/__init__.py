"""The V-Net pair: VNet (network A) and ResNet34VNet (network B)."""
from .resnet_vnet import ResNet34VNet
from .vnet import VNet

_NETWORKS = {'vnet': VNet, 'resnet34': ResNet34VNet}
# The pair by role; a train.py checkpoint stores network r as 'net_' + r.
PAIR = {'a': 'vnet', 'b': 'resnet34'}


def build_network(name, **kw):
    """build_network('vnet' | 'resnet34', n_channels=..., n_classes=..., ...) -> nn.Module."""
    if name not in _NETWORKS:
        raise ValueError(f"unknown network {name!r}; valid names: {sorted(_NETWORKS)}")
    return _NETWORKS[name](**kw)


def build_net(which, num_classes, n_filters, has_dropout=True):
    """Network A (V-Net) or B (ResNet-34 V-Net) of the pair: one input channel, BatchNorm, as published. Dropout is
    on because the released training uses it; eval() turns it off, and the state dict does not depend on it, so
    one builder serves training, evaluation and published checkpoints."""
    return build_network(PAIR[which], n_channels=1, n_classes=num_classes, n_filters=n_filters,
                         normalization='batchnorm', has_dropout=has_dropout)


__all__ = ['VNet', 'ResNet34VNet', 'PAIR', 'build_network', 'build_net']
