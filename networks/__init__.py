"""The V-Net pair: VNet (network A) and ResNet34VNet (network B)."""
from .resnet_vnet import ResNet34VNet
from .vnet import VNet

_NETWORKS = {'vnet': VNet, 'resnet34': ResNet34VNet}


def build_network(name, **kw):
    """build_network('vnet' | 'resnet34', n_channels=..., n_classes=..., ...) -> nn.Module."""
    if name not in _NETWORKS:
        raise ValueError(f"unknown network {name!r}; valid names: {sorted(_NETWORKS)}")
    return _NETWORKS[name](**kw)


__all__ = ['VNet', 'ResNet34VNet', 'build_network']
