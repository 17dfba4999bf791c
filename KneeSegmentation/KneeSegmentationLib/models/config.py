"""The network's hyper-parameters (``UNetConfig``), kept apart from torch so that a model card can be read,
listed and checked without importing it; ``network.UNet3D`` is built from one of these.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field

from ..constants import NUM_CLASSES


@dataclass(frozen=True)
class UNetConfig:
    """Hyper-parameters of ``UNet3D``; stored in model metadata under ``network``."""

    in_channels: int = 1
    out_channels: int = NUM_CLASSES
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
