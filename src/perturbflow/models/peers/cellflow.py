"""CellFlow (PyPI ``cellflow-tools`` 0.0.9, JAX) as a peer, run in ``.venv-peers/cellflow``.

CellFlow pins ``scikit-learn==1.5.1`` and ``scipy<1.16``, so it cannot share perturbflow's
environment: ``perturbflow peers install cellflow`` makes its own (JAX CPU wheels), and
:class:`CellFlowModel` runs it through files (:mod:`perturbflow.models.peers.external`;
the adapter is ``adapters/cellflow_adapter.py``). Registered as ``cellflow`` when that
environment exists; ``cellflow[go]`` sets the gene vectors.

Settings (every one a field of :class:`CellFlowConfig`):

* Gene vectors are the ones our models get: ``data`` (the correlation embedding of the training
  cells, ``n_components`` dimensions, as ``ridge``), or a prior source or table (``go``,
  ``text``, ``go+ppi``, a CSV; :func:`perturbflow.programs.priors.prior_gene_table`). A gene
  without a vector (or with an all-zero one, which CellFlow would take for padding) gets the mean
  vector of the training perturbed genes, with a warning.
* A condition is the set of its genes' vectors, padded to the longest condition; CellFlow's
  set encoder (``pooling``, default attention over tokens) makes one condition embedding.
* The flow is OT flow matching (``otfm``) from control cells to perturbed cells in the first
  ``n_pcs`` (50) principal components of the training cells, decoded back to genes.
* Network sizes are reduced from CellFlow's GPU defaults (time encoder and velocity field of
  3 × 2048, decoder 3 × 4096) to 2 × 256 / 2 × 512 so that it trains on CPU in minutes;
  ``iterations`` (2000) of ``batch_size`` (256) cells with Adam at ``learning_rate`` (1e-4;
  CellFlow's default is Adam 5e-5 accumulated over 20 steps). ``condition_dropout`` is
  CellFlow's ``cond_output_dropout`` (its default 0.9).
* Predictions start from ``predicted_cells`` (500) control cells of the training data and
  integrate the flow with ``ode_steps`` (20) fixed Tsit5 steps (CellFlow's adaptive default,
  rtol = atol = 1e-5, took over 5 minutes for 33 conditions on 2 CPU cores); ``predict`` draws
  from those predicted cells. The validation and test conditions are predicted at fit time. Training uses the training conditions only (no validation
  selection), seeded by ``seed``; fully offline, CPU only (``JAX_PLATFORMS=cpu``).
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pandas as pd

from perturbflow.data.conditions import parse_condition
from perturbflow.data.io import PerturbationDataset
from perturbflow.models.baselines.mean_shift import MAX_STORED_CONTROL_CELLS
from perturbflow.models.peers.external import EnvPeerModel
from perturbflow.programs.priors import (
    check_embedding_spec,
    correlation_embedding,
    prior_gene_table,
)

logger = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class CellFlowConfig:
    """Options of the CellFlow peer (see the module docstring for what each does).

    gene_embedding: ``data``, a prior source (``go``, ``text``, ``go+ppi``) or a table path.
    priors: data folder holding ``priors/``. n_components: size of the ``data`` vectors.
    n_pcs: principal components the flow runs in. iterations, batch_size, learning_rate: training.
    predicted_cells: control cells each condition's prediction starts from. ode_steps: fixed
    Tsit5 steps of the prediction (``None``: CellFlow's adaptive solver, minutes per condition
    on CPU).
    timeout_s: stop the peer after this many seconds (``None``: no limit).
    """

    gene_embedding: str = "data"
    priors: str | None = None
    n_components: int = 32
    n_pcs: int = 50
    iterations: int = 2000
    batch_size: int = 256
    learning_rate: float = 1e-4
    condition_embedding_dim: int = 64
    condition_dropout: float = 0.9
    pooling: str = "attention_token"
    time_freqs: int = 128
    time_encoder_dims: tuple[int, ...] = (256, 256)
    hidden_dims: tuple[int, ...] = (512, 512)
    decoder_dims: tuple[int, ...] = (512, 512)
    predicted_cells: int = 500
    ode_steps: int | None = 20
    max_control_cells: int = MAX_STORED_CONTROL_CELLS
    timeout_s: float | None = None
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("n_components", "n_pcs", "iterations", "batch_size", "predicted_cells"):
            if getattr(self, name) < 1:
                raise ValueError(f"CellFlowConfig.{name} must be at least 1")
        if self.learning_rate <= 0:
            raise ValueError(
                f"CellFlowConfig.learning_rate must be positive, got {self.learning_rate}"
            )
        if self.pooling not in ("mean", "attention_token", "attention_seed"):
            raise ValueError(
                "CellFlowConfig.pooling must be mean, attention_token or attention_seed, "
                f"got {self.pooling!r}"
            )
        check_embedding_spec(self.gene_embedding, "gene_embedding")
        for name in ("time_encoder_dims", "hidden_dims", "decoder_dims"):
            object.__setattr__(self, name, tuple(int(v) for v in getattr(self, name)))


class CellFlowModel(EnvPeerModel):
    """CellFlow (flow matching on cells, JAX) run in its own environment; see the module docstring."""

    name: ClassVar[str] = "cellflow"
    peer: ClassVar[str] = "cellflow"
    config_class: ClassVar[type] = CellFlowConfig
    variant_field: ClassVar[str] = "gene_embedding"
    predicts_training: ClassVar[bool] = False  # each condition costs an ODE solve

    def _peer_options(self) -> dict[str, Any]:
        skip = {
            "gene_embedding",
            "priors",
            "n_components",
            "max_control_cells",
            "timeout_s",
            "seed",
        }
        values = dataclasses.asdict(self.config)
        return {key: value for key, value in values.items() if key not in skip}

    def _peer_inputs(
        self, work: Path, dataset: PerturbationDataset, parts: dict[str, list[str]], predict
    ) -> dict[str, str]:
        config = self.config
        train = parts["train"]
        if config.gene_embedding == "data":
            cells = dataset.matrix(train)  # (N_train, G): control + training conditions only
            table = correlation_embedding(cells, dataset.genes, config.n_components)
        else:
            table = prior_gene_table(
                config.gene_embedding, dataset.genes, dataset.perturbed_genes, config.priors
            )
        vectors = gene_vectors(table, train, predict)
        vectors.to_csv(work / "gene_vectors.csv")
        return {"gene_vectors": "gene_vectors.csv"}


def gene_vectors(table: pd.DataFrame, train: list[str], predict: list[str]) -> pd.DataFrame:
    """One non-zero vector per gene of the ``train`` and ``predict`` conditions, ``(genes, dims)``.

    A gene absent from ``table`` or with an all-zero row (CellFlow masks zero vectors as
    padding) gets the mean vector of the training perturbed genes that have one, with a warning.
    """
    genes = sorted({gene for name in [*train, *predict] for gene in parse_condition(name)})
    values = table.reindex(genes).to_numpy(np.float64)  # (g, d), NaN where absent
    usable = np.isfinite(values).all(axis=1) & (np.abs(np.nan_to_num(values)).sum(axis=1) > 0)
    trained = {gene for name in train for gene in parse_condition(name)}
    known = [i for i, gene in enumerate(genes) if usable[i] and gene in trained]
    if not usable.all():
        if not known:
            raise ValueError(
                "no perturbed gene has a gene vector; choose another gene_embedding for cellflow"
            )
        fallback = values[known].mean(axis=0)  # (d,)
        missing = [gene for i, gene in enumerate(genes) if not usable[i]]
        logger.warning(
            "cellflow: %d gene(s) have no usable vector and get the mean vector of the "
            "training perturbed genes: %s",
            len(missing),
            ", ".join(missing[:10]) + (" …" if len(missing) > 10 else ""),
        )
        values[~usable] = fallback
    return pd.DataFrame(values.astype(np.float32), index=pd.Index(genes), columns=table.columns)
