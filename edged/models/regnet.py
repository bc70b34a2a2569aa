"""The RegNet design space (Radosavovic et al., "Designing Network Design Spaces", 2020).

Pure Python: generating stage widths/depths and counting FLOPs/params needs no
deep-learning framework, so `edged model archs` and the FLOP-budget search run
anywhere. Counting follows pycls: multiply-adds of convolutions and linear layers
(SE included, biases counted), BN parameters counted, no FLOPs for BN/activations.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Dict, List, Optional, Tuple

from edged.errors import UserError


class ArchError(UserError):
    """An unknown architecture name or an impossible parameter set."""


@dataclass(frozen=True)
class RegNetParams:
    """The design-space parameters of one RegNet (pycls names)."""

    name: str
    depth: int
    w0: int
    wa: float
    wm: float
    group_width: int
    se_ratio: float = 0.0  # 0 for RegNetX, 0.25 for RegNetY
    stem_width: int = 32
    bottleneck: float = 1.0
    quantum: int = 8

    @property
    def family(self) -> str:
        return "RegNetY" if self.se_ratio > 0 else "RegNetX"


# pycls configs (configs/dds_baselines/regnet{x,y}/*.yaml) and published complexity
# (pycls MODEL_ZOO.md): GFLOPs and millions of parameters at 224x224.
_X = [("200MF", 13, 24, 36.44, 2.49, 8, 0.20, 2.68), ("400MF", 22, 24, 24.48, 2.54, 16, 0.40, 5.16),
      ("600MF", 16, 48, 36.97, 2.24, 24, 0.60, 6.20), ("800MF", 16, 56, 35.73, 2.28, 16, 0.80, 7.26),
      ("1.6GF", 18, 80, 34.01, 2.25, 24, 1.60, 9.19), ("3.2GF", 25, 88, 26.31, 2.25, 48, 3.20, 15.30)]
_Y = [("200MF", 13, 24, 36.44, 2.49, 8, 0.20, 3.16), ("400MF", 16, 48, 27.89, 2.09, 8, 0.40, 4.34),
      ("600MF", 15, 48, 32.54, 2.32, 16, 0.60, 6.06), ("800MF", 14, 56, 38.84, 2.40, 16, 0.80, 6.26),
      ("1.6GF", 27, 48, 20.71, 2.65, 24, 1.60, 11.20), ("3.2GF", 21, 80, 42.63, 2.66, 24, 3.20, 19.44)]

PRESETS: Dict[str, RegNetParams] = {}
PUBLISHED: Dict[str, Tuple[float, float]] = {}  # name -> (GFLOPs, M params)
for _family, _rows, _se in (("RegNetX", _X, 0.0), ("RegNetY", _Y, 0.25)):
    for _suffix, _d, _w0, _wa, _wm, _g, _gf, _mp in _rows:
        _name = f"{_family}-{_suffix}"
        PRESETS[_name] = RegNetParams(_name, _d, _w0, _wa, _wm, _g, _se)
        PUBLISHED[_name] = (_gf, _mp)


@dataclass(frozen=True)
class Stage:
    depth: int
    width: int
    group_width: int
    stride: int = 2


@dataclass(frozen=True)
class Complexity:
    flops: int
    params: int


def lookup(name: str) -> RegNetParams:
    """Find a preset by name, forgiving case and the "regnety_400mf" spelling."""
    key = name.replace("_", "-").lower()
    for preset_name, params in PRESETS.items():
        if preset_name.lower() == key:
            return params
    raise ArchError(f"unknown architecture '{name}' (known: {', '.join(PRESETS)})")


def stages(p: RegNetParams) -> List[Stage]:
    """Per-stage depth and width: pycls `generate_regnet` + `adjust_block_compatibility`."""
    if p.depth < 1 or p.w0 <= 0 or p.wa < 0 or p.wm <= 1 or p.w0 % p.quantum:
        raise ArchError(f"{p.name}: need depth>=1, w0>0 and a multiple of {p.quantum}, wa>=0, wm>1")
    widths_all = []
    for i in range(p.depth):
        width_cont = i * p.wa + p.w0
        k = round(math.log(width_cont / p.w0) / math.log(p.wm))
        widths_all.append(int(round(p.w0 * p.wm ** k / p.quantum)) * p.quantum)
    widths = sorted(set(widths_all))
    depths = [widths_all.count(w) for w in widths]
    result = []
    for width, depth in zip(widths, depths):
        inner = max(1, int(width * p.bottleneck))
        group = min(p.group_width, inner)
        b = int(p.bottleneck)
        multiple = group * b // math.gcd(group, b) if b > 1 else group
        inner = max(multiple, int(round(inner / multiple) * multiple))
        result.append(Stage(depth=depth, width=int(inner / p.bottleneck), group_width=group))
    return result


def complexity(p: RegNetParams, num_classes: int = 1000, resolution: int = 224) -> Complexity:
    """FLOPs (multiply-adds) and parameters as pycls counts them."""
    counter = _Counter()
    size = _conv_out(resolution, 2)
    counter.conv(3, p.stem_width, 3, size)
    counter.bn(p.stem_width)
    w_in = p.stem_width
    for stage in stages(p):
        for block in range(stage.depth):
            stride = stage.stride if block == 0 else 1
            size = _block(counter, p, w_in, stage, stride, size)
            w_in = stage.width
    counter.linear(w_in, num_classes)
    return Complexity(flops=counter.flops, params=counter.params)


def _block(c: "_Counter", p: RegNetParams, w_in: int, st: Stage, stride: int, size: int) -> int:
    w_b = int(round(st.width * p.bottleneck))
    out = _conv_out(size, stride)
    c.conv(w_in, w_b, 1, size)
    c.bn(w_b)
    c.conv(w_b, w_b, 3, out, groups=w_b // st.group_width)
    c.bn(w_b)
    if p.se_ratio > 0:
        w_se = int(round(w_in * p.se_ratio))
        c.conv(w_b, w_se, 1, 1, bias=True)
        c.conv(w_se, w_b, 1, 1, bias=True)
    c.conv(w_b, st.width, 1, out)
    c.bn(st.width)
    if stride != 1 or w_in != st.width:
        c.conv(w_in, st.width, 1, out)
        c.bn(st.width)
    return out


def _conv_out(size: int, stride: int) -> int:
    return (size - 1) // stride + 1  # 3x3 pad 1 and 1x1 pad 0 both give this


class _Counter:
    def __init__(self) -> None:
        self.flops = 0
        self.params = 0

    def conv(self, w_in: int, w_out: int, k: int, out_size: int, groups: int = 1, bias: bool = False) -> None:
        weights = k * k * w_in * w_out // groups
        self.flops += weights * out_size * out_size + (w_out if bias else 0)
        self.params += weights + (w_out if bias else 0)

    def bn(self, width: int) -> None:
        self.params += 2 * width

    def linear(self, w_in: int, w_out: int) -> None:
        self.flops += w_in * w_out + w_out
        self.params += w_in * w_out + w_out


def best_under_budget(max_mflops: float, family: str = "RegNetY", num_classes: int = 1000,
                      resolution: int = 224) -> Tuple[RegNetParams, Complexity]:
    """The largest preset of `family` whose FLOPs fit the budget ("best RegNetY under 500 MF")."""
    fitting = []
    for params in PRESETS.values():
        if params.family.lower() != family.lower():
            continue
        cx = complexity(params, num_classes, resolution)
        if cx.flops <= max_mflops * 1e6:
            fitting.append((cx.flops, params, cx))
    if not fitting:
        raise ArchError(f"no {family} preset fits {max_mflops:g} MFLOPs at {resolution}x{resolution}")
    _, params, cx = max(fitting, key=lambda item: item[0])
    return params, cx


def custom(name: str = "RegNet-custom", depth: int = 4, w0: int = 8, wa: float = 8.0, wm: float = 2.0,
           group_width: int = 8, se_ratio: float = 0.25, stem_width: int = 8) -> RegNetParams:
    """A hand-specified RegNet (tiny ones keep the toolkit's tests fast)."""
    params = RegNetParams(name, depth, w0, wa, wm, group_width, se_ratio, stem_width)
    stages(params)  # validate now, with a clear error
    return params


def resolve(name: Optional[str] = None, budget_mflops: Optional[float] = None,
            family: str = "RegNetY") -> RegNetParams:
    """Pick an architecture by preset name or by FLOP budget."""
    if name:
        return lookup(name)
    if budget_mflops:
        return best_under_budget(budget_mflops, family)[0]
    raise ArchError("give an architecture name or a FLOP budget")

