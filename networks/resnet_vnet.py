"""V-Net decoder on a 3D ResNet-34 encoder (network B of the pair).

Encoder, with f = n_filters: 7x7x7 stride-1 stem conv to f channels + norm + ReLU (no max-pool),
then BasicBlock stages [3, 4, 6, 3] at 2f/4f/8f/16f channels, each starting with stride 2.
The stem and stage outputs are the five skips, at the widths and sizes of V-Net's encoder,
so the decoder (vnet.VNetDecoderNet) is the same code. Shapes as in vnet.py.

Not copyable alone: it imports the decoder from vnet.py, so a fork copies vnet.py beside it (the two files in
one package, for the relative import).
"""
from torch import nn

from .vnet import VNetDecoderNet, check_normalization, init_weights, make_norm


def _norm(normalization, channels):
    # An Identity keeps the attribute names (bn1, bn2) fixed whatever the normalization.
    norm = make_norm(normalization, channels)
    return nn.Identity() if norm is None else norm


class BasicBlock(nn.Module):
    """relu(norm(conv3(relu(norm(conv3_s(x))))) + shortcut(x)); (B, c_in, *S) -> (B, c_out, *S/s).

    shortcut = 1x1x1 stride-s conv + norm when the shape changes, else identity.
    """

    def __init__(self, c_in, c_out, stride, normalization):
        super().__init__()
        self.conv1 = nn.Conv3d(c_in, c_out, kernel_size=3, stride=stride, padding=1, bias=False)
        self.bn1 = _norm(normalization, c_out)
        self.conv2 = nn.Conv3d(c_out, c_out, kernel_size=3, padding=1, bias=False)
        self.bn2 = _norm(normalization, c_out)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = None
        if stride != 1 or c_in != c_out:
            self.downsample = nn.Sequential(
                nn.Conv3d(c_in, c_out, kernel_size=1, stride=stride, bias=False),
                _norm(normalization, c_out))

    def forward(self, x):
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        return self.relu(self.bn2(self.conv2(out)) + identity)


class ResNet34Encoder(nn.Module):
    """(B, n_channels, *S) -> [stem (B, f, *S), layer1 (B, 2f, *S/2), ..., layer4 (B, 16f, *S/16)]."""

    def __init__(self, n_channels, n_filters, normalization, depths=(3, 4, 6, 3)):
        super().__init__()
        f = n_filters
        self.conv1 = nn.Conv3d(n_channels, f, kernel_size=7, padding=3, bias=False)
        self.bn1 = _norm(normalization, f)
        self.relu = nn.ReLU(inplace=True)
        c_in = f
        for i, depth in enumerate(depths):
            c_out = f * 2 ** (i + 1)
            blocks = [BasicBlock(c_in if j == 0 else c_out, c_out, 2 if j == 0 else 1, normalization)
                      for j in range(depth)]
            setattr(self, f'layer{i + 1}', nn.Sequential(*blocks))
            c_in = c_out

    def forward(self, x):
        x = self.relu(self.bn1(self.conv1(x)))
        skips = [x]
        for layer in (self.layer1, self.layer2, self.layer3, self.layer4):
            skips.append(layer(skips[-1]))
        return skips


class ResNet34VNet(VNetDecoderNet):
    """ResNet-34 encoder (keys resnet_encoder.*) under the V-Net decoder; same API as VNet."""

    def __init__(self, n_channels=1, n_classes=2, n_filters=16, normalization='batchnorm',
                 has_dropout=False):
        super().__init__()
        check_normalization(normalization)
        self.resnet_encoder = ResNet34Encoder(n_channels, n_filters, normalization)
        self._build_decoder(n_classes, n_filters, normalization, has_dropout)
        init_weights(self)
        # Each residual branch starts at zero, so every block starts as (relu of) its shortcut.
        for m in self.modules():
            if isinstance(m, BasicBlock) and getattr(m.bn2, 'weight', None) is not None:
                nn.init.zeros_(m.bn2.weight)

    def encode(self, x):
        return self.resnet_encoder(x)
