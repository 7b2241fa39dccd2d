"""Peers that run in their own environment, behind the one model interface: an adapter over files.

``fit`` writes the peer's inputs to a temporary folder, runs the peer's adapter script with the
peer environment's Python (:func:`perturbflow.models.peers.envs.run_adapter`) and reads back what
it predicted for every condition of the split; ``predict`` and ``predict_delta`` then answer from
those predictions, and a checkpoint holds them (it predicts without the peer environment).

The files (protocol 1; paths relative to the folder):

* ``request.json``: ``protocol``, ``peer``, ``seed``, ``control`` (``"ctrl"``),
  ``condition_key`` (``"condition"``), ``train`` / ``val`` / ``predict`` (condition names),
  ``condition_genes`` (name → its genes, sorted; control ``[]``: conditions are parsed here, never
  in an adapter), ``options`` (the peer's settings) and ``files`` (name → file of the inputs).
* ``cells.h5ad``: the cells of the training conditions (control included; validation ones too
  for a peer that selects on them), dense float32 ``X`` in the dataset's gene order,
  ``obs["condition"]`` and ``obs["part"]`` (``train``/``val``).
* peer-specific inputs named in ``files`` (CellFlow: ``gene_vectors.csv``).

The adapter writes ``result.json`` (``protocol``, ``peer``, ``version``, ``output`` = ``cells`` or
``delta``, ``file``, ``fit_s``, ``settings``, optionally ``skipped``: name → reason) and either
``predicted.h5ad`` (predicted cells, ``obs["condition"]``) or ``predicted_delta.csv`` (condition ×
genes mean change vs control).
"""

from __future__ import annotations

import json
import logging
import tempfile
from collections.abc import Iterable
from pathlib import Path
from typing import Any, ClassVar

import anndata as ad
import numpy as np
import pandas as pd

from perturbflow.data.conditions import CONTROL_NAME, parse_condition
from perturbflow.data.io import PerturbationDataset
from perturbflow.data.splits import Split
from perturbflow.models.base import config_to_dict, predictions_to_anndata
from perturbflow.models.baselines.mean_shift import MeanShiftModel, recentre
from perturbflow.models.peers.envs import (
    PeerCannotPredictError,
    PeerRunError,
    require_env,
    run_adapter,
)

logger = logging.getLogger(__name__)

PROTOCOL = 1
CONDITION_KEY = "condition"  # obs column of conditions in the protocol's files


class PeerConditionError(PeerCannotPredictError):
    """A condition the peer made no prediction for (outside the split it was fitted on, or
    skipped by the peer)."""


