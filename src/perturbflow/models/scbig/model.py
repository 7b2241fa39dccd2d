"""scBIG-style module-inductive flow matching behind the one model interface.

``fit`` learns gene programs (GRC) from training cells, trains an autoencoder whose encoder is
aware of those programs (GCAE), fits the start model (a baseline's prediction per condition),
then a conditional flow in the latent space from start cells (control cells shifted by the
start's delta) to the cells of each training condition. How much of the flow's mean change to keep
is chosen per condition kind on an inner cross-validation fold of the training conditions.
``predict`` encodes start cells, integrates the flow for the requested condition (seen, new
combination or unseen gene) and decodes whole cells.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Iterable
from pathlib import Path
from typing import Any, ClassVar

import anndata as ad
import lightning as L
import numpy as np
import pandas as pd
import scipy.sparse as sp
import torch
from scipy.spatial.distance import cdist

from perturbflow import __version__
from perturbflow.data.conditions import CONTROL_NAME, parse_condition
from perturbflow.data.io import PerturbationDataset
from perturbflow.data.splits import Split, combo_subgroup
from perturbflow.models.base import (
    CheckpointError,
    ModelNotFittedError,
    match_gene_names,
    predictions_to_anndata,
    read_checkpoint,
    register_model,
    stacked_predictions_to_anndata,
    write_checkpoint,
)
from perturbflow.models.baselines.calibrated import CalibratedAdditive, CalibratedAdditiveConfig
from perturbflow.models.baselines.combinator import Combinator, CombinatorConfig
from perturbflow.models.baselines.context import fit_context_calibration
from perturbflow.models.condition_encoder import ConditionEncoder, ConditionEncoderConfig
from perturbflow.models.flow import VelocityField, integrate
from perturbflow.models.scbig.config import (
    COMBINATOR_DE_GENES,
    COMBINATOR_WEIGHT_GRID,
    MEAN_WEIGHT_GRID,
    SHAPE_WEIGHT_GRID,
    ScBIGConfig,
)
from perturbflow.models.scbig.modules import (
    N_DELTA_POOLS,
    ConditionModel,
    PCAAutoencoder,
    build_autoencoder,
    pooled_program_deltas,
)
from perturbflow.models.scbig.objectives import AutoencoderObjective, FlowObjective
from perturbflow.programs.genesets import gene_sets_to_membership, read_gmt
from perturbflow.programs.grc import (
    GenePrograms,
    GRCConfig,
    gene_relation_clustering,
    random_programs,
)
from perturbflow.programs.priors import (
    PriorBundle,
    correlation_embedding,
    is_table_path,
    prior_gene_table,
    relation_graph,
    with_data_embedding,
)
from perturbflow.programs.relations import coexpression_knn_graph
from perturbflow.train import StepPlan, TrainerSettings, fit_objective

logger = logging.getLogger(__name__)

_ENCODE_BATCH = 2048
_PREDICT_ROWS = 4096  # predicted cells computed together, whole conditions at a time
_VALIDATION_CELLS = 256  # cells per held-out condition when choosing the flow's weights
_SHAPE_PCS = 50  # control principal components on which the shape weight's energy is measured
CONDITION_KINDS = ("seen_single", "unseen_single", "combo_seen0", "combo_seen1", "combo_seen2")


def condition_kind(name: str, seen: frozenset[str]) -> str:
    """``seen_single`` / ``unseen_single`` for one gene, else ``combo_seen{k}`` (``k`` genes with a
    training single among ``seen``), as the split subgroups count them."""
    genes = parse_condition(name)
    if len(genes) == 1:
        return "seen_single" if genes <= seen else "unseen_single"
    return combo_subgroup(genes, seen)


@dataclasses.dataclass
class FlowStart:
    """Where the flow starts (``ScBIGConfig.start``) and the calibrated additive model whose single
    deltas condition the flow and whose seen genes define the condition kinds."""

    kind: str
    additive: CalibratedAdditive
    combinator: Combinator | None = None

    @property
    def seen(self) -> frozenset[str]:
        """Genes with a training single."""
        return frozenset(self.additive.estimator_.genes)

    def shifts(
        self,
        conditions: list[str],
        hidden: list[frozenset[str]] | None = None,
        in_context: bool = False,
        cross_fit: bool = False,
    ) -> np.ndarray:
        """The start model's deltas ``(C, G)``; ``hidden`` genes are treated as never perturbed.

        ``in_context``: a prediction in the split's target context, calibrated to it as
        ``calibrated_additive`` is (the identity off context splits); training conditions, pooled
        over contexts, are not. ``cross_fit``: a training combination gets the network map's
        residual fitted without it (``calibrated_additive`` start only).
        """
        if self.kind == "control" or not conditions:
            return np.zeros((len(conditions), len(self.additive.genes_)), np.float32)
        if self.kind == "combinator":
            shifts = self.combinator.shifts(conditions, hidden)
        else:
            shifts = self.additive.estimator_.shifts(conditions, hidden, cross_fit=cross_fit)
        if in_context:
            shifts = np.vstack([self.additive.context_.apply(row) for row in shifts])
        return shifts

    def combinator_offset(self, name: str, in_context: bool = False) -> np.ndarray:
        """For a combination, the combinator's delta minus the calibrated start's ``(G,)``; zeros
        for a single (the combinator is a model of combinations)."""
        return self.combinator_offsets([name], in_context=in_context)[0]

    def combinator_offsets(self, conditions: list[str], in_context: bool = False) -> np.ndarray:
        """:meth:`combinator_offset` of every condition, ``(C, G)``, one call to each model."""
        offsets = np.zeros((len(conditions), len(self.additive.genes_)), np.float32)  # (C, G)
        combos = [i for i, name in enumerate(conditions) if len(parse_condition(name)) >= 2]
        if not combos or self.combinator is None:
            return offsets
        names = [conditions[i] for i in combos]
        start = self.additive.estimator_.shifts(names)  # (c, G)
        combined = self.combinator.shifts(names)  # (c, G)
        if in_context:
            # The calibration is one affine map per gene, applied to each row alike.
            start = self.additive.context_.apply(start)
            combined = self.additive.context_.apply(combined)
        offsets[combos] = combined - start
        return offsets


def _prefixed(arrays: dict[str, np.ndarray], prefix: str) -> dict[str, np.ndarray]:
    """The arrays stored under ``prefix/``, keys without the prefix."""
    return {k.split("/", 1)[1]: v for k, v in arrays.items() if k.startswith(f"{prefix}/")}


def _condition_rows(dataset: PerturbationDataset, names: list[str]) -> dict[str, np.ndarray]:
    """Row indices ``(n_c,)`` of each condition's cells in storage order, in one pass."""
    labels = dataset.condition_labels.to_numpy()
    order = np.argsort(labels, kind="stable")  # (N,) rows grouped by label, each group in order
    groups, starts = np.unique(labels[order], return_index=True)
    bounds = dict(zip(groups, zip(starts, [*starts[1:], len(order)], strict=True), strict=True))
    return {name: order[slice(*bounds[name])] for name in names}


def _rows(matrix, rows: np.ndarray) -> np.ndarray:
    """Dense float32 ``(n, G)`` copy of ``rows`` of a stored matrix (CSR or dense)."""
    block = matrix[rows]
    if sp.issparse(block):
        return block.toarray().astype(np.float32, copy=False)
    return np.asarray(block, dtype=np.float32)


