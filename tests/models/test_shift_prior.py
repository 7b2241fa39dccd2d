"""The additive starting point of scbig: per-gene shifts and the unseen-gene ridge fallback."""

from __future__ import annotations

import numpy as np
import pandas as pd

from perturbflow.models.scbig.shift_prior import AdditiveShiftPrior, loo_ridge_alpha


def _singles(features: np.ndarray, coef: np.ndarray, noise: float, seed: int = 0):
    rng = np.random.default_rng(seed)
    deltas = features @ coef + noise * rng.normal(size=(len(features), coef.shape[1]))
    genes = [f"S{i}" for i in range(len(features))]
    return genes, {g: d for g, d in zip(genes, deltas, strict=True)}


def test_loo_alpha_is_small_for_an_informative_prior_and_infinite_for_noise():
    rng = np.random.default_rng(1)
    features = rng.normal(size=(30, 4))
    coef = rng.normal(size=(4, 50))
    informative = features @ coef
    centred = features - features.mean(axis=0)
    assert loo_ridge_alpha(centred, informative - informative.mean(axis=0)) <= 1.0
    noise = rng.normal(size=(30, 50))
    assert loo_ridge_alpha(centred, noise - noise.mean(axis=0)) == float("inf")
    assert loo_ridge_alpha(centred[:2], noise[:2]) == float("inf")  # too few singles


def test_loo_residuals_match_refitting_without_each_gene():
    rng = np.random.default_rng(2)
    x = rng.normal(size=(8, 3))
    y = rng.normal(size=(8, 5))
    x, y = x - x.mean(axis=0), y - y.mean(axis=0)
    alpha = 1.0
    hat = x @ np.linalg.solve(x.T @ x + alpha * np.eye(3), x.T)
    shortcut = (y - hat @ y) / (1 - np.diag(hat) - 1 / 8)[:, None]
    for i in range(8):
        keep = np.arange(8) != i
        xm, ym = x[keep].mean(axis=0), y[keep].mean(axis=0)
        xs, ys = x[keep] - xm, y[keep] - ym
        coef = np.linalg.solve(xs.T @ xs + alpha * np.eye(3), xs.T @ ys)
        np.testing.assert_allclose(y[i] - (ym + (x[i] - xm) @ coef), shortcut[i], atol=1e-10)


def test_unseen_gene_gets_the_ridge_prediction_or_the_mean():
    rng = np.random.default_rng(3)
    features = rng.normal(size=(25, 3))
    coef = rng.normal(size=(3, 10))
    genes, deltas = _singles(features, coef, noise=0.01)
    new = np.array([1.0, -1.0, 0.5])
    prior = pd.DataFrame(np.vstack([features, new]), index=[*genes, "NEW"])
    model = AdditiveShiftPrior(deltas, 10, prior, unseen="ridge")
    assert np.isfinite(model.alpha) and model.alpha <= 1.0
    np.testing.assert_allclose(model.gene_delta("NEW"), new @ coef, atol=0.02)
    mean = np.mean(list(deltas.values()), axis=0)
    mean_only = AdditiveShiftPrior(deltas, 10, prior, unseen="mean")
    np.testing.assert_allclose(mean_only.gene_delta("NEW"), mean, rtol=1e-5)
    np.testing.assert_allclose(model.gene_delta("S0"), deltas["S0"], rtol=1e-5)
    # A prior unrelated to the deltas is shrunk away: the unseen gene gets the mean delta.
    noise_prior = pd.DataFrame(rng.normal(size=(26, 3)), index=[*genes, "NEW"])
    _, noisy = _singles(features, np.zeros((3, 10)), noise=1.0, seed=4)
    shrunk = AdditiveShiftPrior(noisy, 10, noise_prior, unseen="ridge")
    loose = AdditiveShiftPrior(noisy, 10, noise_prior, unseen="ridge", alpha=0.01)
    noisy_mean = np.mean(list(noisy.values()), axis=0)
    assert shrunk.alpha >= 100
    assert (
        np.abs(shrunk.gene_delta("NEW") - noisy_mean).max()
        < 0.3 * np.abs(loose.gene_delta("NEW") - noisy_mean).max()
    )