class EnvPeerModel(MeanShiftModel):
    """Base of peers run in their environment. Subclasses set ``peer`` (the environment's name)
    and may add inputs (:meth:`_peer_inputs`) and train on validation cells too
    (``parts = ("train", "val")``); ``predicts_training = False`` asks the peer for the
    validation and test conditions only. The config needs ``seed``, ``max_control_cells`` and
    ``timeout_s`` fields."""

    peer: ClassVar[str] = ""
    parts: ClassVar[tuple[str, ...]] = ("train",)
    predicts_training: ClassVar[bool] = True  # also predict the training conditions at fit

    def __init__(self, config: Any = None) -> None:
        super().__init__(config)
        self.peer_cells_: dict[str, np.ndarray] = {}  # condition → (n, G) predicted cells
        self.peer_deltas_: pd.DataFrame | None = None  # (conditions, G)
        self.peer_result_: dict[str, Any] = {}  # the adapter's result.json

    @property
    def peer_version_(self) -> str | None:
        """Version of the peer's package that made the predictions."""
        return self.peer_result_.get("version")

    # -- fitting -------------------------------------------------------------------------------
    def fit(self, dataset: PerturbationDataset, split: Split, config: Any = None) -> EnvPeerModel:
        """Fit the peer in its environment on ``split``'s training cells; keep its predictions
        for every condition of the split (names only reach the peer for val and test)."""
        require_env(self.peer)  # before any work: the error names the install command
        super().fit(dataset, split, config)
        present = set(dataset.conditions)
        parts = {part: [n for n in getattr(split, part) if n in present] for part in self.parts}
        wanted = [*(split.train if self.predicts_training else ()), *split.val, *split.test]
        predict = [name for name in dict.fromkeys(wanted) if name != CONTROL_NAME]
        parts = self._select(dataset, parts, predict)
        with tempfile.TemporaryDirectory(prefix=f"perturbflow-{self.peer}-") as folder:
            work = Path(folder)
            files = {"cells": "cells.h5ad", **self._peer_inputs(work, dataset, parts, predict)}
            _training_cells(dataset, parts).write_h5ad(work / files["cells"])
            request = {
                "protocol": PROTOCOL,
                "peer": self.peer,
                "seed": int(self.config.seed),
                "control": CONTROL_NAME,
                "condition_key": CONDITION_KEY,
                "train": parts["train"],
                "val": parts.get("val", []),
                "predict": predict,
                "condition_genes": {
                    name: sorted(parse_condition(name))
                    for name in dict.fromkeys([*parts["train"], *parts.get("val", []), *predict])
                },
                "options": self._peer_options(),
                "files": files,
            }
            (work / "request.json").write_text(json.dumps(request, indent=2))
            run_adapter(self.peer, work, timeout_s=self.config.timeout_s)
            self._read_outputs(work)
        logger.info(
            "%s peer (%s %s): fitted in %.1f s in its environment; %d condition(s) predicted",
            self.peer,
            self.peer_result_.get("peer"),
            self.peer_version_,
            self.peer_result_.get("fit_s", float("nan")),
            len(self.peer_deltas_),
        )
        return self

    def _select(
        self, dataset: PerturbationDataset, parts: dict[str, list[str]], predict: list[str]
    ) -> dict[str, list[str]]:
        """The conditions of each part the peer can train on (default: all of them). A peer that
        cannot predict some of ``predict`` raises :class:`PeerCannotPredictError` here, before
        it spends its training time."""
        return parts

    def _peer_inputs(
        self, work: Path, dataset: PerturbationDataset, parts: dict[str, list[str]], predict
    ) -> dict[str, str]:
        """Write peer-specific input files into ``work``; returns name → file name."""
        return {}

    def _peer_options(self) -> dict[str, Any]:
        """The settings passed to the adapter (JSON)."""
        return {}

    def _read_outputs(self, work: Path) -> None:
        path = work / "result.json"
        if not path.exists():
            raise PeerRunError(f"the {self.peer} adapter exited without writing {path.name}")
        result = json.loads(path.read_text())
        if result.get("protocol") != PROTOCOL or result.get("output") not in ("cells", "delta"):
            raise PeerRunError(
                f"the {self.peer} adapter answered protocol {result.get('protocol')!r} with "
                f"output {result.get('output')!r}; expected protocol {PROTOCOL}, cells or delta"
            )
        genes = list(map(str, self.genes_))
        if result["output"] == "cells":
            cells = ad.read_h5ad(work / result["file"])
            if list(map(str, cells.var_names)) != genes:
                raise PeerRunError(f"the {self.peer} adapter returned cells of other genes")
            labels = cells.obs[CONDITION_KEY].astype(str).to_numpy()
            matrix = np.asarray(cells.X, dtype=np.float32)  # (cells, G)
            self.peer_cells_ = {name: matrix[labels == name] for name in dict.fromkeys(labels)}
            means = {name: pool.mean(axis=0) for name, pool in self.peer_cells_.items()}
            deltas = pd.DataFrame(means, index=genes).T - self.control_mean_
        else:
            deltas = pd.read_csv(work / result["file"], index_col=0)
            deltas.columns = deltas.columns.astype(str)
            if list(deltas.columns) != genes:
                raise PeerRunError(f"the {self.peer} adapter returned deltas of other genes")
            self.peer_cells_ = {}
        deltas.index = deltas.index.astype(str)
        self.peer_deltas_ = deltas.astype(np.float64)
        self.peer_result_ = result
        if result.get("skipped"):
            logger.warning(
                "%s peer made no prediction for %d condition(s): %s",
                self.peer,
                len(result["skipped"]),
                dict(list(result["skipped"].items())[:5]),
            )

    # -- prediction ----------------------------------------------------------------------------
    def _check_fitted(self) -> None:
        super()._check_fitted()
        if self.peer_deltas_ is None:
            raise PeerRunError(f"{self.name}: no peer predictions; call fit() or load()")

    def _delta(self, condition: frozenset[str], name: str) -> np.ndarray:
        if name not in self.peer_deltas_.index:
            reason = self.peer_result_.get("skipped", {}).get(name)
            raise PeerConditionError(
                f"{self.name}: no prediction for {name!r}: "
                + (
                    f"the peer skipped it ({reason})"
                    if reason
                    else "a peer in its own environment predicts the conditions of the split it "
                    "was fitted on; refit with a split that names this condition"
                )
            )
        return self.peer_deltas_.loc[name].to_numpy()

    def predict(self, conditions: Iterable[str], n_cells: int = 100, seed: int = 0) -> ad.AnnData:
        """Cells drawn from the peer's predicted cells of each condition (moved as a group onto
        their mean, like every mean-shift model's); control cells + delta for a peer that
        predicts means only."""
        if n_cells < 1:
            raise ValueError(f"n_cells must be at least 1, got {n_cells}")
        deltas = self.predict_delta(conditions)
        rng = np.random.default_rng(seed)
        blocks = {}
        for name, delta in deltas.iterrows():
            pool = self.peer_cells_.get(name)
            if pool is None:
                pool, mean = self.control_cells_, self.control_mean_ + delta.to_numpy()
            else:
                mean = pool.mean(axis=0)
            index = rng.choice(len(pool), n_cells, replace=n_cells > len(pool))
            blocks[name] = recentre(pool[index], mean.astype(np.float32))  # (n, G)
        uns = {
            "model": self.name,
            "seed": seed,
            "config": _jsonable(self.config),
            "peer": {k: v for k, v in self.peer_result_.items() if k != "settings"},
        }
        return predictions_to_anndata(blocks, self.genes_, uns)

    # -- persistence ---------------------------------------------------------------------------
    def _state(self) -> dict[str, np.ndarray]:
        names = list(self.peer_cells_)
        sizes = [len(self.peer_cells_[name]) for name in names]
        cells = (
            np.vstack([self.peer_cells_[name] for name in names])
            if names
            else np.zeros((0, len(self.genes_)), np.float32)
        )
        return {
            "peer_result": np.asarray(json.dumps(self.peer_result_)),
            "peer_delta_conditions": np.asarray(self.peer_deltas_.index, dtype=str),
            "peer_deltas": self.peer_deltas_.to_numpy(),
            "peer_cell_conditions": np.asarray(names, dtype=str),
            "peer_cell_counts": np.asarray(sizes, dtype=np.int64),
            "peer_cells": cells,
        }

    def _set_state(self, arrays: dict[str, np.ndarray]) -> None:
        self.peer_result_ = json.loads(str(arrays["peer_result"]))
        self.peer_deltas_ = pd.DataFrame(
            arrays["peer_deltas"],
            index=arrays["peer_delta_conditions"].astype(str),
            columns=self.genes_,
        )
        bounds = np.cumsum([0, *arrays["peer_cell_counts"].tolist()])
        self.peer_cells_ = {
            str(name): arrays["peer_cells"][bounds[i] : bounds[i + 1]]
            for i, name in enumerate(arrays["peer_cell_conditions"])
        }


def _training_cells(dataset: PerturbationDataset, parts: dict[str, list[str]]) -> ad.AnnData:
    """The cells of ``parts``' conditions as the protocol's ``cells.h5ad``."""
    part_of: dict[str, str] = {}
    for part, members in parts.items():  # a name in two parts belongs to the first
        for name in members:
            part_of.setdefault(name, part)
    subset = dataset.subset(list(part_of))
    labels = subset.condition_labels.astype(str).to_numpy()
    matrix = subset.adata.X
    dense = np.asarray(matrix.toarray() if hasattr(matrix, "toarray") else matrix, np.float32)
    obs = pd.DataFrame(
        {CONDITION_KEY: labels, "part": [part_of[label] for label in labels]},
        index=pd.Index([f"cell{i}" for i in range(len(labels))]),
    )
    return ad.AnnData(X=dense, obs=obs, var=pd.DataFrame(index=pd.Index(dataset.genes)))


def _jsonable(config: Any) -> dict[str, Any]:
    return json.loads(json.dumps(config_to_dict(config), default=str))