def _column_mean(matrix, rows: np.ndarray) -> np.ndarray:
    """Exact mean ``(G,)`` of ``rows``; sparse rows are summed in float64 without densifying."""
    if sp.issparse(matrix):
        return (np.asarray(matrix[rows].sum(axis=0, dtype=np.float64)).ravel() / len(rows)).astype(
            np.float32
        )
    return _rows(matrix, rows).mean(axis=0)


def _control_projection(control: np.ndarray, centre: np.ndarray, n_components: int):
    """``cells (n, G) -> (n, K)``: coordinates on the top ``K`` principal components of the
    control cells, centred on ``centre`` (as the evaluation's energy distance)."""
    centred = np.asarray(control, dtype=np.float64) - centre  # (n_ctrl, G)
    _, _, vt = np.linalg.svd(centred, full_matrices=False)  # vt: (min(n_ctrl, G), G)
    basis = vt[:n_components].T  # (G, K)
    return lambda cells: (np.asarray(cells, dtype=np.float64) - centre) @ basis


def _best_shape(
    by_weight: dict[float, list[tuple[float, float]]],
) -> tuple[float, dict[float, float]]:
    """The scale with the lowest score (ties: the smaller) and every scale's score: the mean
    energy on control PCs and on genes, each divided by its value at scale 1, summed."""
    means = {weight: np.mean(values, axis=0) for weight, values in by_weight.items()}  # (2,)
    unit = np.maximum(means[1.0], 1e-12)  # (2,)
    score = {weight: float((mean / unit).sum()) for weight, mean in means.items()}
    return min(score, key=lambda weight: (score[weight], weight)), score


def _lowest_mse_per_kind(
    errors: dict[str, dict[float, list[float]]],
    minimum: int,
    report: dict[str, Any],
    label: str,
    unit: str,
) -> dict[str, float]:
    """Per condition kind, the grid value with the lowest mean error (ties: the smaller) when at
    least ``minimum`` held-out conditions judge it, else 0. ``errors``: kind -> value -> one error
    per held-out condition; each kind's table is written into ``report`` (JSON-ready)."""
    chosen = dict.fromkeys(CONDITION_KINDS, 0.0)
    for kind, by_value in sorted(errors.items()):
        mse = {value: float(np.mean(values)) for value, values in by_value.items()}
        count = len(by_value[0.0])
        if count >= minimum:
            chosen[kind] = min(mse, key=lambda value: (mse[value], value))
        # String keys: the report is stored as JSON in checkpoints.
        report[kind] = {"n_conditions": count, "mse": {f"{w:g}": e for w, e in mse.items()}}
        logger.info(
            "scbig: %s: %s %.2f (%d held-out training %s %s)",
            kind,
            label,
            chosen[kind],
            count,
            unit,
            ", ".join(f"{w:g}: {e:.4f}" for w, e in mse.items()),
        )
    return chosen


def _energy_distance(x: np.ndarray, y: np.ndarray) -> float:
    """Energy distance ``2E|X-Y| - E|X-X'| - E|Y-Y'|`` (Euclidean, V-statistic) between
    ``(n, K)`` and ``(m, K)``: the evaluation's definition (the model layer cannot import it)."""
    between = cdist(x, y).mean()
    return float(max(2.0 * between - cdist(x, x).mean() - cdist(y, y).mean(), 0.0))


@dataclasses.dataclass
class _CellPools:
    """Cells of training and validation conditions as row indices into the stored matrix (which
    stays sparse when it is), densified a batch at a time, and their latent codes once encoded."""

    matrix: Any  # (N, G) the dataset's X: CSR or dense
    rows: dict[str, np.ndarray]  # name -> (n_c,) pooled rows (at most the fit cap's share)
    all_rows: dict[str, np.ndarray]  # name -> every row of the condition (for exact means)
    latents: dict[str, torch.Tensor] = dataclasses.field(default_factory=dict)  # name -> (n, L)

    def mean(self, name: str) -> np.ndarray:
        """Mean expression ``(G,)`` over all cells of ``name``."""
        return _column_mean(self.matrix, self.all_rows[name])

    def cells(self, name: str) -> _PooledCells:
        return _PooledCells(self.matrix, self.rows[name])

    def latent(self, name: str, encode) -> torch.Tensor:
        if name not in self.latents:
            rows = self.rows[name]
            parts = [
                encode(_rows(self.matrix, rows[i : i + _ENCODE_BATCH]))
                for i in range(0, len(rows), _ENCODE_BATCH)
            ]  # (b, L) each
            self.latents[name] = torch.cat(parts)  # (n, L)
        return self.latents[name]


@dataclasses.dataclass
class _PooledCells:
    """One condition's pooled cells, indexed like a ``(n, G)`` tensor: ``cells[index]`` densifies
    only the requested rows."""

    matrix: Any
    rows: np.ndarray  # (n,)

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, index: torch.Tensor) -> torch.Tensor:
        return torch.from_numpy(_rows(self.matrix, self.rows[index.numpy()]))  # (m, G)


class _PresetVelocity:
    """``velocity`` with the condition's share of its first layer computed once per condition.

    The first layer reads ``[x, time embedding, condition]``; integrating a condition's cells
    evaluates the field ``2 * ode_steps`` times (midpoint) with the same condition, so its term
    (with the bias) is computed once: ``preset(condition (C, E)) -> (C, H)``. The time term is
    computed once per evaluation, for the first row: the solvers step every row together.
    ``field(x (B, D), t (B,), preset (B, H)) -> (B, D)`` equals ``velocity(x, t, condition)``
    up to float rounding.
    """

    def __init__(self, velocity: VelocityField) -> None:
        first = velocity.hidden[0]  # Linear over the concatenated inputs
        latent, time = velocity.config.latent_dim, velocity.config.time_dim
        self.velocity = velocity
        self.state_weight = first.weight[:, :latent].T  # (D, H)
        self.time_weight = first.weight[:, latent : latent + time].T  # (T, H)
        self.condition_weight = first.weight[:, latent + time :].T  # (E, H)
        self.bias = first.bias  # (H,)
        self.layers = velocity.hidden[1:]

    def preset(self, condition: torch.Tensor) -> torch.Tensor:
        return torch.addmm(self.bias, condition, self.condition_weight)  # (C, H)

    def __call__(self, x: torch.Tensor, t: torch.Tensor, preset: torch.Tensor) -> torch.Tensor:
        time = self.velocity.time_embedding(t[:1]).to(x.dtype) @ self.time_weight  # (1, H)
        hidden = torch.addmm(preset, x, self.state_weight).add_(time)  # (B, H)
        return self.velocity.output(self.layers(hidden))  # (B, D)


