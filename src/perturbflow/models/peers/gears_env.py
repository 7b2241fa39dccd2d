"""GEARS run in its own environment (``perturbflow peers install gears``), through files.

The same GEARS as :class:`perturbflow.models.peers.gears.GearsModel` with the same offline
preparation done here (gene → GO table, GO graph, GEARS spellings, custom split); the adapter
``adapters/gears_adapter.py`` only trains GEARS and returns its mean shift per condition
(``GEARS.predict``'s 300-cell average, as the in-process model computes it). Registered as
``gears`` when cell-gears is not installed in-process but ``.venv-peers/gears`` exists.
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path
from typing import Any, ClassVar

from perturbflow.data.io import PerturbationDataset
from perturbflow.models.peers.external import EnvPeerModel
from perturbflow.models.peers.gears import (
    GearsConfig,
    gears_condition,
    gears_conditions,
    go_similarity_edges,
    write_gears_files,
)

logger = logging.getLogger(__name__)

_DATASET_NAME = "perturbflow"  # GEARS's dataset name: names its files inside the work folder


class GearsEnvModel(EnvPeerModel):
    """GEARS in its own environment: delta = GEARS's shift; cells = control + delta."""

    name: ClassVar[str] = "gears"
    peer: ClassVar[str] = "gears"
    config_class: ClassVar[type] = GearsConfig
    parts: ClassVar[tuple[str, ...]] = ("train", "val")  # GEARS picks its best epoch on val

    def _select(
        self, dataset: PerturbationDataset, parts: dict[str, list[str]], predict: list[str]
    ) -> dict:
        fitted = {*parts["train"], *parts["val"]}
        test = [name for name in predict if name not in fitted]  # what the split holds out
        self._gene2go, train, val = gears_conditions(
            dataset, parts["train"], parts["val"], self.config.go_table, predict=test
        )
        return {"train": train, "val": val}

    def _peer_options(self) -> dict[str, Any]:
        skip = {"go_table", "work_dir", "max_control_cells", "timeout_s", "seed", "device"}
        values = dataclasses.asdict(self.config)
        return {key: value for key, value in values.items() if key not in skip}

    def _peer_inputs(
        self, work: Path, dataset: PerturbationDataset, parts: dict[str, list[str]], predict
    ) -> dict[str, str]:
        gene2go = self._gene2go
        split = {
            "train": [gears_condition(name) for name in parts["train"]],
            "val": [gears_condition(name) for name in parts["val"]],
            "test": [],
        }
        data = write_gears_files(work, gene2go, split)
        # GEARS's make_GO reads this file when present instead of forking 25 processes.
        go_similarity_edges(gene2go, sorted(gene2go)).to_csv(
            data / f"go_essential_{_DATASET_NAME}.csv", index=False
        )
        return {
            "gene2go": "data/gene2go_all.pkl",
            "perturbable_genes": "perturbable_genes.pkl",
            "split": "split.pkl",
            "go_edges": f"data/go_essential_{_DATASET_NAME}.csv",
        }
