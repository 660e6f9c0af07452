"""The fusion neck (as in MambaAD): three encoder maps -> one small bottleneck map.

F1 is brought down to F2's size and added to it, that sum down to F3's size and
added to it, and a ResNet stage of Bottleneck blocks halves the size once more.
With ResNet34 (64, 128, 256 channels) this gives the official 512 x 8 x 8.
"""
from __future__ import annotations

from torch import nn


def conv_bn_relu(c_in: int, c_out: int, kernel: int, stride: int = 1,
                 bias: bool = False) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, kernel, stride, padding=kernel // 2, bias=bias),
        nn.BatchNorm2d(c_out),
        nn.ReLU(inplace=True),
    )


class Bottleneck(nn.Module):
    """torchvision's ResNet Bottleneck (expansion 4, stride on the 3x3 conv)."""

    expansion = 4

    def __init__(self, c_in: int, planes: int, stride: int = 1):
        super().__init__()
        c_out = planes * self.expansion
        self.body = nn.Sequential(
            nn.Conv2d(c_in, planes, 1, bias=False), nn.BatchNorm2d(planes), nn.ReLU(inplace=True),
            nn.Conv2d(planes, planes, 3, stride, padding=1, bias=False), nn.BatchNorm2d(planes),
            nn.ReLU(inplace=True),
            nn.Conv2d(planes, c_out, 1, bias=False), nn.BatchNorm2d(c_out),
        )
        self.downsample = None
        if stride != 1 or c_in != c_out:
            self.downsample = nn.Sequential(
                nn.Conv2d(c_in, c_out, 1, stride, bias=False), nn.BatchNorm2d(c_out)
            )
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x):
        identity = x if self.downsample is None else self.downsample(x)
        return self.relu(self.body(x) + identity)


class Neck(nn.Module):
    """Fuse (F1, F2, F3) into a map of 2 * C3 channels at half F3's size.

    As the official FPN: the two 3x3 stride-2 convolutions have no bias, the three
    1x1 ones (official conv21, conv31, convf) have one, in PyTorch's default
    initialisation (the official code re-initialises only the weights). The
    BatchNorm after each absorbs the bias; it is there so that the authors'
    checkpoints load strictly and the parameter count is theirs (neck 1,458,304).
    """

    def __init__(self, channels: list[int] | tuple[int, ...], blocks: int = 3):
        super().__init__()
        c1, c2, c3 = channels
        self.down1 = conv_bn_relu(c1, c2, 3, stride=2)
        self.lateral2 = conv_bn_relu(c2, c2, 1, bias=True)
        self.down2 = conv_bn_relu(c2, c3, 3, stride=2)
        self.lateral3 = conv_bn_relu(c3, c3, 1, bias=True)
        self.fuse = conv_bn_relu(c3, c3, 1, bias=True)
        planes = c3 // 2
        layers = [Bottleneck(c3, planes, stride=2)]
        layers += [Bottleneck(planes * Bottleneck.expansion, planes) for _ in range(blocks - 1)]
        self.stage = nn.Sequential(*layers)
        self.out_channels = planes * Bottleneck.expansion
        self._init_weights()

    def _init_weights(self):
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def forward(self, features):
        """(F1, F2, F3): (B, C1, H/4, W/4), (B, C2, H/8, W/8), (B, C3, H/16, W/16) ->
        (B, 2 C3, H/32, W/32) for an H x W input."""
        f1, f2, f3 = features
        a = self.down1(f1) + self.lateral2(f2)
        b = self.down2(a) + self.lateral3(f3)
        return self.stage(self.fuse(b))
