"""Audit of the synthetic cohort: where the physiological signal is, and where it is not.

Prints, per task, the held-out AUROC of simple linear read-outs of each modality:

* ``pixels``      ridge on standardised raw CXR pixels (the shortcut a leak would open);
* ``pixels_pca``  ridge on the top 64 principal components of the pixels;
* ``true_ctr``    the generator's own cardiothoracic ratio (the cue the CXR does carry);
* ``cxr_oracle_cues`` ridge on the latent heart size, effusion and haze that drive the CXR
  cues: about the most any CXR encoder can reach;
* ``labs``        ridge on the 50 lab percentiles + 50 observed flags;
* ``ecg_signal``  ridge on simple features computed from the written [-1, 1] ECG;
* ``ecg_params``  ridge on the ECG "machine measurements" (HR, QRS, PR, QTc, axis, ST, Sokolow);

plus nodule detectability from local patch statistics, the fraction of pixel variance that
physiology explains, and the generation time of a cohort. Everything is a linear model fitted on
60% of the patients and scored on the other 40%; no number here was used to tune the generator.

Run: ``python benchmarks/synthetic_cohort_audit.py --n-patients 4000 --image-size 32``.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time

import numpy as np

from pacx.data import synthetic as syn


def auroc(score: np.ndarray, label: np.ndarray) -> float:
    """Mann-Whitney AUROC with average ranks for ties."""
    score = np.asarray(score, dtype=np.float64)
    label = np.asarray(label).astype(bool)
    order = np.argsort(score, kind="mergesort")
    ranks = np.empty(score.size)
    sorted_scores = score[order]
    i = 0
    while i < score.size:
        j = i
        while j + 1 < score.size and sorted_scores[j + 1] == sorted_scores[i]:
            j += 1
        ranks[order[i : j + 1]] = 0.5 * (i + j) + 1.0
        i = j + 1
    n_pos, n_neg = label.sum(), (~label).sum()
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    return float((ranks[label].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def ridge_auroc(x: np.ndarray, y: np.ndarray, n_fit: int, lambdas=(1e-1, 1.0, 10.0, 100.0, 1000.0, 1e4)) -> float:
    """Held-out AUROC of a ridge classifier; the penalty is chosen on a split of the fit part."""
    x = np.asarray(x, dtype=np.float64).reshape(len(x), -1)
    y = np.asarray(y, dtype=np.float64)
    mu, sd = x[:n_fit].mean(0), x[:n_fit].std(0) + 1e-8
    z = (x - mu) / sd
    z = np.concatenate([z, np.ones((len(z), 1))], 1)
    n_inner = int(0.75 * n_fit)

    def fit(rows, lam):
        a = z[rows].T @ z[rows] + lam * np.eye(z.shape[1])
        a[-1, -1] -= lam  # no penalty on the intercept
        return np.linalg.solve(a, z[rows].T @ y[rows])

    inner, held = np.arange(n_inner), np.arange(n_inner, n_fit)
    best = max(lambdas, key=lambda lam: auroc(z[held] @ fit(inner, lam), y[held]))
    w = fit(np.arange(n_fit), best)
    return auroc(z[n_fit:] @ w, y[n_fit:])


def ecg_signal_features(ecg: np.ndarray) -> np.ndarray:
    """Simple, hand-made features of (B, T, 12) ECGs in [-1, 1]: amplitudes, slopes, spectrum."""
    x = ecg - np.median(ecg, axis=1, keepdims=True)
    q = np.percentile(x, [1, 5, 95, 99], axis=1).transpose(1, 0, 2).reshape(len(x), -1)
    slope = np.abs(np.diff(x, axis=1)).mean(1)
    spec = np.abs(np.fft.rfft(x - x.mean(1, keepdims=True), axis=1)) ** 2  # (B, F, 12)
    freqs = np.fft.rfftfreq(x.shape[1], 1.0 / syn.ECG_SAMPLING_RATE)
    edges = np.arange(0.5, 40.5, 0.5)
    bands = np.stack([spec[:, (freqs >= lo) & (freqs < lo + 0.5)].mean(1).mean(-1) for lo in edges[:-1]], 1)
    # Heart rate from the autocorrelation of the QRS energy envelope.
    env = np.abs(np.diff(x, axis=1)).sum(-1)
    env = env - env.mean(1, keepdims=True)
    f = np.fft.rfft(env, n=2 * env.shape[1], axis=1)
    ac = np.fft.irfft(f * np.conj(f), axis=1)[:, : env.shape[1]]
    lags = np.arange(ac.shape[1]) / syn.ECG_SAMPLING_RATE
    window = (lags > 60 / 180) & (lags < 60 / 35)
    hr = 60.0 / lags[window][np.argmax(ac[:, window], axis=1)]
    return np.concatenate([q, slope, np.log(bands + 1e-9), hr[:, None]], 1)


def nodule_patch_features(images: np.ndarray, lung_masks: np.ndarray) -> np.ndarray:
    """Local patch statistics: the top responses of a nodule-scale blob filter inside the lungs."""
    from scipy.ndimage import binary_erosion, gaussian_filter

    size = images.shape[-1]
    s1, s2 = 2.0 * size / 64, 5.0 * size / 64
    dog = gaussian_filter(images, (0, s1, s1)) - gaussian_filter(images, (0, s2, s2))
    erode = max(1, round(2 * size / 64))
    inside = np.stack([binary_erosion(m, iterations=erode) for m in lung_masks])
    flat = np.sort(np.where(inside, dog, -1.0).reshape(len(images), -1), axis=1)[:, ::-1]
    return flat[:, :20]


def audit(n_patients: int, image_size: int, seed: int, ecg_patients: int | None = None) -> dict:
    rng = np.random.default_rng(np.random.SeedSequence([seed, 99]))
    state = syn.sample_latent_state(n_patients, rng)
    raw, observed = syn.simulate_labs(state, rng)
    n_fit = int(0.6 * n_patients)
    pct, _ = syn.labs_to_percentiles(raw, raw[:n_fit])
    images, masks, ctrs, ecg_feats, ecg_params = [], [], [], [], []
    for lo in range(0, n_patients, 256):
        sub = {k: v[lo : lo + 256] for k, v in state.items()}
        img, mask, info = syn.render_cxr(sub, image_size, rng)
        images.append(img)
        masks.append(mask)
        ctrs.append(info["ctr"])
        if ecg_patients is None or lo < ecg_patients:
            ecg, p = syn.simulate_ecg(sub, rng)
            ecg_feats.append(ecg_signal_features(ecg))
            keys = ("hr", "qrs_ms", "pr_ms", "qtc_ms", "axis_deg", "st_mv", "sokolow_mv")
            ecg_params.append(np.stack([p[k] for k in keys], 1))
    images, masks = np.concatenate(images), np.concatenate(masks)
    ctr = np.concatenate(ctrs)
    oracle_cues = np.stack([state["heart_size"], state["effusion"], state["haze"]], 1)
    ecg_feats, ecg_params = np.concatenate(ecg_feats), np.concatenate(ecg_params)
    n_ecg = len(ecg_feats)
    pix = images.reshape(n_patients, -1)
    centred = pix - pix[:n_fit].mean(0)
    _, _, vt = np.linalg.svd(centred[:n_fit], full_matrices=False)
    pcs = centred @ vt[:64].T
    labs_x = np.concatenate([pct, observed], 1)

    results: dict[str, dict[str, float]] = {}
    for task in ("reduced_ef", "fluid_overload"):
        y = state[task]
        results[task] = {
            "prevalence": float(y.mean()),
            "pixels": ridge_auroc(pix, y, n_fit),
            "pixels_pca": ridge_auroc(pcs, y, n_fit),
            "true_ctr": auroc(ctr[n_fit:], y[n_fit:]),
            "cxr_oracle_cues": ridge_auroc(oracle_cues, y, n_fit),
            "labs": ridge_auroc(labs_x, y, n_fit),
            "ecg_signal": ridge_auroc(ecg_feats, y[:n_ecg], int(0.6 * n_ecg)),
            "ecg_params": ridge_auroc(ecg_params, y[:n_ecg], int(0.6 * n_ecg)),
            "labs+ecg_signal": ridge_auroc(np.concatenate([labs_x[:n_ecg], ecg_feats], 1), y[:n_ecg], int(0.6 * n_ecg)),
        }
    y = state["nodule"]
    results["nodule"] = {
        "prevalence": float(y.mean()),
        "pixels": ridge_auroc(pix, y, n_fit),
        "pixels_pca": ridge_auroc(pcs, y, n_fit),
        "patch_stats": ridge_auroc(nodule_patch_features(images, masks), y, n_fit),
        "labs": ridge_auroc(labs_x, y, n_fit),
    }
    return results


def variance_explained_by_physiology(n: int, image_size: int, seed: int) -> float:
    """Share of pixel variance due to physiology: render twice with the same nuisance, once with
    each patient's physiology and once with a fresh patient's, and compare the differences."""
    rng = np.random.default_rng(seed)
    a = syn.sample_latent_state(n, rng)
    b = syn.sample_latent_state(n, rng)
    swapped = dict(a)
    for k in ("heart_size", "effusion", "haze"):
        swapped[k] = b[k]
    img_a, _, _ = syn.render_cxr(a, image_size, np.random.default_rng(seed + 1))
    img_b, _, _ = syn.render_cxr(swapped, image_size, np.random.default_rng(seed + 1))
    # Var(physiology part) ~ E|x(a) - x(b)|^2 / 2 under the same nuisance; total = per-pixel variance.
    phys = 0.5 * ((img_a - img_b) ** 2).mean()
    total = img_a.var(axis=0).mean()
    return float(phys / total)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n-patients", type=int, default=4000)
    parser.add_argument("--image-size", type=int, default=32)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--ecg-patients", type=int, default=None)
    parser.add_argument("--timing-patients", type=int, default=0, help="also time make_cohort on this many")
    parser.add_argument("--variance-patients", type=int, default=1024,
                        help="patients rendered twice for the physiology share of pixel variance")
    args = parser.parse_args(argv)
    t = time.perf_counter()
    res = audit(args.n_patients, args.image_size, args.seed, args.ecg_patients)
    res["physiology_pixel_variance_share"] = variance_explained_by_physiology(args.variance_patients, args.image_size, args.seed)
    res["audit_seconds"] = time.perf_counter() - t
    if args.timing_patients:
        with tempfile.TemporaryDirectory() as tmp:
            t = time.perf_counter()
            root = syn.make_cohort(tmp, args.timing_patients, args.image_size, args.seed)
            res["make_cohort_seconds"] = time.perf_counter() - t
            res["make_cohort_reported"] = json.loads((root / "cohort.json").read_text())["generation_seconds"]
    print(json.dumps(res, indent=2))


if __name__ == "__main__":
    main()
