"""Tests for pacx.nets.lab_dae: architecture, corruption, masked loss, encode semantics and input checks."""

from __future__ import annotations

import pytest
import torch

from pacx.nets import LabDAE
from pacx.nets.lab_dae import masked_mse


def _batch(n: int = 8, labs: int = 50, p_observed: float = 0.7, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    values = torch.rand(n, labs, generator=g)
    observed = (torch.rand(n, labs, generator=g) < p_observed).float()
    return values, observed


def test_architecture_and_parameter_counts() -> None:
    dae = LabDAE()
    assert [type(m).__name__ for m in dae.encoder] == ["Linear", "LayerNorm", "GELU", "Linear"]
    assert [type(m).__name__ for m in dae.decoder] == ["Linear", "GELU", "Linear", "Sigmoid"]
    assert dae.encoder[0].in_features == 100 and dae.encoder[-1].out_features == 256
    assert sum(p.numel() for p in dae.encoder.parameters()) == 184_064
    assert sum(p.numel() for p in dae.decoder.parameters()) == 157_234
    assert LabDAE(**dae.config()).config() == dae.config()


def test_corruption_touches_only_observed_entries() -> None:
    dae = LabDAE(corruption_prob=0.5)
    values, observed = _batch(64, p_observed=0.6)
    values[observed == 0] = 0.37  # a mean-imputed placeholder
    new_values, new_observed = dae.corrupt(values, observed, generator=torch.Generator().manual_seed(1))
    missing = observed == 0
    assert torch.all(new_values[missing] == 0) and torch.all(new_observed[missing] == 0)
    kept = (observed == 1) & (new_observed == 1)
    dropped = (observed == 1) & (new_observed == 0)
    assert torch.equal(new_values[kept], values[kept])
    assert torch.all(new_values[dropped] == 0)
    assert kept.any() and dropped.any()


def test_corruption_rate_and_reproducibility() -> None:
    dae = LabDAE()
    values = torch.rand(2000, 50)
    observed = torch.ones(2000, 50)
    observed[:, :10] = 0
    _, new_observed = dae.corrupt(values, observed, generator=torch.Generator().manual_seed(3))
    rate = 1.0 - new_observed[:, 10:].mean().item()
    assert abs(rate - 0.15) < 0.01
    assert torch.all(new_observed[:, :10] == 0)
    _, again = dae.corrupt(values, observed, generator=torch.Generator().manual_seed(3))
    assert torch.equal(new_observed, again)

    none = LabDAE(corruption_prob=0.0)
    v, m = none.corrupt(values, observed)
    assert torch.equal(m, observed) and torch.equal(v, values * observed)


def test_training_forward_matches_manual_masked_loss() -> None:
    torch.manual_seed(0)
    dae = LabDAE(num_labs=10, latent_dim=8, hidden_dim=16).train()
    values, observed = _batch(32, labs=10)
    loss, recon, details = dae(values, observed, generator=torch.Generator().manual_seed(7))

    x_in, m_in = dae.corrupt(values, observed, generator=torch.Generator().manual_seed(7))
    expected_recon = dae.decoder(dae.encoder(torch.cat([x_in * m_in, m_in], dim=1)))
    torch.testing.assert_close(recon, expected_recon)
    expected_loss = (((expected_recon - values * observed) ** 2) * observed).sum() / (observed.sum() + 1e-6)
    torch.testing.assert_close(loss, expected_loss)

    dropped = observed - m_in
    assert details["num_dropped"].item() == dropped.sum().item() > 0
    expected_imputation = (((expected_recon - values) ** 2) * dropped).sum() / (dropped.sum() + 1e-6)
    torch.testing.assert_close(details["imputation_mse"], expected_imputation)
    assert 0 < details["dropped_fraction"].item() < 0.5
    assert details["latent_std"].item() > 0
    assert loss.requires_grad and not details["imputation_mse"].requires_grad


def test_eval_forward_is_clean_and_loss_ignores_missing() -> None:
    torch.manual_seed(0)
    dae = LabDAE(num_labs=12, latent_dim=8, hidden_dim=16).eval()
    values, observed = _batch(16, labs=12)
    loss_a, recon_a, details = dae(values, observed)
    assert details["num_dropped"].item() == 0 and details["imputation_mse"].item() == 0
    other = values.clone()
    other[observed == 0] = torch.rand(int((observed == 0).sum()))
    other[0, observed[0] == 0] = float("nan")
    loss_b, recon_b, _ = dae(other, observed)
    torch.testing.assert_close(loss_a, loss_b)
    torch.testing.assert_close(recon_a, recon_b)
    # ...while an observed value does change the loss.
    changed = values.clone()
    row, col = (int(i) for i in observed.nonzero()[0])
    changed[row, col] = 1.0 - changed[row, col]
    assert not torch.allclose(dae(changed, observed)[0], loss_a)


def test_masked_mse_ignores_unmasked_and_empty_mask() -> None:
    pred = torch.tensor([[0.5, 0.2]])
    target = torch.tensor([[0.0, float("nan")]])
    mask = torch.tensor([[1.0, 0.0]])
    assert masked_mse(pred, target, mask).item() == pytest.approx(0.25, rel=1e-5)
    assert masked_mse(pred, target, torch.zeros_like(mask)).item() == 0.0


def test_encode_ignores_values_at_missing_positions() -> None:
    torch.manual_seed(0)
    dae = LabDAE().eval()
    values, observed = _batch(6)
    mean_imputed = values.clone()
    mean_imputed[observed == 0] = 0.5  # what the authors' extraction fed
    nan_filled = values.clone()
    nan_filled[observed == 0] = float("nan")
    zeros = values * observed
    with torch.no_grad():
        z = dae.encode(mean_imputed, observed)
        assert z.shape == (6, 256)
        torch.testing.assert_close(dae.encode(nan_filled, observed), z)
        torch.testing.assert_close(dae.encode(zeros, observed), z)
        torch.testing.assert_close(dae.encode(values, observed.bool()), z)
        torch.testing.assert_close(dae.encoder(torch.cat([zeros, observed], dim=1)), z)
        # Feeding the imputed values straight into the encoder (the authors' extraction) differs.
        assert not torch.allclose(dae.encoder(torch.cat([mean_imputed, observed], dim=1)), z)


def test_short_training_reduces_loss() -> None:
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)
    latent = torch.rand(256, 3, generator=g)
    values = torch.sigmoid(latent @ torch.randn(3, 20, generator=g))
    observed = (torch.rand(256, 20, generator=g) < 0.8).float()
    dae = LabDAE(num_labs=20, latent_dim=16, hidden_dim=64)
    opt = torch.optim.AdamW(dae.parameters(), lr=3e-3)
    dae.eval()
    with torch.no_grad():
        start = dae(values, observed)[0].item()
    dae.train()
    for _ in range(60):
        loss, _, _ = dae(values, observed)
        opt.zero_grad()
        loss.backward()
        opt.step()
    dae.eval()
    with torch.no_grad():
        end = dae(values, observed)[0].item()
    assert end < 0.3 * start


