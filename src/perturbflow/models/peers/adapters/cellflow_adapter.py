"""CellFlow adapter: run by the peer environment's Python, never imported by perturbflow.

Usage: ``.venv-peers/cellflow/bin/python cellflow_adapter.py WORK_DIR``. It imports only numpy,
pandas, anndata, jax/optax and cellflow (PyPI ``cellflow-tools``), reads the request the main
process wrote (``request.json``, ``cells.h5ad``, ``gene_vectors.csv``; see
:mod:`perturbflow.models.peers.external`), fits CellFlow and writes ``predicted.h5ad`` (predicted
cells per requested condition, in gene space) and ``result.json`` (version, fit time, settings).

Settings: the flow runs in the first ``n_pcs`` principal components of the training cells
(centred on their mean; decoded back with the same loadings, as CellFlow's own
``centered_pca``/``reconstruct_pca`` do); each condition is the set of its genes' vectors (zero
vectors pad to the longest condition and are masked, CellFlow's ``null_value``); OT flow matching
(``otfm``) from control cells, plain Adam. Predicted cells start from stored control cells.
"""

from __future__ import annotations

import json
import sys
import time
from importlib.metadata import version
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd

PROTOCOL = 1
PAD = "__pad__"  # the token of an empty gene slot; its vector is zeros, which CellFlow masks


def _pca(matrix: np.ndarray, n_pcs: int) -> tuple[np.ndarray, np.ndarray]:
    """Mean ``(G,)`` and loadings ``(k, G)`` of ``matrix`` ``(cells, G)``."""
    mean = matrix.mean(axis=0)  # (G,)
    _, _, vt = np.linalg.svd(matrix - mean, full_matrices=False)  # (min(cells, G), G)
    return mean, vt[: min(n_pcs, vt.shape[0])]


def _gene_columns(conditions: dict[str, list[str]], names: list[str], width: int) -> pd.DataFrame:
    """One row per name: ``gene_1 … gene_width`` (sorted genes, padded with :data:`PAD`)."""
    rows = [sorted(conditions[name]) + [PAD] * (width - len(conditions[name])) for name in names]
    columns = [f"gene_{i + 1}" for i in range(width)]
    return pd.DataFrame(rows, columns=columns, index=pd.Index(names))


def _ode_options(steps: int | None) -> dict:
    """diffrax options of the prediction: ``steps`` fixed Tsit5 steps, or CellFlow's adaptive
    default (PID controller, rtol = atol = 1e-5) for ``None``."""
    if steps is None:
        return {}
    import diffrax

    return {
        "solver": diffrax.Tsit5(),
        "dt0": 1.0 / int(steps),
        "stepsize_controller": diffrax.ConstantStepSize(),
    }


