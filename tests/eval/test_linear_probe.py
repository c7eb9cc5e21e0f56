"""Linear probes on cached features: selection, seeds, CIs and paired comparison."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from pacx.eval.linear_probe import compare, predict_linear_probe, probe_task, train_linear_probe
from pacx.eval.metrics import macro_auroc

FAST = {"epochs": 15, "batch_size": 32, "lr": 1e-2}


def _binary(n: int, seed: int, d: int = 8, signal: float = 1.0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, d)).astype(np.float32)
    y = (signal * x[:, 0] + rng.normal(size=n) > 0).astype(int)
    return x, y


@pytest.fixture(scope="module")
def splits():
    (xa, ya), (xb, yb), (xc, yc) = _binary(200, 0), _binary(80, 1), _binary(80, 2)
    return {"train": xa, "val": xb, "test": xc}, {"train": ya, "val": yb, "test": yc}


def test_adamw_keeps_best_epoch_and_is_seeded(splits):
    x, y = splits
    out = train_linear_probe(x["train"], y["train"], x["val"], y["val"], x["test"], y["test"], seed=0, **FAST)
    hist = out["val_auroc_history"]
    assert len(hist) == 15
    assert out["selected_epoch"] == int(np.argmax(hist))
    assert out["val_auroc"] == pytest.approx(hist[out["selected_epoch"]])
    assert out["metrics"]["auroc"] > 0.75 and out["test_probs"].shape == (80,)
    same = train_linear_probe(x["train"], y["train"], x["val"], y["val"], x["test"], seed=0, **FAST)
    other = train_linear_probe(x["train"], y["train"], x["val"], y["val"], x["test"], seed=1, **FAST)
    np.testing.assert_array_equal(out["test_probs"], same["test_probs"])
    assert "metrics" not in same
    assert not np.allclose(out["test_probs"], other["test_probs"])


def test_lbfgs_and_predict_roundtrip(splits):
    x, y = splits
    out = train_linear_probe(
        x["train"], y["train"], x["val"], y["val"], x["test"], y["test"], method="lbfgs", l2_grid=(1e-3, 1.0)
    )
    assert out["selected_l2"] in (1e-3, 1.0) and out["metrics"]["auroc"] > 0.75
    np.testing.assert_allclose(predict_linear_probe(out["head"], x["test"], "binary"), out["test_probs"], atol=1e-6)
    assert out["metrics"]["f1_tuned"] is not None and len(out["metrics"]["thresholds"]) == 1


def test_probe_task_summary_and_ci(splits):
    x, y = splits
    res = probe_task(x, y, "binary", seeds=(0, 1), n_resamples=200, **FAST)
    assert set(res["mean"]) == {"auroc", "f1", "f1_tuned"} and len(res["per_seed"]) == 2
    lo, hi = res["ci"]["auroc"]
    assert lo <= res["pooled"]["auroc"] <= hi and hi - lo < 0.4
    # test_probs is the seed average of the trained heads' probabilities.
    mean_probs = np.mean([predict_linear_probe(h, x["test"], "binary") for h in res["heads"]], axis=0)
    np.testing.assert_allclose(res["test_probs"], mean_probs, atol=1e-6)
    assert res["test_labels"].shape == (80, 1)


def test_low_data_fraction_changes_training_rows(splits):
    x, y = splits
    res = probe_task(x, y, "binary", seeds=(0, 1), method="lbfgs", train_fraction=0.1, n_resamples=0, l2_grid=(1.0,))
    assert res["n_train"] == [20, 20] and res["ci"] == {}
    with pytest.raises(ValueError, match="train_fraction"):
        probe_task(x, y, "binary", train_fraction=1.5)


def test_compare_informative_vs_noise(splits):
    x, y = splits
    rng = np.random.default_rng(9)
    noise = {k: rng.normal(size=v.shape).astype(np.float32) for k, v in x.items()}
    kw = {"seeds": (0,), "method": "lbfgs", "n_resamples": 0, "l2_grid": (1e-2,)}
    good, bad = probe_task(x, y, "binary", **kw), probe_task(noise, y, "binary", **kw)
    res = compare(good, bad, n_resamples=300)
    assert res["difference"] > 0.2 and res["p_value"] < 0.05 and res["ci_low"] > 0
    assert compare(good, good, n_resamples=100)["p_value"] == 1.0
    assert compare(good, bad, test="delong")["p_value"] < 0.05
    assert compare(good, bad, metric="f1_tuned", n_resamples=100)["difference"] > 0
    other = dict(bad, test_labels=1 - bad["test_labels"])
    with pytest.raises(ValueError, match="same test rows"):
        compare(good, other)


def test_multilabel_single_class_column_does_not_poison_macro():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(240, 6)).astype(np.float32)
    y = (x[:, :3] > 0).astype(int)
    y[160:, 2] = 0  # the test rows have no positive for label 2
    feats = {"train": x[:100], "val": x[100:160], "test": x[160:]}
    labels = {"train": y[:100], "val": y[100:160], "test": y[160:]}
    with pytest.warns(RuntimeWarning, match="undefined"):
        res = probe_task(feats, labels, "multilabel", seeds=(0,), method="lbfgs", n_resamples=50, l2_grid=(1e-2,))
    assert np.isnan(res["pooled"]["auroc_per_label"][2])
    assert res["pooled"]["auroc"] > 0.8 and np.isfinite(res["ci"]["auroc"]).all()
    assert res["test_probs"].shape == (80, 3)


def test_multiclass_adamw():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(300, 6)).astype(np.float32)
    y = np.argmax(x[:, :3], axis=1)
    out = train_linear_probe(x[:200], y[:200], x[200:250], y[200:250], x[250:], y[250:], "multiclass", **FAST)
    assert out["test_probs"].shape == (50, 3)
    np.testing.assert_allclose(out["test_probs"].sum(axis=1), 1.0, atol=1e-6)
    assert out["metrics"]["auroc"] > 0.85 and out["metrics"]["f1_tuned"] is None
    assert macro_auroc(out["test_probs"], np.eye(3)[y[250:]]) == pytest.approx(out["metrics"]["auroc"])


def test_validation(splits):
    x, y = splits
    with pytest.raises(ValueError, match="method"):
        train_linear_probe(x["train"], y["train"], x["val"], y["val"], x["test"], method="sgd")
    with pytest.raises(ValueError, match="widths"):
        train_linear_probe(x["train"], y["train"], x["val"][:, :4], y["val"], x["test"])
    with pytest.raises(ValueError, match="train_labels"):
        train_linear_probe(x["train"], y["train"][:10], x["val"], y["val"], x["test"])
    with pytest.raises(ValueError, match="missing 'val'"):
        probe_task({"train": x["train"], "test": x["test"]}, y, "binary")


def test_binary_newton_reaches_the_optimum_of_the_lbfgs_objective():
    from scipy.optimize import minimize

    from pacx.eval.linear_probe import _fit_binary_newton, _fit_lbfgs

    rng = np.random.default_rng(3)
    x = rng.normal(size=(700, 16)) @ rng.normal(size=(16, 16))  # correlated features, as class tokens are
    y = (x @ rng.normal(size=16) + rng.normal(size=700) * 4 > 0).astype(int)
    xt, xv = torch.tensor(x[:500], dtype=torch.float32), torch.tensor(x[500:], dtype=torch.float32)
    xt, xv = (xt - xt.mean(0)) / xt.std(0), (xv - xt.mean(0)) / xt.std(0)
    yt, yv = torch.tensor(y[:500], dtype=torch.float32).view(-1, 1), y[500:].reshape(-1, 1).astype(float)
    grid = (1e-4, 1e-2, 1.0)
    ref, ref_rec = _fit_lbfgs(xt, yt, xv, yv, "binary", 1, grid, 500, torch.device("cpu"))
    new, new_rec = _fit_binary_newton(xt, yt, xv, yv, grid, 100)
    assert new_rec["selected_l2"] == ref_rec["selected_l2"]
    with torch.no_grad():
        assert torch.allclose(torch.sigmoid(new(xv)), torch.sigmoid(ref(xv)), atol=2e-3)

    # The exact optimum: SciPy's L-BFGS-B run to a tight tolerance on the same objective agrees.
    l2, xn, yn = new_rec["selected_l2"], xt.double().numpy(), yt.double().numpy().ravel()

    def objective(w):
        z = xn @ w[:-1] + w[-1]
        residual = (1 / (1 + np.exp(-z)) - yn) / len(yn)
        loss = np.mean(np.logaddexp(0, z) - yn * z) + 0.5 * l2 * w[:-1] @ w[:-1]
        return loss, np.append(xn.T @ residual + l2 * w[:-1], residual.sum())

    w = minimize(objective, np.zeros(17), jac=True, method="L-BFGS-B",
                 options={"maxiter": 5000, "gtol": 1e-10, "ftol": 1e-15}).x
    ours = np.append(new.weight.detach().double().numpy().ravel(), float(new.bias.detach()))
    assert np.abs(objective(ours)[1]).max() < 1e-8  # the gradient vanishes at Newton's answer
    assert np.allclose(ours, w, atol=1e-4)


def test_full_data_lbfgs_probe_is_fitted_once_for_every_seed():
    rng = np.random.default_rng(0)
    x = {k: rng.normal(size=(n, 6)) for k, n in (("train", 120), ("val", 60), ("test", 60))}
    y = {k: (v[:, 0] + rng.normal(size=len(v)) > 0).astype(int) for k, v in x.items()}
    out = probe_task(x, y, "binary", seeds=(0, 1, 2), method="lbfgs", n_resamples=0)
    assert out["per_seed"][0] == out["per_seed"][1] == out["per_seed"][2]
    single = train_linear_probe(x["train"], y["train"], x["val"], y["val"], x["test"], y["test"], method="lbfgs")
    assert np.allclose(out["test_probs"], single["test_probs"])
