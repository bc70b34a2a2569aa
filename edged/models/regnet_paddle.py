"""RegNet as a Paddle `nn.Layer` (imports paddle: model-building side only).

The layer structure mirrors `regnet.complexity()` block by block. Paddle Lite
crashes on `flatten`, so the head uses `paddle.reshape`.
"""

from __future__ import annotations

import paddle
from paddle import nn

from edged.models.regnet import RegNetParams, Stage, stages


def _conv_bn(w_in: int, w_out: int, k: int, stride: int = 1, groups: int = 1) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2D(w_in, w_out, k, stride=stride, padding=k // 2, groups=groups, bias_attr=False),
        nn.BatchNorm2D(w_out),
    )


class SqueezeExcite(nn.Layer):
    def __init__(self, w_b: int, w_se: int):
        super().__init__()
        self.pool = nn.AdaptiveAvgPool2D(1)
        self.reduce = nn.Conv2D(w_b, w_se, 1)
        self.expand = nn.Conv2D(w_se, w_b, 1)

    def forward(self, x):
        s = nn.functional.relu(self.reduce(self.pool(x)))
        return x * nn.functional.sigmoid(self.expand(s))


class Bottleneck(nn.Layer):
    """pycls ResBottleneckBlock: 1x1 -> grouped 3x3 (stride) -> [SE] -> 1x1, plus shortcut."""

    def __init__(self, p: RegNetParams, w_in: int, stage: Stage, stride: int):
        super().__init__()
        w_b = int(round(stage.width * p.bottleneck))
        self.a = _conv_bn(w_in, w_b, 1)
        self.b = _conv_bn(w_b, w_b, 3, stride, groups=w_b // stage.group_width)
        self.se = SqueezeExcite(w_b, int(round(w_in * p.se_ratio))) if p.se_ratio > 0 else None
        self.c = _conv_bn(w_b, stage.width, 1)
        needs_projection = stride != 1 or w_in != stage.width
        self.shortcut = _conv_bn(w_in, stage.width, 1, stride) if needs_projection else None

    def forward(self, x):
        y = nn.functional.relu(self.a(x))
        y = nn.functional.relu(self.b(y))
        if self.se is not None:
            y = self.se(y)
        y = self.c(y)
        return nn.functional.relu(y + (self.shortcut(x) if self.shortcut is not None else x))


class RegNet(nn.Layer):
    def __init__(self, p: RegNetParams, num_classes: int):
        super().__init__()
        self.stem = nn.Sequential(_conv_bn(3, p.stem_width, 3, 2), nn.ReLU())
        blocks = []
        w_in = p.stem_width
        for stage in stages(p):
            for i in range(stage.depth):
                blocks.append(Bottleneck(p, w_in, stage, stage.stride if i == 0 else 1))
                w_in = stage.width
        self.trunk = nn.Sequential(*blocks)
        self.pool = nn.AdaptiveAvgPool2D(1)
        self.fc = nn.Linear(w_in, num_classes)
        self.num_stage_blocks = [s.depth for s in stages(p)]

    def forward(self, x):
        x = self.pool(self.trunk(self.stem(x)))
        return self.fc(paddle.reshape(x, [-1, x.shape[1]]))

    def freeze(self, stages_frozen: int) -> int:
        """Freeze the stem and the first `stages_frozen` stages; returns frozen block count."""
        n_blocks = sum(self.num_stage_blocks[:stages_frozen])
        frozen = [self.stem] + [self.trunk[i] for i in range(n_blocks)]
        for layer in frozen:
            for param in layer.parameters():
                param.stop_gradient = True
            layer.eval()  # keep BN statistics of frozen layers fixed
        self._frozen = frozen
        return n_blocks

    def train(self):  # noqa: D401 - paddle API
        super().train()
        for layer in getattr(self, "_frozen", []):
            layer.eval()