# ---------------------------------------------------------------- input validation


def test_nan_at_observed_position_names_row_and_column() -> None:
    dae = LabDAE()
    values, observed = _batch(4)
    observed[1, 3] = 1
    values[1, 3] = float("nan")
    with pytest.raises(ValueError, match=r"row 1, column 3"):
        dae.encode(values, observed)
    with pytest.raises(ValueError, match=r"row 1, column 3"):
        dae(values, observed)
    values[1, 3] = float("inf")
    with pytest.raises(ValueError, match=r"non-finite.*row 1, column 3"):
        dae.corrupt(values, observed)


@pytest.mark.parametrize(
    "mutate, match",
    [
        (lambda v, m: (v[:, :49], m[:, :49]), r"\(B, 50\)"),
        (lambda v, m: (v, m[:, :49]), "observed must have the shape"),
        (lambda v, m: (v[0], m[0]), r"\(B, 50\)"),
        (lambda v, m: (v[:0], m[:0]), r"B >= 1"),
        (lambda v, m: ((v * 100).long(), m), "floating point"),
        (lambda v, m: (v, m * 2), r"only 0/1, got 2\.0 at row"),
        (lambda v, m: (v, m - 0.5), "only 0/1"),
        (lambda v, m: (v + 1.5, torch.ones_like(m)), r"\[0, 1\]"),
        (lambda v, m: (v - 1.5, torch.ones_like(m)), r"\[0, 1\]"),
        (lambda v, m: (v.numpy(), m), "must be tensors"),
    ],
)
def test_rejects_bad_inputs(mutate, match: str) -> None:
    values, observed = _batch(4)
    bad_values, bad_observed = mutate(values, observed)
    with pytest.raises(ValueError, match=match):
        LabDAE().encode(bad_values, bad_observed)


def test_out_of_range_at_missing_position_is_ignored() -> None:
    dae = LabDAE().eval()
    values, observed = _batch(3)
    observed[0, 0] = 0
    shifted = values.clone()
    shifted[0, 0] = 42.0
    torch.testing.assert_close(dae.encode(shifted, observed), dae.encode(values, observed))


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"num_labs": 0}, "num_labs"),
        ({"latent_dim": -1}, "latent_dim"),
        ({"hidden_dim": 0}, "hidden_dim"),
        ({"corruption_prob": 1.0}, "corruption_prob"),
        ({"corruption_prob": -0.1}, "corruption_prob"),
    ],
)
def test_constructor_rejects_bad_config(kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        LabDAE(**kwargs)


def test_decode_checks_latent_shape() -> None:
    dae = LabDAE()
    assert dae.decode(torch.zeros(2, 256)).shape == (2, 50)
    with pytest.raises(ValueError, match=r"\(B, 256\)"):
        dae.decode(torch.zeros(2, 255))
