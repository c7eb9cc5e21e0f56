"""Tiny models and datasets for the engine tests (module level, so spawned workers import them)."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import Dataset

from pacx.distributed import all_gather_with_grad, get_rank


class NoisyRegression(Dataset):
    """Regression pairs with fresh input noise drawn from the global torch RNG at every access.

    The noise makes the data depend on the RNG state of the main process, which is what a
    resumed run must restore to repeat an uninterrupted one.
    """

    def __init__(self, n: int = 48, dim: int = 4, seed: int = 0) -> None:
        g = torch.Generator().manual_seed(seed)
        self.x = torch.randn(n, dim, generator=g)
        self.y = self.x @ torch.randn(dim, 2, generator=g)

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {"x": self.x[i] + 0.01 * torch.randn(self.x.shape[1]), "y": self.y[i]}


class DropoutMLP(nn.Module):
    """MLP with dropout (RNG-dependent forward) and a LayerNorm (no-decay parameters)."""

    def __init__(self, dim: int = 4, hidden: int = 16, out: int = 2, p: float = 0.2) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(dim, hidden), nn.LayerNorm(hidden), nn.GELU(), nn.Dropout(p), nn.Linear(hidden, out)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def regression_step(model: nn.Module, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    pred = model(batch["x"])
    loss = F.mse_loss(pred, batch["y"])
    return loss, {"abs_err": (pred - batch["y"]).abs().mean()}


class PairDataset(Dataset):
    """Two float64 'modalities' of the same latent, for contrastive tests."""

    def __init__(self, n: int = 32, dim_a: int = 6, dim_b: int = 5, seed: int = 0) -> None:
        g = torch.Generator().manual_seed(seed)
        z = torch.randn(n, 3, generator=g, dtype=torch.float64)
        self.a = z @ torch.randn(3, dim_a, generator=g, dtype=torch.float64) + 0.1 * torch.randn(
            n, dim_a, generator=g, dtype=torch.float64
        )
        self.b = z @ torch.randn(3, dim_b, generator=g, dtype=torch.float64)

    def __len__(self) -> int:
        return len(self.a)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {"a": self.a[i], "b": self.b[i]}


def symmetric_infonce(za: torch.Tensor, zb: torch.Tensor, logit_scale: torch.Tensor) -> torch.Tensor:
    """Local queries against keys gathered from every rank (with gradient), targets offset by rank."""
    keys_a, keys_b = all_gather_with_grad(za), all_gather_with_grad(zb)
    targets = torch.arange(za.shape[0], device=za.device) + get_rank() * za.shape[0]
    scale = logit_scale.exp()
    loss_a = F.cross_entropy(scale * za @ keys_b.T, targets)
    loss_b = F.cross_entropy(scale * zb @ keys_a.T, targets)
    return 0.5 * (loss_a + loss_b)


class TinyContrastive(nn.Module):
    """Two linear encoders and a learnable temperature; ``forward(batch)`` returns the loss."""

    def __init__(self, dim_a: int = 6, dim_b: int = 5, dim: int = 4) -> None:
        super().__init__()
        self.enc_a = nn.Linear(dim_a, dim)
        self.enc_b = nn.Linear(dim_b, dim)
        self.logit_scale = nn.Parameter(torch.tensor(math.log(5.0)))

    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        za = F.normalize(self.enc_a(batch["a"]), dim=-1)
        zb = F.normalize(self.enc_b(batch["b"]), dim=-1)
        return symmetric_infonce(za, zb, self.logit_scale)


def contrastive_step(model: nn.Module, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, float]]:
    return model(batch), {}


def state_numpy(model: nn.Module) -> dict[str, object]:
    return {k: v.detach().cpu().numpy().copy() for k, v in model.state_dict().items()}
