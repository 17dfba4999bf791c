"""The segmentation network: a plain 3D U-Net (Ronneberger/Çiçek), small enough for CPU inference in seconds.

The 2017 thesis used a 2D U-Net on 24-slice sagittal images; we use 3D convolutions on an isotropic,
canonically oriented grid, so that the same weights serve sagittal, coronal and axial acquisitions. Its
hyper-parameters live in the model file's metadata (``UNetConfig``, part of the model's ``ModelPlan``), never
hard-coded at the call site: training, export, evaluation and loading all build the network with
``build_network(plan)``.
"""
from __future__ import annotations

import torch
from torch import nn

from .config import UNetConfig  # noqa: F401 (the network's hyper-parameters, torch-free)
from .plan import ModelPlan


NEW_CLASS_BIAS_MARGIN = 8.0  # logits below the old classes' smallest bias: softmax share ~e^-8


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


def build_network(plan: ModelPlan) -> UNet3D:
    """The (untrained) network of ``plan``: the one way a network comes into being, so a model trained,
    exported, evaluated and loaded is the same network for the same plan."""
    return UNet3D(plan.network)


def with_classes(net: UNet3D, out_channels: int) -> UNet3D:
    """``net`` with a head of ``out_channels`` classes (more than it has): the old classes keep their weights,
    the new ones start with zero weights and a bias below every old class, so the grown network predicts
    exactly what ``net`` did until fine-tuning teaches it the new classes (a 3-bone model learning the Patella)."""
    old = net.config.out_channels
    if out_channels < old:
        raise ValueError(f"cannot shrink a {old}-class network to {out_channels} classes")
    config = UNetConfig(net.config.in_channels, out_channels, net.config.features)
    grown = UNet3D(config)
    state = net.state_dict()
    weight, bias = state["head.weight"], state["head.bias"]
    new_weight = torch.zeros((out_channels, *weight.shape[1:]), dtype=weight.dtype)
    new_bias = torch.full((out_channels,), float(bias.min()) - NEW_CLASS_BIAS_MARGIN, dtype=bias.dtype)
    new_weight[:old], new_bias[:old] = weight, bias
    state["head.weight"], state["head.bias"] = new_weight, new_bias
    grown.load_state_dict(state)
    return grown.train(net.training)


def widened(net: UNet3D, features: tuple[int, ...], seed: int = 0, noise: float = 0.005) -> UNet3D:
    """``net`` with wider stages (``features``, each at least the old width) computing the same function
    (Net2WiderNet, Chen et al. 2016): every new channel copies a random old channel of its stage, and the layer
    reading a copied channel divides that channel's weights by its number of copies. InstanceNorm keeps copies
    identical, so the logits are unchanged up to ``noise`` (relative weight noise that lets the copies diverge
    in training). Why: a wider network starts from the trained one instead of from scratch, which on a CPU is
    hours of training saved."""
    old_f, new_f = tuple(net.config.features), tuple(int(f) for f in features)
    if len(new_f) != len(old_f) or any(n < o for n, o in zip(new_f, old_f)):
        raise ValueError(f"cannot widen a {old_f} network to {new_f}: as many stages, none narrower")
    gen = torch.Generator().manual_seed(seed)

    def channel_map(old: int, new: int) -> torch.Tensor:  # new channel k copies old channel map[k]
        return torch.cat([torch.arange(old), torch.randint(0, old, (new - old,), generator=gen)])

    def read(weight: torch.Tensor, mapping: torch.Tensor, dim: int) -> torch.Tensor:  # inputs: copy and share
        counts = torch.bincount(mapping).to(weight.dtype)
        shape = [1] * weight.dim()
        shape[dim] = -1
        return weight.index_select(dim, mapping) / counts[mapping].view(shape)

    def jitter(weight: torch.Tensor) -> torch.Tensor:
        return weight + noise * weight.std() * torch.randn(weight.shape, generator=gen, dtype=weight.dtype)

    old = net.state_dict()
    state: dict[str, torch.Tensor] = {}

    def block(prefix: str, inputs: torch.Tensor | None, cout_old: int, cout_new: int) -> torch.Tensor:
        """A conv block whose input channels follow ``inputs`` (None: unchanged); returns its output map."""
        mid, out = channel_map(cout_old, cout_new), channel_map(cout_old, cout_new)
        w = old[f"{prefix}.0.weight"] if inputs is None else read(old[f"{prefix}.0.weight"], inputs, 1)
        state[f"{prefix}.0.weight"] = jitter(w.index_select(0, mid))
        state[f"{prefix}.3.weight"] = jitter(read(old[f"{prefix}.3.weight"], mid, 1).index_select(0, out))
        for norm, mapping in ((f"{prefix}.1", mid), (f"{prefix}.4", out)):
            for part in ("weight", "bias"):
                state[f"{norm}.{part}"] = old[f"{norm}.{part}"].index_select(0, mapping)
        return out

    skips, x = [], None
    for i, (o, n) in enumerate(zip(old_f, new_f)):
        x = block(f"encoders.{i}", x, o, n)
        skips.append(x)
    skips.pop()
    for j, i in enumerate(range(len(old_f) - 1, 0, -1)):
        up = channel_map(old_f[i - 1], new_f[i - 1])
        state[f"ups.{j}.weight"] = jitter(read(old[f"ups.{j}.weight"], x, 0).index_select(1, up))
        state[f"ups.{j}.bias"] = old[f"ups.{j}.bias"].index_select(0, up)
        skip = skips.pop()
        x = block(f"decoders.{j}", torch.cat([up, skip + old_f[i - 1]]), old_f[i - 1], new_f[i - 1])
    state["head.weight"], state["head.bias"] = read(old["head.weight"], x, 1), old["head.bias"]
    grown = UNet3D(UNetConfig(net.config.in_channels, net.config.out_channels, new_f))
    grown.load_state_dict(state)
    return grown.train(net.training)


def config_of_state(state: dict, in_channels: int = 1) -> UNetConfig:
    """The ``UNetConfig`` a state dict was made with (widths from the encoders, classes from the head)."""
    features, i = [], 0
    while f"encoders.{i}.0.weight" in state:
        features.append(int(state[f"encoders.{i}.0.weight"].shape[0]))
        i += 1
    return UNetConfig(in_channels, int(state["head.weight"].shape[0]), tuple(features))


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