def main(work_dir: Path) -> None:
    request = json.loads((work_dir / "request.json").read_text())
    if request["protocol"] != PROTOCOL:
        raise SystemExit(f"request protocol {request['protocol']}, this adapter speaks {PROTOCOL}")
    options = request["options"]
    seed = int(request["seed"])

    import jax
    import optax
    from cellflow.model import CellFlow

    started = time.perf_counter()
    cells = ad.read_h5ad(work_dir / request["files"]["cells"])
    matrix = np.asarray(cells.X, dtype=np.float32)  # (cells, G)
    vectors = pd.read_csv(work_dir / request["files"]["gene_vectors"], index_col=0)
    conditions = {name: list(genes) for name, genes in request["condition_genes"].items()}
    width = max(1, max(len(genes) for genes in conditions.values()))

    mean, loadings = _pca(matrix, int(options["n_pcs"]))  # (G,), (k, G)
    labels = cells.obs[request["condition_key"]].astype(str).to_numpy()
    control = labels == request["control"]
    obs = _gene_columns(conditions, list(labels), width).reset_index(drop=True)
    obs.index = cells.obs_names
    tokens = sorted({*vectors.index.astype(str), PAD})
    for column in obs.columns:
        obs[column] = pd.Categorical(obs[column], categories=tokens)
    obs["control"] = control
    train = ad.AnnData(X=matrix, obs=obs)
    train.obsm["X_pca"] = ((matrix - mean) @ loadings.T).astype(np.float32)  # (cells, k)
    train.uns["gene_vectors"] = {
        str(gene): row.astype(np.float32)
        for gene, row in zip(vectors.index, vectors.to_numpy(), strict=True)
    }
    train.uns["gene_vectors"][PAD] = np.zeros(vectors.shape[1], dtype=np.float32)

    model = CellFlow(train, solver="otfm")
    model.prepare_data(
        sample_rep="X_pca",
        control_key="control",
        perturbation_covariates={"genes": tuple(c for c in obs.columns if c.startswith("gene_"))},
        perturbation_covariate_reps={"genes": "gene_vectors"},
        max_combination_length=width,
        null_value=0.0,
    )
    model.prepare_model(
        condition_embedding_dim=int(options["condition_embedding_dim"]),
        cond_output_dropout=float(options["condition_dropout"]),
        pooling=options["pooling"],
        time_encoder_dims=tuple(options["time_encoder_dims"]),
        time_freqs=int(options["time_freqs"]),
        hidden_dims=tuple(options["hidden_dims"]),
        decoder_dims=tuple(options["decoder_dims"]),
        optimizer=optax.adam(float(options["learning_rate"])),
        seed=seed,
    )
    iterations = int(options["iterations"])
    model.train(
        num_iterations=iterations,
        batch_size=int(options["batch_size"]),
        valid_freq=iterations + 1,  # no validation pass: nothing held out is used
    )
    fitted = time.perf_counter()

    rng = np.random.default_rng(seed)
    control_index = np.flatnonzero(control)
    n_start = min(int(options["predicted_cells"]), len(control_index))
    start_index = np.sort(rng.choice(control_index, n_start, replace=False))
    start = ad.AnnData(
        X=matrix[start_index],
        obs=pd.DataFrame({"control": True}, index=cells.obs_names[start_index]),
    )
    start.obsm["X_pca"] = train.obsm["X_pca"][start_index]
    start.uns["gene_vectors"] = train.uns["gene_vectors"]  # predict reads the vectors from here
    names = [name for name in request["predict"] if conditions[name]]
    covariates = _gene_columns(conditions, names, width)
    for column in covariates.columns:
        covariates[column] = pd.Categorical(covariates[column], categories=tokens)
    covariates["control"] = False
    covariates["condition"] = names
    predicted = model.predict(
        start,
        covariate_data=covariates.reset_index(drop=True),
        condition_id_key="condition",
        rng=jax.random.PRNGKey(seed),
        **_ode_options(options.get("ode_steps")),
    )
    blocks = [np.asarray(predicted[name]) @ loadings + mean for name in names]  # (n, G) each
    out = ad.AnnData(
        X=np.vstack(blocks).astype(np.float32) if blocks else np.zeros((0, matrix.shape[1])),
        obs=pd.DataFrame(
            {
                request["condition_key"]: [
                    name for name, block in zip(names, blocks, strict=True) for _ in block
                ]
            },
            index=[f"pred{i}" for i in range(sum(len(block) for block in blocks))],
        ),
        var=pd.DataFrame(index=cells.var_names),
    )
    out.write_h5ad(work_dir / "predicted.h5ad")
    result = {
        "protocol": PROTOCOL,
        "peer": "cellflow",
        "version": version("cellflow-tools"),
        "versions": {name: version(name) for name in ("jax", "flax", "ott-jax")},
        "output": "cells",
        "file": "predicted.h5ad",
        "fit_s": fitted - started,
        "predict_s": time.perf_counter() - fitted,
        "settings": {
            **options,
            "n_pcs_used": int(loadings.shape[0]),
            "max_combination_length": width,
            "start_cells": int(n_start),
            "devices": [str(device) for device in jax.devices()],
        },
    }
    (work_dir / "result.json").write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main(Path(sys.argv[1]))
