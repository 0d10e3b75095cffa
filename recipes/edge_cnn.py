"""MobileNet-style CNNs with TensorFlow-style "same" padding: the factories of recipes/edge-cnn.yaml.

Depthwise-separable blocks (3x3 depthwise, 1x1 pointwise, batch norm, ReLU6) as in MobileNet v1/v2 ports of
TensorFlow models: before a stride-2 convolution the input is padded asymmetrically (0 before, 1 after for 3x3),
the padding computed from the input's size at run time (as timm's `pad_same` does). torch exports that as a
Shape/Gather/Slice/Concat/Pad subgraph: the graph shape that trips onnxruntime's quantizer without
pre-processing. A factory takes no arguments and returns a module mapping pixel_values [N, 1, H, W] (float32 in
[0, 1]) to logits [N, 10]. Plain torch: compress copies this file into every model folder it writes.
"""

import math

import torch
from torch import nn
from torch.nn import functional as F


def pad_same(x: torch.Tensor, kernel: int, stride: int) -> torch.Tensor:
    """TensorFlow's "SAME": output size ceil(in / stride), the odd pixel of padding after, not before."""
    height, width = x.shape[-2:]
    pad_h = max((math.ceil(height / stride) - 1) * stride + kernel - height, 0)
    pad_w = max((math.ceil(width / stride) - 1) * stride + kernel - width, 0)
    return F.pad(x, [pad_w // 2, pad_w - pad_w // 2, pad_h // 2, pad_h - pad_h // 2])


class SameConv(nn.Conv2d):
    """Conv2d with TF "same" padding (explicit F.pad, asymmetric at stride 2) and no padding of its own."""

    def __init__(self, cin: int, cout: int, kernel: int, stride: int = 1, groups: int = 1):
        super().__init__(cin, cout, kernel, stride, padding=0, groups=groups, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(pad_same(x, self.kernel_size[0], self.stride[0]))


def conv_bn(cin: int, cout: int, kernel: int, stride: int = 1, groups: int = 1, act=nn.ReLU6,
            norm: bool = True) -> nn.Sequential:
    conv = SameConv(cin, cout, kernel, stride, groups)
    return nn.Sequential(conv, nn.BatchNorm2d(cout), act()) if norm else nn.Sequential(conv, act())


class Separable(nn.Module):
    """Depthwise 3x3 (stride 1 or 2) then pointwise 1x1; a residual connection when the shapes allow."""

    def __init__(self, cin: int, cout: int, stride: int, act=nn.ReLU6, wide: float = 0.0):
        super().__init__()
        self.depthwise = conv_bn(cin, cin, 3, stride, groups=cin, act=act, norm=not wide)
        if wide:  # channel gains spread over `wide` decades, no batch norm to even them out
            gains = torch.logspace(-wide / 2, wide / 2, cin)[torch.randperm(cin)]
            with torch.no_grad():
                self.depthwise[0].weight.mul_(gains.view(-1, 1, 1, 1))
        self.pointwise = nn.Sequential(nn.Conv2d(cin, cout, 1, bias=False), nn.BatchNorm2d(cout))
        self.act = act()
        self.residual = stride == 1 and cin == cout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.pointwise(self.depthwise(x))
        return self.act(y + x if self.residual else y)


class EdgeCNN(nn.Module):
    def __init__(self, widths: list[int], strides: list[int], stem: int, classes: int = 10, act=nn.ReLU6,
                 wide: float = 0.0):
        super().__init__()
        layers, cin = [conv_bn(1, stem, 3, 2, act=act)], stem
        for cout, stride in zip(widths, strides):
            layers.append(Separable(cin, cout, stride, act, wide))
            cin = cout
        self.features = nn.Sequential(*layers)
        self.head = nn.Linear(cin, classes)

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        x = self.features(pixel_values)
        return self.head(x.mean(dim=(2, 3)))


def mobilenet() -> nn.Module:
    """About 352k parameters, 13 separable blocks (three at stride 2 after a stride-2 stem), widths 32 -> 256:
    the bench's network."""
    widths = [32, 64, 64, 128, 128, 128, 128, 128, 128, 256, 256, 256, 256]
    strides = [1, 2, 1, 2, 1, 1, 1, 1, 1, 2, 1, 1, 1]
    return EdgeCNN(widths, strides, stem=16)


def mobilenet_wide() -> nn.Module:
    """mobilenet() trained without ReLU6's clipping (plain ReLU) and with depthwise convolutions whose channel
    gains spread over three decades (no batch norm after them): the activation and weight ranges that cost
    int8 its agreement with fp32 on real edge CNNs."""
    torch.manual_seed(0)
    widths = [32, 64, 64, 128, 128, 128, 128, 128, 128, 256, 256, 256, 256]
    strides = [1, 2, 1, 2, 1, 1, 1, 1, 1, 2, 1, 1, 1]
    return EdgeCNN(widths, strides, stem=16, act=nn.ReLU, wide=3.0)


def tiny() -> nn.Module:
    """About 2k parameters, three separable blocks (two at stride 2): for tests (seconds)."""
    return EdgeCNN([16, 24, 24], [2, 2, 1], stem=8)
