"""V-Net of the UA-MT lineage, and the decoder it shares with ResNet34VNet.

Shapes: input (B, n_channels, X, Y, Z) with X, Y, Z divisible by 16 (four 2x downsamplings);
logits (B, n_classes, X, Y, Z); features (B, n_filters, X, Y, Z).
Module names mirror the published code so its checkpoints load unchanged (keys such as
block_one.conv.0.weight); the published modules are plain conv stacks, not residual.
"""
import math

from torch import nn

NORMALIZATIONS = ('batchnorm', 'groupnorm', 'instancenorm', 'none')


def check_normalization(normalization):
    if normalization not in NORMALIZATIONS:
        raise ValueError(f"normalization={normalization!r} is not one of {NORMALIZATIONS}")


def make_norm(normalization, channels):
    """Norm layer for `channels` channels, or None for 'none'.

    GroupNorm uses 16 groups as published; gcd(16, channels) keeps small test widths legal
    and equals 16 for every width of the default n_filters=16.
    """
    check_normalization(normalization)
    if normalization == 'batchnorm':
        return nn.BatchNorm3d(channels)
    if normalization == 'groupnorm':
        return nn.GroupNorm(math.gcd(16, channels), channels)
    if normalization == 'instancenorm':
        return nn.InstanceNorm3d(channels)
    return None


def _conv_norm_relu(conv, channels, normalization):
    """[conv, norm?, relu] -- the layer order, and hence the Sequential indices, of the published code."""
    norm = make_norm(normalization, channels)
    return [conv] + ([norm] if norm is not None else []) + [nn.ReLU(inplace=True)]


class ConvBlock(nn.Module):
    """n_stages x (3x3x3 conv, padding 1 -> norm -> ReLU); (B, c_in, *S) -> (B, c_out, *S)."""

    def __init__(self, n_stages, c_in, c_out, normalization='batchnorm'):
        super().__init__()
        ops = []
        for i in range(n_stages):
            conv = nn.Conv3d(c_in if i == 0 else c_out, c_out, kernel_size=3, padding=1)
            ops += _conv_norm_relu(conv, c_out, normalization)
        self.conv = nn.Sequential(*ops)

    def forward(self, x):
        return self.conv(x)


class DownsamplingConvBlock(nn.Module):
    """2x2x2 stride-2 conv -> norm -> ReLU; (B, c_in, X, Y, Z) -> (B, c_out, X/2, Y/2, Z/2)."""

    def __init__(self, c_in, c_out, normalization='batchnorm'):
        super().__init__()
        conv = nn.Conv3d(c_in, c_out, kernel_size=2, stride=2)
        self.conv = nn.Sequential(*_conv_norm_relu(conv, c_out, normalization))

    def forward(self, x):
        return self.conv(x)


class UpsamplingDeconvBlock(nn.Module):
    """2x2x2 stride-2 transposed conv -> norm -> ReLU; (B, c_in, *S) -> (B, c_out, *2S)."""

    def __init__(self, c_in, c_out, normalization='batchnorm'):
        super().__init__()
        conv = nn.ConvTranspose3d(c_in, c_out, kernel_size=2, stride=2)
        self.conv = nn.Sequential(*_conv_norm_relu(conv, c_out, normalization))

    def forward(self, x):
        return self.conv(x)


