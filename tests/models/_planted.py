"""Planted screens shared by model tests: known rules of how singles combine into doubles."""

from __future__ import annotations

import itertools

import anndata as ad
import numpy as np
import pandas as pd

from perturbflow.data import read
from perturbflow.data.splits import Split

N_GENES = 30
N_SINGLES = 12


def planted_doubles(residual_rule, seed: int = 0, n_doubles: int = 40):
    """Singles with random deltas and doubles ``s + residual_rule(s, rng)``, ``s = δA + δB``."""
    rng = np.random.default_rng(seed)
    singles = {f"P{i}": rng.normal(0.0, 0.5, N_GENES) for i in range(N_SINGLES)}
    pairs = list(itertools.combinations(sorted(singles), 2))
    chosen = [pairs[k] for k in rng.choice(len(pairs), n_doubles, replace=False)]
    doubles = {}
    for a, b in chosen:
        summed = singles[a] + singles[b]
        doubles[f"{a}+{b}"] = summed + residual_rule(summed, rng)
    return singles, doubles


def low_rank_map(seed: int = 5) -> np.ndarray:
    """A planted rank-2 ``(G, G)`` map of the summed response to the residual."""
    rng = np.random.default_rng(seed)
    return 0.4 * rng.normal(size=(N_GENES, 2)) @ rng.normal(size=(2, N_GENES)) / np.sqrt(N_GENES)


def network_screen(seed: int = 0):
    """A planted screen: control + 12 singles + 40 doubles with a low-rank residual map.

    Returns the dataset, the planted deltas and a split: 26 training doubles (with every single),
    4 validation doubles, 10 test doubles.
    """
    planted = low_rank_map()
    singles, doubles = planted_doubles(lambda s, rng: s @ planted.T, seed=seed)
    rng = np.random.default_rng(seed + 1)
    base = rng.uniform(5.0, 6.0, N_GENES)
    noise = rng.normal(0.0, 0.2, (10, N_GENES))
    control = base + noise - noise.mean(axis=0)  # mean exactly ``base``
    deltas = {**singles, **doubles}
    blocks = [control] + [control + delta for delta in deltas.values()]
    labels = ["ctrl"] * 10 + [name for name in deltas for _ in range(10)]
    adata = ad.AnnData(
        X=np.vstack(blocks).astype(np.float32),
        obs=pd.DataFrame({"condition": labels}, index=[f"c{i}" for i in range(len(labels))]),
        var=pd.DataFrame(index=[f"G{i:02d}" for i in range(N_GENES)]),
    )
    names = sorted(doubles)
    split = Split(
        kind="custom",
        seed=0,
        train=("ctrl", *singles, *names[:26]),
        val=tuple(names[26:30]),
        test=tuple(names[30:]),
        subgroups=dict.fromkeys(names[26:], "combo_seen2"),
    )
    return read(adata), deltas, split