@register_model("scbig")
class ScBIG:
    """Module-inductive conditional flow matching (scBIG, docs/method.md §2)."""

    name: ClassVar[str] = "scbig"
    config_class: ClassVar[type] = ScBIGConfig
    variant_field: ClassVar[str] = "gene_embedding"  # scbig[go] is scbig with gene_embedding="go"
    resumable: ClassVar[bool] = True  # fit(..., checkpoint_dir=...) resumes an interrupted run

    def __init__(self, config: ScBIGConfig | None = None) -> None:
        self.config = config if config is not None else ScBIGConfig()
        if not isinstance(self.config, ScBIGConfig):
            raise TypeError(f"scbig expects a ScBIGConfig, got {type(self.config).__name__}")
        self.genes_: pd.Index | None = None
        self.history_: dict[str, Any] = {}

    # -- fitting -------------------------------------------------------------------------------
    def fit(
        self,
        dataset: PerturbationDataset,
        split: Split,
        config: ScBIGConfig | None = None,
        *,
        checkpoint_dir: str | Path | None = None,
    ) -> ScBIG:
        """Fit on ``split.train``; early stopping uses ``split.val`` only; test cells are unseen.

        With ``checkpoint_dir`` each stage writes Lightning checkpoints there, and calling ``fit``
        again with the same folder resumes an interrupted run where it stopped.
        """
        if config is not None:
            self.__init__(config)
        cfg = self.config
        L.seed_everything(cfg.seed, workers=True, verbose=False)
        available = set(dataset.conditions)
        train = [name for name in split.train if name in available and name != CONTROL_NAME]
        val = [name for name in split.val if name in available]
        if CONTROL_NAME not in available or not train:
            raise ValueError(
                "scbig needs control cells and at least one training perturbation in the split"
            )
        genes = pd.Index(dataset.genes)
        matrix = dataset.adata.X  # (N, G) as stored; only samples and batches are densified
        if sp.issparse(matrix) and not sp.isspmatrix_csr(matrix):
            matrix = sp.csr_matrix(matrix)  # row access
        rows = _condition_rows(dataset, [CONTROL_NAME, *train, *val])
        fit_rows = self._fit_sample(
            np.sort(np.concatenate([rows[CONTROL_NAME], *map(rows.get, train)]))
        )
        train_cells = _rows(matrix, fit_rows)  # (n_fit, G): at most max_fit_cells
        logger.info(
            "scbig: %d training conditions, %d validation, %d of %d cells × %d genes for fitting",
            len(train),
            len(val),
            len(train_cells),
            sum(len(rows[name]) for name in [CONTROL_NAME, *train]),
            len(genes),
        )

        embedding = correlation_embedding(train_cells, genes, cfg.embedding_components)
        if cfg.gene_embedding != "data":
            # Gene identities of every condition (not their cells) pick the prior rows to keep,
            # so genes perturbed but not measured get vectors too.
            prior = prior_gene_table(cfg.gene_embedding, genes, dataset.perturbed_genes, cfg.priors)
            embedding = with_data_embedding(prior, embedding)
        self._programs = self._learn_programs(train_cells, genes, embedding.loc[genes])
        self.genes_ = genes
        self.prior_ = embedding  # gene vectors for the condition encoder (covers unseen genes)
        self.seen_genes_ = sorted({g for name in train for g in parse_condition(name)})

        folder = Path(checkpoint_dir) if checkpoint_dir is not None else None
        self.autoencoder_ = build_autoencoder(cfg, self._programs, train_cells.mean(axis=0))
        val_rows = np.sort(np.concatenate([rows[name] for name in val])) if val else None
        self._fit_autoencoder(train_cells, matrix, val_rows, folder)
        self.autoencoder_.eval()
        del train_cells

        rng = np.random.default_rng(cfg.seed)
        control_rows = rows[CONTROL_NAME]
        keep = rng.choice(
            len(control_rows), min(len(control_rows), cfg.max_control_cells), replace=False
        )
        self.control_cells_ = _rows(matrix, control_rows[np.sort(keep)])  # (n_ctrl, G)
        self.control_mean_ = _column_mean(matrix, control_rows)  # (G,)
        data = _CellPools(matrix, self._pool_rows(rows, [*train, *val]), rows)
        self.start_ = self._fit_start(dataset, train, context_split=split)
        self.mean_weights_, self.shape_weights_, self.combinator_weights_ = self._choose_weights(
            dataset, train, val, data, folder
        )
        self.condition_model_, self.velocity_ = self._train_flow(
            self.start_, train, val, data, folder, "flow"
        )
        return self

    def _fit_sample(self, rows: np.ndarray) -> np.ndarray:
        """``rows`` when there are at most ``max_fit_cells``, else a seeded sorted sample of them."""
        cap = self.config.max_fit_cells
        if len(rows) <= cap:
            return rows
        rng = np.random.default_rng([self.config.seed, 1])
        return np.sort(rng.choice(rows, cap, replace=False))

    def _pool_rows(self, rows: dict[str, np.ndarray], names: list[str]) -> dict[str, np.ndarray]:
        """The flow's cells per condition: all of them while ``names`` hold at most
        ``max_fit_cells`` cells, else a seeded sample of an equal share per condition."""
        cfg = self.config
        if sum(len(rows[name]) for name in names) <= cfg.max_fit_cells:
            return {name: rows[name] for name in names}
        share = max(cfg.flow_cells_per_condition, cfg.max_fit_cells // max(len(names), 1))
        rng = np.random.default_rng([cfg.seed, 2])
        return {
            name: rows[name]
            if len(rows[name]) <= share
            else np.sort(rng.choice(rows[name], share, replace=False))
            for name in names
        }

    def _start_config(self) -> CalibratedAdditiveConfig:
        cfg = self.config
        return CalibratedAdditiveConfig(
            calibrate=cfg.calibrate_prior,
            calibration_genes=cfg.calibration_genes,
            target_aware=cfg.target_aware_prior,
            propagate=cfg.propagate_prior,
            network=cfg.network_prior,
            unseen=cfg.unseen_shift,
            embedding=cfg.gene_embedding,
            n_components=cfg.embedding_components,
            priors=cfg.priors,
            max_control_cells=cfg.max_control_cells,
            max_fit_cells=cfg.max_fit_cells,
            combination_weight=cfg.prior_combination_weight,
            pooled_if_better=cfg.prior_pooled_if_better,
            pooled_share=cfg.prior_pooled_share,
            combination_genes=cfg.prior_combination_genes,
            shrinkage=cfg.prior_shrinkage,
            seed=cfg.seed,
        )

    def _fit_start(
        self, dataset: PerturbationDataset, train: list[str], context_split: Split | None = None
    ) -> FlowStart:
        """The flow's start point fitted on ``train`` (+ control); on a context
        ``context_split`` its predictions are calibrated to the target context as
        ``calibrated_additive``'s are."""
        inner = Split(
            kind="scbig_start", seed=self.config.seed, train=[CONTROL_NAME, *train], val=(), test=()
        )
        additive = CalibratedAdditive(self._start_config()).fit(dataset, inner)
        if context_split is not None and additive.config.context:
            additive.context_ = fit_context_calibration(
                dataset, context_split, additive.config.context_genes
            )
        combinator = None
        if self.config.start == "combinator" or self._blends_combinator():
            combinator = Combinator(CombinatorConfig(seed=self.config.seed)).fit(dataset, inner)
        return FlowStart(self.config.start, additive, combinator)

    def _blends_combinator(self) -> bool:
        """Whether combinations may start from a blend with the combinator's mean."""
        share = self.config.combinator_weight
        return self.config.start == "calibrated_additive" and (share is None or share > 0)

    def _combinator_shares(self) -> dict[str, float]:
        """The config's share (0 when None) for every combination kind, 0 for the single kinds;
        all 0 when the start does not blend."""
        share = (self.config.combinator_weight or 0.0) if self._blends_combinator() else 0.0
        return {kind: share if kind.startswith("combo") else 0.0 for kind in CONDITION_KINDS}

    def _combinator_shift(
        self, start: FlowStart, name: str, shares: dict[str, float], in_context: bool = False
    ) -> np.ndarray:
        """The change ``(G,)`` that moves ``name``'s start towards the combinator's mean by its
        kind's share; zeros when the share is 0."""
        return self._combinator_shifts(start, [name], shares, in_context=in_context)[0]

    def _combinator_shifts(
        self, start: FlowStart, names: list[str], shares: dict[str, float], in_context: bool = False
    ) -> np.ndarray:
        """:meth:`_combinator_shift` of every name, ``(C, G)``; offsets are computed only where
        the share is not 0."""
        seen = start.seen
        share = np.array(
            [shares.get(condition_kind(name, seen), 0.0) for name in names], np.float32
        )  # (C,)
        shifts = np.zeros((len(names), len(self.genes_)), np.float32)  # (C, G)
        blended = np.flatnonzero(share)
        if len(blended):
            offsets = start.combinator_offsets([names[i] for i in blended], in_context=in_context)
            shifts[blended] = share[blended, None] * offsets  # (b, G)
        return shifts

    def _cv_fold(self, train: list[str]) -> tuple[list[str], list[str]]:
        """Training conditions split into (inner training, held out) for the mean weights.

        Held out: every condition touching ``cv_hidden_genes`` of the genes with a training
        single (their singles become ``unseen_single``, their combinations ``combo_seen0/1``),
        and ``cv_doubles`` of the remaining combinations (``combo_seen2``).
        """
        cfg = self.config
        rng = np.random.default_rng(cfg.seed + 1)
        singles = sorted(
            {g for name in train if len(genes := parse_condition(name)) == 1 for g in genes}
        )
        n_hide = round(cfg.cv_hidden_genes * len(singles))
        if cfg.cv_hidden_genes > 0 and len(singles) >= 4:
            n_hide = max(n_hide, 1)
        hidden = set(rng.choice(singles, n_hide, replace=False)) if n_hide else set()
        combos = [
            name
            for name in train
            if len(parse_condition(name)) > 1 and not parse_condition(name) & hidden
        ]
        n_doubles = round(cfg.cv_doubles * len(combos))
        held_doubles = set(rng.choice(combos, n_doubles, replace=False)) if n_doubles else set()
        held = [name for name in train if parse_condition(name) & hidden or name in held_doubles]
        inner = [name for name in train if name not in set(held)]
        return inner, held

    def _choose_weights(
        self,
        dataset: PerturbationDataset,
        train: list[str],
        val: list[str],
        data: _CellPools,
        folder: Path | None,
    ) -> tuple[dict[str, float], dict[str, float], dict[str, float]]:
        """Weights of the flow's mean change and of its reshaping, and the combinator's share in
        a combination's start, per condition kind (see ``ScBIGConfig`` and docs/method.md §2.4),
        from one inner cross-validation fold."""
        cfg = self.config
        self.mean_weight_cv_, self.shape_weight_cv_, self.combinator_weight_cv_ = {}, {}, {}
        fixed_mean, fixed_shape = cfg.mean_weight, cfg.shape_weight
        fixed_blend = not self._blends_combinator() or cfg.combinator_weight is not None
        if fixed_mean is not None and fixed_shape is not None and fixed_blend:
            return (
                dict.fromkeys(CONDITION_KINDS, fixed_mean),
                dict.fromkeys(CONDITION_KINDS, fixed_shape),
                self._combinator_shares(),
            )
        inner, held = self._cv_fold(train)
        if not held or not inner:
            logger.info(
                "scbig: no training conditions to cross-validate on; the start's cells are kept"
            )
            return (
                dict.fromkeys(CONDITION_KINDS, 0.0 if fixed_mean is None else fixed_mean),
                dict.fromkeys(CONDITION_KINDS, 0.0 if fixed_shape is None else fixed_shape),
                self._combinator_shares(),
            )
        start = self._fit_start(dataset, inner)
        condition_model, velocity = self._train_flow(start, inner, val, data, folder, "flow_cv")
        seen = start.seen
        generator = np.random.default_rng(cfg.seed)
        held_out: dict[str, tuple[str, np.ndarray, np.ndarray]] = {}
        for name in held:
            start_cells, change = self._flow_change(
                name, _VALIDATION_CELLS, generator, start, condition_model, velocity
            )  # (n, G) each
            held_out[name] = (condition_kind(name, seen), start_cells, change)
        if fixed_blend:
            blend = self._combinator_shares()
        else:
            blend = self._cv_combinator_weights(start, held_out, data)
        for name, (kind, start_cells, change) in held_out.items():
            held_out[name] = (
                kind,
                start_cells + self._combinator_shift(start, name, blend),
                change,
            )

        if fixed_mean is not None:
            mean_weights = dict.fromkeys(CONDITION_KINDS, fixed_mean)
        else:
            mean_weights = self._cv_mean_weights(held_out, data)
        if fixed_shape is not None:
            shape_weights = dict.fromkeys(CONDITION_KINDS, fixed_shape)
        else:
            shape_weights = self._cv_shape_weights(held_out, mean_weights, data, generator)
        return mean_weights, shape_weights, blend

    def _cv_combinator_weights(
        self,
        start: FlowStart,
        held_out: dict[str, tuple[str, np.ndarray, np.ndarray]],
        data: _CellPools,
    ) -> dict[str, float]:
        """Per combination kind, the share of the combinator's mean in the start with the lowest
        MSE to the held-out combinations' real means on each one's top DE genes.

        A combination's DE genes are its ``COMBINATOR_DE_GENES`` genes of largest absolute Welch
        t against the control cells, its own perturbed genes left out: the genes the
        evaluation's top-20 metrics score. On all genes the combinator can look better while
        being worse on those: it shrinks the strongest changes. A kind with fewer than
        ``cv_min_conditions`` held-out combinations keeps the start (share 0).
        """
        control = self.control_cells_.astype(np.float64)  # (n_ctrl, G)
        control_mean, control_var = control.mean(axis=0), control.var(axis=0, ddof=1)
        errors: dict[str, dict[float, list[float]]] = {}  # kind -> share -> [MSE per condition]
        for name, (kind, start_cells, _) in held_out.items():
            if len(parse_condition(name)) < 2:
                continue
            pool = data.cells(name)
            real = pool[torch.arange(len(pool))].numpy().astype(np.float64)  # (m, G)
            t_score = (real.mean(axis=0) - control_mean) / np.sqrt(
                real.var(axis=0, ddof=1) / len(real) + control_var / len(control) + 1e-12
            )  # (G,)
            perturbed = self.genes_.get_indexer(sorted(parse_condition(name)))  # -1: not measured
            t_score[perturbed[perturbed >= 0]] = 0.0
            genes = np.argsort(-np.abs(t_score), kind="stable")[:COMBINATOR_DE_GENES]
            offset = start.combinator_offset(name)[genes]  # (k,)
            residual = (real.mean(axis=0) - start_cells.mean(axis=0))[genes]  # the start's error
            for share in COMBINATOR_WEIGHT_GRID:
                error = float(np.mean((residual - share * offset) ** 2))
                errors.setdefault(kind, {}).setdefault(share, []).append(error)
        return _lowest_mse_per_kind(
            errors,
            self.config.cv_min_conditions,
            self.combinator_weight_cv_,
            "combinator share in the start",
            "combinations; MSE on their top DE genes",
        )

    def _cv_mean_weights(
        self, held_out: dict[str, tuple[str, np.ndarray, np.ndarray]], data: _CellPools
    ) -> dict[str, float]:
        """Per kind, the weight of the flow's mean change with the lowest MSE to the held-out
        conditions' real means; a kind with too few of them keeps the start's mean (0)."""
        errors: dict[str, dict[float, list[float]]] = {}
        for name, (kind, start_cells, change) in held_out.items():
            real_mean = data.mean(name)  # (G,)
            for weight in MEAN_WEIGHT_GRID:
                predicted = start_cells.mean(axis=0) + weight * change.mean(axis=0)  # (G,)
                error = float(np.mean((predicted - real_mean) ** 2))
                errors.setdefault(kind, {}).setdefault(weight, []).append(error)
        return _lowest_mse_per_kind(
            errors,
            self.config.cv_min_conditions,
            self.mean_weight_cv_,
            "flow mean weight",
            "conditions; MSE",
        )

    def _cv_shape_weights(
        self,
        held_out: dict[str, tuple[str, np.ndarray, np.ndarray]],
        mean_weights: dict[str, float],
        data: _CellPools,
        generator: np.random.Generator,
    ) -> dict[str, float]:
        """Per kind, the scale of the flow's reshaping (its change of each cell around the mean)
        that brings the held-out conditions' predicted cells closest to their real cells, at the
        kind's mean weight.

        Closeness is the energy distance in two spaces, each relative to its value at scale 1 (the
        flow as trained), summed: on the control cells' top principal components (the
        evaluation's headline) and on all genes. Either alone can prefer a scale the other
        finds worse: directions the control cells do not vary in are invisible to the first, and
        the second is dominated by per-gene noise. A kind with fewer than ``cv_min_conditions``
        held-out conditions takes the choice pooled over every held-out condition; with fewer
        than that in all, the start's cells are kept (scale 0): the flow keeps only what held-out
        conditions show it adds.
        """
        projection = _control_projection(self.control_cells_, self.control_mean_, _SHAPE_PCS)
        # kind -> scale -> [(energy on control PCs, energy on genes)], one per held-out condition
        distances: dict[str, dict[float, list[tuple[float, float]]]] = {}
        for name, (kind, start_cells, change) in held_out.items():
            pool = data.cells(name)
            take = generator.choice(len(pool), min(len(pool), _VALIDATION_CELLS), replace=False)
            real = pool[torch.from_numpy(np.sort(take))].numpy().astype(np.float64)  # (m, G)
            real_pcs = projection(real)  # (m, K)
            mean_change = mean_weights.get(kind, 0.0) * change.mean(axis=0)  # (G,)
            shape = change - change.mean(axis=0)  # (n, G)
            for weight in SHAPE_WEIGHT_GRID:
                cells = (start_cells + mean_change + weight * shape).astype(np.float64)  # (n, G)
                distances.setdefault(kind, {}).setdefault(weight, []).append(
                    (
                        _energy_distance(projection(cells), real_pcs),
                        _energy_distance(cells, real),
                    )
                )
        pooled: dict[float, list[tuple[float, float]]] = {}
        for by_weight in distances.values():
            for weight, values in by_weight.items():
                pooled.setdefault(weight, []).extend(values)

        minimum = self.config.cv_min_conditions
        n_pooled = len(pooled.get(0.0, []))
        fallback = _best_shape(pooled)[0] if n_pooled >= minimum else 0.0
        weights = dict.fromkeys(CONDITION_KINDS, fallback)
        self.shape_weight_cv_["pooled"] = {"n_conditions": n_pooled, "weight": fallback}
        for kind, by_weight in sorted(distances.items()):
            choice, score = _best_shape(by_weight)
            count = len(by_weight[0.0])
            if count >= minimum:
                weights[kind] = choice
            means = {w: np.mean(values, axis=0) for w, values in by_weight.items()}  # (2,) each
            # String keys: the report is stored as JSON in checkpoints.
            self.shape_weight_cv_[kind] = {
                "n_conditions": count,
                "energy": {f"{w:g}": float(m[0]) for w, m in means.items()},
                "energy_genes": {f"{w:g}": float(m[1]) for w, m in means.items()},
                "score": {f"{w:g}": v for w, v in score.items()},
            }
            logger.info(
                "scbig: %s: flow shape weight %.2f (%d held-out training conditions; energy on "
                "control PCs / genes %s)",
                kind,
                weights[kind],
                count,
                ", ".join(f"{w:g}: {m[0]:.4f} / {m[1]:.4f}" for w, m in means.items()),
            )
        return weights

    def _learn_programs(
        self, train_cells: np.ndarray, genes: pd.Index, embedding: pd.DataFrame
    ) -> GenePrograms:
        cfg = self.config
        n_programs = min(cfg.n_programs, max(1, len(genes) // 2))
        if n_programs < cfg.n_programs:
            logger.info(
                "scbig: %d genes: using %d programs, not %d", len(genes), n_programs, cfg.n_programs
            )
        if cfg.programs == "random":
            return random_programs(genes, n_programs, cfg.seed, embedding=embedding)
        if cfg.relation_graph == "coexpression":
            adjacency = coexpression_knn_graph(train_cells, genes, k=cfg.knn)
        else:
            adjacency = relation_graph(cfg.relation_graph, genes, cfg.priors)
        return gene_relation_clustering(
            embedding, adjacency, GRCConfig(n_clusters=n_programs, seed=cfg.seed), genes=genes
        )

    def _train_flow(
        self,
        start: FlowStart,
        train: list[str],
        val: list[str],
        data: _CellPools,
        folder: Path | None,
        stage: str,
    ) -> tuple[ConditionModel, VelocityField]:
        """Train a condition model and velocity field from ``start`` on ``train`` conditions."""
        cfg = self.config
        rng = np.random.default_rng(cfg.seed)
        sources = self.control_cells_[
            rng.choice(len(self.control_cells_), min(len(self.control_cells_), 512), replace=False)
        ]  # (n_src, G): control cells every condition's flow starts from
        source_latent = self._source_latents(start, sources, train)
        target_latent = [data.latent(name, self._encode) for name in train]
        target_cells = [data.cells(name) for name in train]  # densified a batch at a time
        hidden_views = (
            self._hidden_views(start, sources, train) if cfg.unseen_rate > 0 else [[]] * len(train)
        )
        seen = sorted({g for name in train for g in parse_condition(name)})
        condition_model, velocity = self._build_flow_networks(start, seen)
        val_sources = sources[: min(len(sources), 256)]
        val_start = torch.from_numpy(val_sources.mean(axis=0) + start.shifts(val))  # (V, G)
        val_means = torch.from_numpy(np.vstack([data.mean(n) for n in val]))
        objective = FlowObjective(
            velocity,
            condition_model,
            self.autoencoder_,
            source_latent,
            target_latent,
            target_cells,
            train,
            self._membership(),
            hidden_views,
            val,
            self._source_latents(start, val_sources, val),
            val_start if val else None,
            val_means if val else None,
            conditions_per_batch=cfg.flow_conditions_per_batch,
            cells_per_condition=cfg.flow_cells_per_condition,
            ot_pairing=cfg.ot_pairing,
            sigma=cfg.sigma,
            unseen_rate=cfg.unseen_rate,
            alignment=cfg.alignment,
            align_every=cfg.align_every,
            cluster_corr_weight=cfg.cluster_corr_weight,
            pathway_ot_weight=cfg.pathway_ot_weight,
            align_ode_steps=cfg.align_ode_steps,
            steps_per_epoch=min(cfg.val_every, cfg.flow_steps),
            seed=cfg.seed,
            pathway_membership=self._pathway_membership(),
        )
        plan = self._run(
            objective,
            stage,
            folder,
            lr=cfg.flow_lr,
            has_val=bool(val),
            max_steps=cfg.flow_steps,
            grad_clip=cfg.grad_clip,
        )
        if plan.best_state is not None:
            objective.trainable().load_state_dict(plan.best_state)
        velocity.eval()
        condition_model.eval()
        self.history_[f"{stage}_best_val"] = plan.best_val
        return condition_model, velocity

    def _build_flow_networks(
        self, start: FlowStart, seen_genes: list[str]
    ) -> tuple[ConditionModel, VelocityField]:
        """Fresh condition model and velocity field from the config (fit and load share it)."""
        cfg = self.config
        encoder = ConditionEncoder(
            self.prior_,
            seen_genes,
            ConditionEncoderConfig(
                embedding_dim=cfg.gene_embedding_dim,
                output_dim=cfg.condition_dim,
                missing=cfg.missing_gene,
            ),
        )
        features = self._delta_features(start) if cfg.delta_conditioning else None
        n_features = N_DELTA_POOLS * self._programs.n_clusters
        condition_model = ConditionModel(encoder, features, n_features)
        velocity = VelocityField(
            cfg.latent_dim,
            cfg.condition_dim,
            hidden_dim=cfg.flow_hidden,
            n_layers=cfg.flow_layers,
            dropout=cfg.flow_dropout,
        )
        return condition_model, velocity

    def _delta_features(self, start: FlowStart):
        """``(names, hidden) -> (B, 4K)``: pooled program-space single deltas of ``start``."""
        membership = self._membership().numpy()  # (K, G)
        membership = membership / np.maximum(membership.sum(axis=1, keepdims=True), 1.0)
        cache: dict[tuple[str, frozenset[str]], np.ndarray] = {}

        def features(names, hidden) -> np.ndarray:
            rows = []
            for name, hide in zip(names, hidden, strict=True):
                key = (name, frozenset(hide))
                if key not in cache:
                    deltas = np.vstack(
                        [
                            start.additive.estimator_.gene_delta(g, g in hide)
                            for g in sorted(parse_condition(name))
                        ]
                    )  # (k, G)
                    cache[key] = pooled_program_deltas(deltas, membership)
                rows.append(cache[key])
            return np.vstack(rows).astype(np.float32)  # (B, 4K)

        return features

    def _source_latents(
        self,
        start: FlowStart,
        sources: np.ndarray,
        conditions: list[str],
        hidden: list[frozenset[str]] | None = None,
    ) -> list[torch.Tensor]:
        """Latent codes of ``sources`` shifted by each condition's start delta, one tensor each."""
        if start.kind == "control":
            latent = self._encode(sources)
            return [latent for _ in conditions]
        # Training conditions start where a held-out one would (cross_fit_start).
        shifts = start.shifts(conditions, hidden, cross_fit=self.config.cross_fit_start)  # (C, G)
        return [self._encode(sources + shift) for shift in shifts]

    def _hidden_views(
        self, start: FlowStart, sources: np.ndarray, conditions: list[str]
    ) -> list[list[tuple[frozenset[str], torch.Tensor]]]:
        """For each condition, each one of its genes hidden: (that gene, shifted source latents)."""
        sources = sources[: min(len(sources), 256)]
        names, hides = [], []
        for name in conditions:
            for gene in sorted(parse_condition(name)):
                names.append(name)
                hides.append(frozenset({gene}))
        latents = iter(self._source_latents(start, sources, names, hides))
        views: dict[str, list] = {name: [] for name in conditions}
        for name, hide in zip(names, hides, strict=True):
            views[name].append((hide, next(latents)))
        return [views[name] for name in conditions]

    def _pathway_membership(self) -> torch.Tensor | None:
        """``(P, G)`` gene-set membership of ``pathway_gene_sets`` (None: use the programs)."""
        choice = self.config.pathway_gene_sets
        if choice is None or not self.config.alignment:
            return None
        if is_table_path(choice) or choice.endswith(".gmt"):
            gene_sets = read_gmt(choice)
        else:
            gene_sets = PriorBundle.discover(self.config.priors).load_gene_sets(choice)
        table = gene_sets_to_membership(gene_sets, list(self.genes_), min_size=3)  # (G, P)
        logger.info("scbig: pathway alignment over %d gene sets (%s)", table.shape[1], choice)
        return torch.from_numpy(table.to_numpy(np.float32).T.copy())  # (P, G)

    def _membership(self) -> torch.Tensor:
        labels = torch.from_numpy(np.array(self._programs.labels))  # (G,)
        return torch.nn.functional.one_hot(labels, self._programs.n_clusters).T.float()  # (K, G)

    def _fit_autoencoder(
        self,
        train_cells: np.ndarray,
        matrix,
        val_rows: np.ndarray | None,
        folder: Path | None,
    ) -> None:
        """Fit on ``train_cells`` ``(n_fit, G)``; validate on (a sample of) ``val_rows``."""
        cfg = self.config
        if isinstance(self.autoencoder_, PCAAutoencoder):
            self.autoencoder_.fit(train_cells)
            return
        if cfg.ae_epochs == 0:
            return
        has_val = val_rows is not None
        val_cells = torch.from_numpy(_rows(matrix, self._fit_sample(val_rows))) if has_val else None
        objective = AutoencoderObjective(
            self.autoencoder_,
            torch.from_numpy(train_cells),
            val_cells,
            batch_size=cfg.ae_batch_size,
            seed=cfg.seed,
        )
        plan = self._run(
            objective,
            "autoencoder",
            folder,
            lr=cfg.ae_lr,
            has_val=has_val,
            max_epochs=cfg.ae_epochs,
        )
        if plan.best_state is not None:
            self.autoencoder_.load_state_dict(plan.best_state)
        self.history_["autoencoder_best_val"] = plan.best_val

    def _run(
        self,
        objective: torch.nn.Module,
        stage: str,
        folder: Path | None,
        *,
        lr: float,
        has_val: bool,
        max_steps: int = -1,
        max_epochs: int | None = None,
        grad_clip: float | None = None,
    ) -> StepPlan:
        cfg = self.config
        settings = TrainerSettings(
            accelerator=cfg.accelerator,
            devices=cfg.devices,
            strategy=cfg.strategy,
            num_nodes=cfg.num_nodes,
            patience=cfg.patience,
            progress=cfg.progress,
        )
        plan = fit_objective(
            objective,
            settings,
            stage=stage,
            lr=lr,
            seed=cfg.seed,
            has_val=has_val,
            folder=folder,
            max_steps=max_steps,
            max_epochs=max_epochs,
            grad_clip=grad_clip,
            owner="scbig",
        )
        self.history_[f"{stage}_steps"] = plan.steps
        return plan

    @torch.no_grad()
    def _encode(self, cells: np.ndarray) -> torch.Tensor:
        self.autoencoder_.eval()
        tensor = torch.as_tensor(cells, dtype=torch.float32)  # (N, G)
        parts = [
            self.autoencoder_.encode(tensor[i : i + _ENCODE_BATCH])
            for i in range(0, len(tensor), _ENCODE_BATCH)
        ]
        return torch.cat(parts) if parts else tensor.new_zeros((0, self.config.latent_dim))

    # -- prediction ----------------------------------------------------------------------------
    @property
    def programs_(self) -> pd.DataFrame:
        """Gene programs: one row per gene with ``gene``, ``program`` and GRC ``order``."""
        self._check_fitted()
        return self._programs.to_frame()

    def _draws(self, n_conditions: int, n_cells: int, generator: np.random.Generator) -> np.ndarray:
        """Rows ``(C, n)`` of the stored control cells each condition starts from: one draw per
        condition, in order (without replacement while there are enough cells)."""
        n_control = len(self.control_cells_)
        draws = [
            generator.choice(n_control, n_cells, replace=n_cells > n_control)
            for _ in range(n_conditions)
        ]
        return np.array(draws, dtype=np.int64).reshape(n_conditions, n_cells)

    def _start_cells(
        self, index: np.ndarray, shifts: np.ndarray, out: np.ndarray | None = None
    ) -> np.ndarray:
        """Start cells ``(C, n, G)``, written into ``out`` when given: each condition's drawn
        control cells (``index`` ``(C, n)``) moved onto the control mean as
        :func:`~perturbflow.models.baselines.mean_shift.recentre` moves them (no sampling error
        in the mean), then by its start delta (``shifts`` ``(C, G)``). In place: at a million
        cells each copy of them is gigabytes."""
        n_genes = self.control_cells_.shape[1]
        cells = np.empty((*index.shape, n_genes), np.float32) if out is None else out
        for rows, shift, start in zip(index, shifts, cells, strict=True):
            np.take(self.control_cells_, rows, axis=0, out=start, mode="clip")  # (n, G)
            start -= start.mean(axis=0, keepdims=True)
            start += self.control_mean_
            start += shift
        return cells

    @torch.no_grad()
    def _flow_moves(
        self, start: np.ndarray, condition: torch.Tensor, velocity: VelocityField
    ) -> np.ndarray:
        """The flow's change ``(C, n, G)`` of start cells ``(C, n, G)``, each condition's under
        its embedding (``condition`` ``(C, E)``); all rows are integrated together."""
        n_conditions, n_cells, n_genes = start.shape
        cells = start.reshape(-1, n_genes)  # (C*n, G)
        field = _PresetVelocity(velocity)
        preset = field.preset(condition).repeat_interleave(n_cells, dim=0)  # (C*n, H)
        latent = self._encode(cells)  # (C*n, L)
        moved = integrate(
            field, latent, preset, n_steps=self.config.ode_steps, method=self.config.ode_method
        )  # (C*n, L)
        change = self.autoencoder_.decode(moved).numpy()  # (C*n, G) decoded, for now
        if self.config.residual_decoding:
            # Each start cell keeps what the autoencoder cannot reconstruct of it: the prediction
            # is the cell plus the decoded change, so decoder bias cancels out of the delta.
            change -= self.autoencoder_.decode(latent).numpy()  # (C*n, G)
        else:
            change -= cells  # (C*n, G)
        return change.reshape(start.shape)

    @torch.no_grad()
    def _flow_change(
        self,
        name: str,
        n_cells: int,
        generator: np.random.Generator,
        start_model: FlowStart,
        condition_model: ConditionModel,
        velocity: VelocityField,
        in_context: bool = False,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Start cells (control + start delta) and the flow's change of each, both ``(n, G)``,
        for one condition; ``in_context``: see :meth:`FlowStart.shifts`."""
        index = self._draws(1, n_cells, generator)  # (1, n)
        if name == CONTROL_NAME:
            source = self._start_cells(index, np.zeros((1, len(self.genes_)), np.float32))[0]
            return source, np.zeros_like(source)
        start = self._start_cells(index, start_model.shifts([name], in_context=in_context))
        change = self._flow_moves(start, condition_model.encode([name]), velocity)  # (1, n, G)
        return start[0], change[0]

    def _predicted_cells(self, names: list[str], index: np.ndarray) -> np.ndarray:
        """Predicted cells ``(C, n, G)`` of ``names`` from their drawn control rows ``index``
        ``(C, n)``: start cells moved by the weighted flow change, as :meth:`_flow_change` and
        :meth:`_combinator_shift` define them for one condition, computed for blocks of conditions
        of about ``_PREDICT_ROWS`` cells at a time."""
        n_conditions, n_cells = index.shape
        perturbed = [i for i, name in enumerate(names) if name != CONTROL_NAME]
        shifts = np.zeros((n_conditions, len(self.genes_)), np.float32)  # (C, G); control: 0
        if perturbed:
            shifts[perturbed] = self.start_.shifts([names[i] for i in perturbed], in_context=True)
        blend = self._combinator_shifts(
            self.start_, names, self.combinator_weights_, in_context=True
        )  # (C, G)
        mean_weight = np.array([self._mean_weight(name) for name in names], np.float32)  # (C,)
        shape_weight = np.array([self._shape_weight(name) for name in names], np.float32)  # (C,)
        # The flow moves only conditions whose weights keep some of its change.
        flows = np.array([name != CONTROL_NAME for name in names], dtype=bool) & (
            (mean_weight != 0) | (shape_weight != 0)
        )  # (C,)
        condition = torch.zeros((n_conditions, self.config.condition_dim))  # (C, E)
        if flows.any():
            with torch.no_grad():
                moved_names = [name for name, flow in zip(names, flows, strict=True) if flow]
                condition[torch.from_numpy(flows)] = self.condition_model_.encode(moved_names)
        cells = np.empty((n_conditions, n_cells, len(self.genes_)), np.float32)  # (C, n, G)
        block = max(1, _PREDICT_ROWS // n_cells)
        for first in range(0, n_conditions, block):
            part = slice(first, first + block)
            predicted = self._start_cells(index[part], shifts[part], out=cells[part])  # (c, n, G)
            moving = np.flatnonzero(flows[part])  # (f,) within the block
            change = (
                self._flow_moves(
                    predicted[moving], condition[part][torch.from_numpy(moving)], self.velocity_
                )
                if len(moving)
                else ()
            )  # (f, n, G)
            # The start (blended with the combinator's mean), the flow's change of the mean and
            # its reshaping around it, each scaled by its weight.
            predicted += blend[part, None, :]
            for j, delta in zip(first + moving, change, strict=True):  # delta: (n, G)
                mean_delta = delta.mean(axis=0, keepdims=True)  # (1, G)
                cells[j] += mean_weight[j] * mean_delta
                delta -= mean_delta
                delta *= shape_weight[j]
                cells[j] += delta
        return cells

    def _mean_weight(self, name: str) -> float:
        """Weight of the flow's mean change for ``name``: its kind's cross-validated weight."""
        kind = condition_kind(name, self.start_.seen)
        return self.mean_weights_.get(kind, 0.0)

    def _shape_weight(self, name: str) -> float:
        """Weight of the flow's reshaping for ``name``: its kind's cross-validated weight."""
        kind = condition_kind(name, self.start_.seen)
        return self.shape_weights_.get(kind, 0.0)

    def predict(self, conditions: Iterable[str], n_cells: int = 100, seed: int = 0) -> ad.AnnData:
        """Predicted single cells: ``n_cells`` per condition (control cells moved by the flow)."""
        self._check_fitted()
        if n_cells < 1:
            raise ValueError(f"n_cells must be at least 1, got {n_cells}")
        names = match_gene_names(
            conditions,
            self.known_genes(),
            owner=self.name,
            reported=self.__dict__.setdefault("_reported_genes", set()),
        )
        generator = np.random.default_rng(seed)
        cells = self._predicted_cells(names, self._draws(len(names), n_cells, generator))
        uns = {"model": self.name, "seed": seed, "config": self.config.to_dict()}
        if len(set(names)) == len(names):  # one stacked matrix, not copied again
            predictions = stacked_predictions_to_anndata(
                cells.reshape(-1, cells.shape[-1]), names, [n_cells] * len(names), self.genes_, uns
            )
        else:
            blocks = dict(zip(names, cells, strict=True))  # name -> (n, G), repeats: the last
            predictions = predictions_to_anndata(blocks, self.genes_, uns)
        predictions.var["program"] = self._programs.labels
        predictions.var["program_order"] = self.programs_["order"].to_numpy()
        return predictions

    def known_genes(self) -> set[str]:
        """Genes the model measured, saw perturbed in training or has a prior vector for."""
        self._check_fitted()
        return {*map(str, self.genes_), *self.seen_genes_, *map(str, self.prior_.index)}

    def predict_delta(
        self, conditions: Iterable[str], n_cells: int = 500, seed: int = 0
    ) -> pd.DataFrame:
        """Pseudobulk change vs the control mean, ``(conditions, genes)``."""
        cells = self.predict(conditions, n_cells=n_cells, seed=seed)
        deltas = self._means(cells) - self.control_mean_
        deltas.loc[deltas.index == CONTROL_NAME] = 0.0  # control is control by definition
        return deltas

    def predict_uncertainty(
        self, conditions: Iterable[str], n_seeds: int = 5, n_cells: int = 200
    ) -> pd.DataFrame:
        """Spread (sd) of the predicted delta over ``n_seeds`` sampled control populations."""
        deltas = [self.predict_delta(conditions, n_cells=n_cells, seed=s) for s in range(n_seeds)]
        stacked = np.stack([delta.to_numpy() for delta in deltas])  # (S, C, G)
        return pd.DataFrame(stacked.std(axis=0, ddof=1), index=deltas[0].index, columns=self.genes_)

    @staticmethod
    def _means(cells: ad.AnnData) -> pd.DataFrame:
        from perturbflow.data.io import CONDITION_COLUMN

        labels = cells.obs[CONDITION_COLUMN].astype(str)
        names = list(dict.fromkeys(labels))
        matrix = np.asarray(cells.X)
        rows = [matrix[(labels == name).to_numpy()].mean(axis=0) for name in names]
        return pd.DataFrame(np.vstack(rows), index=names, columns=cells.var_names)

    def _check_fitted(self) -> None:
        if self.genes_ is None:
            raise ModelNotFittedError("scbig model is not fitted; call fit() or load()")

    # -- persistence ---------------------------------------------------------------------------
    def save(self, path: str | Path, overwrite: bool = False) -> Path:
        """One self-describing file: config, genes, programs, vocabulary, start model, weights."""
        self._check_fitted()
        arrays = {
            "genes": np.asarray(self.genes_, dtype=str),
            "control_cells": self.control_cells_,
            "control_mean": self.control_mean_,
            "prior": self.prior_.to_numpy(),
            "prior_genes": np.asarray(self.prior_.index, dtype=str),
            **{f"additive/{k}": v for k, v in self.start_.additive.state_arrays().items()},
        }
        if self.start_.combinator is not None:
            arrays |= {
                f"combinator/{k}": v for k, v in self.start_.combinator.state_arrays().items()
            }
        for prefix, module in (
            ("autoencoder", self.autoencoder_),
            ("velocity", self.velocity_),
            ("condition", self.condition_model_),
        ):
            for key, tensor in module.state_dict().items():
                if tensor is not None:
                    arrays[f"{prefix}/{key}"] = tensor.detach().cpu().numpy()
        meta = {
            "perturbflow_version": __version__,
            "programs": self._programs.to_dict(),
            "vocabulary": self.seen_genes_,
            "history": {k: float(v) for k, v in self.history_.items()},
            "mean_weights": self.mean_weights_,
            "mean_weight_cv": self.mean_weight_cv_,
            "shape_weights": self.shape_weights_,
            "shape_weight_cv": self.shape_weight_cv_,
            "combinator_weights": self.combinator_weights_,
            "combinator_weight_cv": self.combinator_weight_cv_,
        }
        return write_checkpoint(
            path,
            model=self.name,
            config=self.config.to_dict(),
            meta=meta,
            arrays=arrays,
            overwrite=overwrite,
        )

    @classmethod
    def load(cls, path: str | Path) -> ScBIG:
        header, arrays = read_checkpoint(path)
        if header.get("model") != cls.name:
            raise CheckpointError(f"{path}: holds a {header.get('model')!r} model, not 'scbig'")
        try:
            config = ScBIGConfig(**header["config"])
        except (TypeError, ValueError, KeyError) as error:
            raise CheckpointError(
                f"{path}: config does not match this perturbflow: {error}"
            ) from error
        try:
            return cls._from_arrays(config, header, arrays)
        # A missing entry, or weights whose shapes do not fit the config (torch: RuntimeError).
        except (KeyError, ValueError, TypeError, RuntimeError) as error:
            raise CheckpointError(
                f"{path}: damaged or altered scbig checkpoint ({type(error).__name__}: "
                f"{' '.join(str(error).split())}); "
                "fit the model again"
            ) from error

    @classmethod
    def _from_arrays(
        cls, config: ScBIGConfig, header: dict[str, Any], arrays: dict[str, np.ndarray]
    ) -> ScBIG:
        """The model a checkpoint describes; raises KeyError/RuntimeError when it is incomplete."""
        model = cls(config)
        meta = header["meta"]
        model.genes_ = pd.Index(arrays["genes"].astype(str))
        model.control_cells_ = arrays["control_cells"]
        model.control_mean_ = arrays["control_mean"]
        model.prior_ = pd.DataFrame(arrays["prior"], index=arrays["prior_genes"].astype(str))
        model._programs = GenePrograms.from_dict(meta["programs"])
        model.seen_genes_ = list(meta["vocabulary"])
        model.history_ = dict(meta["history"])
        model.mean_weights_ = {kind: float(w) for kind, w in meta["mean_weights"].items()}
        model.mean_weight_cv_ = meta["mean_weight_cv"]
        model.shape_weights_ = {kind: float(w) for kind, w in meta["shape_weights"].items()}
        model.shape_weight_cv_ = meta["shape_weight_cv"]
        model.combinator_weights_ = {
            kind: float(w) for kind, w in meta["combinator_weights"].items()
        }
        model.combinator_weight_cv_ = meta["combinator_weight_cv"]
        additive = CalibratedAdditive.from_state_arrays(
            model._start_config(), _prefixed(arrays, "additive")
        )
        combinator = None
        if any(key.startswith("combinator/") for key in arrays):
            combinator = Combinator.from_state_arrays(
                CombinatorConfig(seed=config.seed), _prefixed(arrays, "combinator")
            )
        model.start_ = FlowStart(config.start, additive, combinator)
        model.autoencoder_ = build_autoencoder(
            config, model._programs, np.zeros(len(model.genes_), dtype=np.float32)
        )
        model.condition_model_, model.velocity_ = model._build_flow_networks(
            model.start_, model.seen_genes_
        )
        for prefix, module in (
            ("autoencoder", model.autoencoder_),
            ("velocity", model.velocity_),
            ("condition", model.condition_model_),
        ):
            state = {
                key: torch.from_numpy(value) for key, value in _prefixed(arrays, prefix).items()
            }
            module.load_state_dict(state)
            module.eval()
        return model

    def __repr__(self) -> str:
        status = f"{len(self.genes_)} genes" if self.genes_ is not None else "not fitted"
        return f"ScBIG({status}, autoencoder={self.config.autoencoder!r})"
