"""Built-in torch models for 1×28×28 inputs, keyed by name.

``build(name, seed)`` gives the same weights for the same seed on any machine,
without touching torch's global random state.
"""
import torch
from torch import nn

INPUT_SHAPE = (1, 28, 28)
N_CLASSES = 10


def mlp() -> nn.Module:
    """784 → 128 → 10 on the flattened image."""
    return nn.Sequential(
        nn.Flatten(),
        nn.Linear(784, 128), nn.ReLU(),
        nn.Linear(128, N_CLASSES),
    )


def lenet5() -> nn.Module:
    """Classic LeNet-5 with ReLU and max pooling (28 → 14 → 10 → 5)."""
    return nn.Sequential(
        nn.Conv2d(1, 6, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(6, 16, 5), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(16 * 5 * 5, 120), nn.ReLU(),
        nn.Linear(120, 84), nn.ReLU(),
        nn.Linear(84, N_CLASSES),
    )


class ResidualBlock(nn.Module):
    """``x + conv2(relu(bn(conv1(x))))``: two 3×3 convs and a residual Add."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1)
        self.bn = nn.BatchNorm2d(channels)
        self.relu = nn.ReLU()
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x):
        return x + self.conv2(self.relu(self.bn(self.conv1(x))))


def rescnn(channels: int = 16) -> nn.Module:
    """Conv-BN-ReLU stem (stride 2, so 14×14 maps), a residual block, global
    average pool, linear."""
    return nn.Sequential(
        nn.Conv2d(1, channels, 3, padding=1, stride=2),
        nn.BatchNorm2d(channels), nn.ReLU(),
        ResidualBlock(channels),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(),
        nn.Linear(channels, N_CLASSES),
    )


ZOO = {"mlp": mlp, "lenet5": lenet5, "rescnn": rescnn}


def build(name: str, seed: int = 0) -> nn.Module:
    """The zoo model ``name`` with its initial weights drawn from ``seed``."""
    if name not in ZOO:
        raise ValueError(f"name={name!r} is not a zoo model; expected one of {sorted(ZOO)}")
    # fork_rng keeps the caller's global RNG untouched while seeding the init
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return ZOO[name]()
