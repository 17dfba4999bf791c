"""The segmentation network: a plain 3D U-Net (Ronneberger/Çiçek), small enough for CPU inference in seconds.

The 2017 thesis used a 2D U-Net on 24-slice sagittal images; we use 3D convolutions on an isotropic,
canonically oriented grid, so that the same weights serve sagittal, coronal and axial acquisitions. Its
hyper-parameters live in the model file's metadata (``UNetConfig``), never hard-coded at the call site.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field

import torch
from torch import nn


@dataclass(frozen=True)
class UNetConfig:
    """Hyper-parameters of ``UNet3D``; stored in model metadata under ``network``."""

    in_channels: int = 1
    out_channels: int = 4
    features: tuple[int, ...] = (16, 32, 64, 128)
    arch: str = field(default="UNet3D")

    def to_dict(self) -> dict:
        d = asdict(self)
        d["features"] = list(self.features)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "UNetConfig":
        if d.get("arch", "UNet3D") != "UNet3D":
            raise ValueError(f"unknown network architecture {d.get('arch')!r}")
        return cls(
            in_channels=int(d["in_channels"]),
            out_channels=int(d["out_channels"]),
            features=tuple(int(f) for f in d["features"]),
        )

    @property
    def size_divisor(self) -> int:
        """Input sizes must be multiples of this (one halving per level below the top)."""
        return 2 ** (len(self.features) - 1)


def _conv_block(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv3d(cin, cout, 3, padding=1, bias=False),
        nn.InstanceNorm3d(cout, affine=True),
        nn.LeakyReLU(0.01, inplace=True),
        nn.Conv3d(cout, cout, 3, padding=1, bias=False),
        nn.InstanceNorm3d(cout, affine=True),
        nn.LeakyReLU(0.01, inplace=True),
    )


class UNet3D(nn.Module):
    """Encoder-decoder with skip connections; returns logits of shape (N, out_channels, D, H, W)."""

    def __init__(self, config: UNetConfig = UNetConfig()) -> None:
        super().__init__()
        self.config = config
        f = config.features
        self.encoders = nn.ModuleList()
        cin = config.in_channels
        for cout in f:
            self.encoders.append(_conv_block(cin, cout))
            cin = cout
        self.pool = nn.MaxPool3d(2)
        self.ups = nn.ModuleList()
        self.decoders = nn.ModuleList()
        for i in range(len(f) - 1, 0, -1):
            self.ups.append(nn.ConvTranspose3d(f[i], f[i - 1], 2, stride=2))
            self.decoders.append(_conv_block(2 * f[i - 1], f[i - 1]))
        self.head = nn.Conv3d(f[0], config.out_channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skips = []
        for i, enc in enumerate(self.encoders):
            x = enc(x)
            if i < len(self.encoders) - 1:
                skips.append(x)
                x = self.pool(x)
        for up, dec in zip(self.ups, self.decoders):
            x = up(x)
            x = dec(torch.cat([x, skips.pop()], dim=1))
        return self.head(x)


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