def init_weights(module):
    """kaiming_normal_ on (transposed) conv weights, BatchNorm weight 1 and bias 0, as published."""
    for m in module.modules():
        if isinstance(m, (nn.Conv3d, nn.ConvTranspose3d)):
            nn.init.kaiming_normal_(m.weight)
        elif isinstance(m, nn.BatchNorm3d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


class VNetDecoderNet(nn.Module):
    """Base class: the V-Net decoder and the forward pass shared by VNet and ResNet34VNet.

    A subclass builds its encoder first (so encoder keys precede decoder keys in the
    state_dict, as published), then calls `_build_decoder`, and implements
    encode(x) -> [x1, x2, x3, x4, x5] with x_k of shape (B, n_filters * 2**(k-1), *S / 2**(k-1)).
    Decoder blocks are attributes of the network itself (block_five_up, ..., out_conv) rather
    than of a sub-module, because the published keys have no prefix.
    """

    def _build_decoder(self, n_classes, n_filters, normalization, has_dropout):
        f, norm = n_filters, normalization
        self.block_five_up = UpsamplingDeconvBlock(16 * f, 8 * f, norm)
        self.block_six = ConvBlock(3, 8 * f, 8 * f, norm)
        self.block_six_up = UpsamplingDeconvBlock(8 * f, 4 * f, norm)
        self.block_seven = ConvBlock(3, 4 * f, 4 * f, norm)
        self.block_seven_up = UpsamplingDeconvBlock(4 * f, 2 * f, norm)
        self.block_eight = ConvBlock(2, 2 * f, 2 * f, norm)
        self.block_eight_up = UpsamplingDeconvBlock(2 * f, f, norm)
        self.block_nine = ConvBlock(1, f, f, norm)
        self.out_conv = nn.Conv3d(f, n_classes, kernel_size=1)
        self.has_dropout = has_dropout
        # Dropout3d zeroes whole channels; active only in train mode, like every nn.Dropout.
        self.dropout = nn.Dropout3d(p=0.5)

    def encode(self, x):
        raise NotImplementedError

    def decode(self, skips):
        """[x1..x5] -> (logits (B, n_classes, *S), features (B, n_filters, *S)); skips are added."""
        x1, x2, x3, x4, x5 = skips
        x = self.block_six(self.block_five_up(x5) + x4)
        x = self.block_seven(self.block_six_up(x) + x3)
        x = self.block_eight(self.block_seven_up(x) + x2)
        x = self.block_nine(self.block_eight_up(x) + x1)
        if self.has_dropout:
            x = self.dropout(x)
        return self.out_conv(x), x

    def forward(self, x):
        """x (B, n_channels, X, Y, Z) -> (logits (B, n_classes, X, Y, Z), features (B, n_filters, X, Y, Z))."""
        if x.dim() != 5 or any(s % 16 for s in x.shape[2:]):
            raise ValueError(
                f"{type(self).__name__} input has shape {tuple(x.shape)}; expected (B, C, X, Y, Z) "
                "with X, Y, Z divisible by 16, because the encoder halves each spatial size 4 times "
                "and the decoder adds the skips back at the same sizes")
        skips = list(self.encode(x))
        if self.has_dropout:
            skips[4] = self.dropout(skips[4])
        return self.decode(skips)


class VNet(VNetDecoderNet):
    """V-Net: stage depths 1/2/3/3/3 at widths f, 2f, 4f, 8f, 16f (f = n_filters), additive skips."""

    def __init__(self, n_channels=1, n_classes=2, n_filters=16, normalization='batchnorm',
                 has_dropout=False):
        super().__init__()
        check_normalization(normalization)
        f, norm = n_filters, normalization
        self.block_one = ConvBlock(1, n_channels, f, norm)
        self.block_one_dw = DownsamplingConvBlock(f, 2 * f, norm)
        self.block_two = ConvBlock(2, 2 * f, 2 * f, norm)
        self.block_two_dw = DownsamplingConvBlock(2 * f, 4 * f, norm)
        self.block_three = ConvBlock(3, 4 * f, 4 * f, norm)
        self.block_three_dw = DownsamplingConvBlock(4 * f, 8 * f, norm)
        self.block_four = ConvBlock(3, 8 * f, 8 * f, norm)
        self.block_four_dw = DownsamplingConvBlock(8 * f, 16 * f, norm)
        self.block_five = ConvBlock(3, 16 * f, 16 * f, norm)
        self._build_decoder(n_classes, n_filters, normalization, has_dropout)
        init_weights(self)

    def encode(self, x):
        """(B, n_channels, *S) -> [x1 (B, f, *S), ..., x5 (B, 16f, *S/16)]."""
        x1 = self.block_one(x)
        x2 = self.block_two(self.block_one_dw(x1))
        x3 = self.block_three(self.block_two_dw(x2))
        x4 = self.block_four(self.block_three_dw(x3))
        x5 = self.block_five(self.block_four_dw(x4))
        return [x1, x2, x3, x4, x5]
