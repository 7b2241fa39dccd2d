"""scBIG-style module-inductive flow matching behind the one model interface.

``fit`` learns gene programs (GRC) from training cells, trains an autoencoder whose encoder is
aware of those programs (GCAE), then a conditional flow in its latent space from control cells to
the cells of each training condition. ``predict`` encodes control cells, integrates the flow for
the requested condition (seen, new combination or unseen gene) and decodes whole cells.
"""

from __future__ import annotations

import contextlib
import logging
import tempfile
import warnings
from collections.abc import Iterable
from pathlib import Path
from typing import Any, ClassVar

import anndata as ad
import lightning as L
import numpy as np
import pandas as pd
import torch
from lightning.pytorch.callbacks import EarlyStopping, ModelCheckpoint

from perturbflow import __version__
from perturbflow.data.conditions import CONTROL_NAME, parse_condition
from perturbflow.data.io import PerturbationDataset
from perturbflow.data.splits import Split
from perturbflow.models.base import (
    CheckpointError,
    ModelNotFittedError,
    canonical_conditions,
    predictions_to_anndata,
    read_checkpoint,
    register_model,
    write_checkpoint,
)
from perturbflow.models.baselines.mean_shift import recentre
from perturbflow.models.condition_encoder import ConditionEncoder, ConditionEncoderConfig
from perturbflow.models.flow import VelocityField, integrate
from perturbflow.models.gene_priors import (
    is_table_path,
    prior_gene_table,
    relation_graph,
    with_data_embedding,
)
from perturbflow.models.scbig.config import MEAN_WEIGHT_GRID, ScBIGConfig
from perturbflow.models.scbig.modules import PCAAutoencoder, build_autoencoder
from perturbflow.models.scbig.plans import AutoencoderPlan, FlowPlan
from perturbflow.models.scbig.shift_prior import AdditiveShiftPrior
from perturbflow.programs.embeddings import correlation_embedding
from perturbflow.programs.genesets import gene_sets_to_membership, read_gmt
from perturbflow.programs.grc import (
    GenePrograms,
    GRCConfig,
    gene_relation_clustering,
    random_programs,
)
from perturbflow.programs.priors import PriorBundle
from perturbflow.programs.relations import coexpression_knn_graph

logger = logging.getLogger(__name__)

_ENCODE_BATCH = 2048
# Values that reproduce checkpoints written before these settings existed.
_BEFORE_SETTING = {"target_aware_prior": False, "calibrated_flow_mean_weight": None}
_VALIDATION_CELLS = 256  # cells per validation condition when choosing the flow mean weight


@contextlib.contextmanager
def _quiet_lightning(quiet: bool):
    """Silence Lightning's INFO chatter (device summary, tips) while training, unless progress
    output was asked for; Lightning resets its logger levels on import, so this is done here."""
    names = ("lightning.pytorch", "lightning.fabric", "pytorch_lightning")
    previous = {name: logging.getLogger(name).level for name in names}
    if quiet:
        for name in names:
            logging.getLogger(name).setLevel(logging.WARNING)
    try:
        yield
    finally:
        for name, level in previous.items():
            logging.getLogger(name).setLevel(level)


class TrainingInterrupted(RuntimeError):
    """Training stopped before the end (Ctrl-C, a killed job); it can resume from checkpoints."""


@register_model("scbig")
class ScBIG:
    """Module-inductive conditional flow matching (scBIG, METHOD §2)."""

    name: ClassVar[str] = "scbig"
    config_class: ClassVar[type] = ScBIGConfig
    variant_field: ClassVar[str] = "gene_embedding"  # scbig[go] is scbig with gene_embedding="go"

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
        train_cells = dataset.expression([CONTROL_NAME, *train])  # (N, G)
        control_cells = dataset.control_expression()  # (N_ctrl, G)
        logger.info(
            "scbig: %d training conditions, %d validation, %d cells × %d genes",
            len(train),
            len(val),
            len(train_cells),
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
        self._fit_autoencoder(train_cells, dataset, val, folder)
        self.autoencoder_.eval()

        rng = np.random.default_rng(cfg.seed)
        keep = rng.choice(
            len(control_cells), min(len(control_cells), cfg.max_control_cells), replace=False
        )
        self.control_cells_ = control_cells[np.sort(keep)].astype(np.float32)  # (n_ctrl, G)
        self.control_mean_ = control_cells.mean(axis=0)
        target_cells = [torch.from_numpy(dataset.expression(name)) for name in train]
        target_latent = [self._encode(cells.numpy()) for cells in target_cells]
        self.shift_prior_ = self._fit_shift_prior(train, target_cells)
        sources = self.control_cells_[
            rng.choice(len(self.control_cells_), min(len(self.control_cells_), 512), replace=False)
        ]  # (n_src, G): control cells every condition's flow starts from
        source_latent = self._source_latents(sources, train)
        hidden_views = (
            self._hidden_views(sources, train) if cfg.unseen_rate > 0 else [[]] * len(train)
        )
        self._build_flow_networks()
        val_sources = sources[: min(len(sources), 256)]
        val_start = torch.from_numpy(val_sources.mean(axis=0) + self._shifts(val))  # (V, G)
        val_means = torch.from_numpy(dataset.mean_expression(val).to_numpy(np.float32))
        plan = FlowPlan(
            self.velocity_,
            self.encoder_,
            self.autoencoder_,
            source_latent,
            target_latent,
            target_cells,
            train,
            self._membership(),
            hidden_views,
            val,
            self._source_latents(val_sources, val),
            val_start if val else None,
            val_means if val else None,
            conditions_per_batch=cfg.flow_conditions_per_batch,
            cells_per_condition=cfg.flow_cells_per_condition,
            lr=cfg.flow_lr,
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
        self._run(plan, "flow", folder, has_val=bool(val), max_steps=cfg.flow_steps)
        if plan.best_state is not None:
            plan.trainable().load_state_dict(plan.best_state)
        self.velocity_.eval()
        self.encoder_.eval()
        self.history_["flow_best_val"] = plan.best_val
        self.mean_weight_ = self._select_mean_weight(dataset, val)
        self.history_["flow_mean_weight"] = self.mean_weight_
        return self

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

    def _build_flow_networks(self) -> None:
        """Fresh condition encoder and velocity field from the config (fit and load share it)."""
        cfg = self.config
        self.encoder_ = ConditionEncoder(
            self.prior_,
            self.seen_genes_,
            ConditionEncoderConfig(
                embedding_dim=cfg.gene_embedding_dim,
                output_dim=cfg.condition_dim,
                missing=cfg.missing_gene,
            ),
        )
        self.velocity_ = VelocityField(
            cfg.latent_dim,
            cfg.condition_dim,
            hidden_dim=cfg.flow_hidden,
            n_layers=cfg.flow_layers,
            dropout=cfg.flow_dropout,
        )

    def _fit_shift_prior(
        self, train: list[str], target_cells: list[torch.Tensor]
    ) -> AdditiveShiftPrior:
        deltas = {
            name: cells.numpy().mean(axis=0) - self.control_mean_
            for name, cells in zip(train, target_cells, strict=True)
        }
        singles = {
            next(iter(parse_condition(name))): delta
            for name, delta in deltas.items()
            if len(parse_condition(name)) == 1
        }
        combos = {name: delta for name, delta in deltas.items() if len(parse_condition(name)) > 1}
        return AdditiveShiftPrior(
            singles,
            len(self.genes_),
            self.prior_,
            unseen=self.config.unseen_shift_mode,
            combo_deltas=combos,
            calibrate=self.config.calibrate_prior,
            var_names=list(self.genes_),
            target_aware=self.config.target_aware_prior,
        )

    def _shifts(
        self, conditions: list[str], hidden: list[frozenset[str]] | None = None
    ) -> np.ndarray:
        """Gene-space starting shifts ``(C, G)``: additive prior, or zeros when switched off."""
        if not self.config.additive_prior:
            return np.zeros((len(conditions), len(self.genes_)), np.float32)
        return self.shift_prior_.shifts(conditions, hidden)

    def _source_latents(
        self,
        sources: np.ndarray,
        conditions: list[str],
        hidden: list[frozenset[str]] | None = None,
    ) -> list[torch.Tensor]:
        """Latent codes of ``sources`` shifted by each condition's prior, one tensor each."""
        if not self.config.additive_prior:
            latent = self._encode(sources)
            return [latent for _ in conditions]
        shifts = self._shifts(conditions, hidden)  # (C, G)
        return [self._encode(sources + shift) for shift in shifts]

    def _hidden_views(
        self, sources: np.ndarray, conditions: list[str]
    ) -> list[list[tuple[frozenset[str], torch.Tensor]]]:
        """For each condition, each one of its genes hidden: (that gene, shifted source latents)."""
        sources = sources[: min(len(sources), 256)]
        names, hides = [], []
        for name in conditions:
            for gene in sorted(parse_condition(name)):
                names.append(name)
                hides.append(frozenset({gene}))
        latents = iter(self._source_latents(sources, names, hides))
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
        dataset: PerturbationDataset,
        val: list[str],
        folder: Path | None,
    ) -> None:
        cfg = self.config
        if isinstance(self.autoencoder_, PCAAutoencoder):
            self.autoencoder_.fit(train_cells)
            return
        if cfg.ae_epochs == 0:
            return
        val_cells = torch.from_numpy(dataset.expression(val)) if val else None
        plan = AutoencoderPlan(
            self.autoencoder_,
            torch.from_numpy(train_cells),
            val_cells,
            batch_size=cfg.ae_batch_size,
            lr=cfg.ae_lr,
            seed=cfg.seed,
        )
        self._run(plan, "autoencoder", folder, has_val=bool(val), max_epochs=cfg.ae_epochs)
        if plan.best_state is not None:
            self.autoencoder_.load_state_dict(plan.best_state)
        self.history_["autoencoder_best_val"] = plan.best_val

    def _run(
        self,
        plan: L.LightningModule,
        stage: str,
        folder: Path | None,
        *,
        has_val: bool,
        max_steps: int = -1,
        max_epochs: int | None = None,
    ) -> None:
        cfg = self.config
        callbacks: list = []
        if has_val:
            callbacks.append(
                EarlyStopping(
                    monitor="val_loss",
                    patience=cfg.patience,
                    mode="min",
                    check_on_train_epoch_end=False,
                )
            )
        resume = None
        if folder is not None:
            stage_dir = folder / stage
            # One "epoch" is one validation period: a crash loses at most that much work, and
            # the replay is exact because batches are drawn from the step number.
            callbacks.append(
                ModelCheckpoint(
                    dirpath=stage_dir,
                    filename="latest",
                    save_last=True,
                    every_n_epochs=1,
                    save_top_k=1,  # without a monitor: keep only the most recent
                    save_on_train_epoch_end=True,
                )
            )
            last = stage_dir / "last.ckpt"
            resume = str(last) if last.exists() else None
            if resume:
                logger.info("scbig: resuming %s from %s", stage, last)
        with warnings.catch_warnings(), _quiet_lightning(not cfg.progress):
            # Built inside: the Trainer logs its device summary and batch notes on creation.
            trainer = L.Trainer(
                accelerator=cfg.accelerator,
                devices=cfg.devices,
                strategy=cfg.strategy,
                max_steps=max_steps,
                max_epochs=max_epochs,
                gradient_clip_val=cfg.grad_clip if stage == "flow" else None,
                callbacks=callbacks,
                enable_checkpointing=folder is not None,
                enable_progress_bar=cfg.progress,
                enable_model_summary=False,
                logger=False,
                num_sanity_val_steps=0,
                limit_val_batches=1 if has_val else 0,
                default_root_dir=str(folder) if folder else tempfile.gettempdir(),
            )
            warnings.filterwarnings("ignore", message=".*does not have many workers.*")
            warnings.filterwarnings("ignore", message=".*number of training batches.*")
            warnings.filterwarnings("ignore", message=".*LeafSpec.*")  # inside Lightning
            warnings.filterwarnings("ignore", message=".*module\\(s\\) in eval mode.*")
            trainer.fit(plan, ckpt_path=resume)
        if trainer.interrupted:
            hint = (
                f"; call fit again with checkpoint_dir={str(folder)!r} to resume"
                if folder is not None
                else "; pass checkpoint_dir to make training resumable"
            )
            raise TrainingInterrupted(f"scbig {stage} training was interrupted{hint}")
        self.history_[f"{stage}_steps"] = int(trainer.global_step)

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

    def _predict_cells(self, name: str, n_cells: int, generator: np.random.Generator) -> np.ndarray:
        """``n_cells`` predicted cells ``(n, G)``: start cells moved by the weighted flow change."""
        start, change = self._flow_change(name, n_cells, generator)  # (n, G), (n, G)
        weight = self._mean_weight(name)
        # Keep the flow's reshaping of the cells around their mean; scale its change of the mean.
        return start + change - (1.0 - weight) * change.mean(axis=0, keepdims=True)

    @torch.no_grad()
    def _flow_change(
        self, name: str, n_cells: int, generator: np.random.Generator
    ) -> tuple[np.ndarray, np.ndarray]:
        """Start cells (control + additive shift) and the flow's change of each, both ``(n, G)``."""
        index = generator.choice(
            len(self.control_cells_), n_cells, replace=n_cells > len(self.control_cells_)
        )
        # Drawn control cells moved onto the control mean: no sampling error in the mean.
        source = recentre(self.control_cells_[index], self.control_mean_)  # (n, G)
        if name == CONTROL_NAME:
            return source, np.zeros_like(source)
        start = source + self._shifts([name])  # (n, G): the additive starting point
        latent = self._encode(start)  # (n, L)
        condition = self.encoder_.encode([name]).expand(n_cells, -1)  # (n, E)
        moved = integrate(
            self.velocity_,
            latent,
            condition,
            n_steps=self.config.ode_steps,
            method=self.config.ode_method,
        )  # (n, L)
        decoded = self.autoencoder_.decode(moved).numpy()  # (n, G)
        if self.config.residual_decoding:
            # Each start cell keeps what the autoencoder cannot reconstruct of it: the prediction
            # is the cell plus the decoded change, so decoder bias cancels out of the delta.
            return start, decoded - self.autoencoder_.decode(latent).numpy()
        return start, decoded - start

    def _mean_weight(self, name: str) -> float:
        """Weight of the flow's mean change for ``name`` (see ``ScBIGConfig.flow_mean_weight``)."""
        if not parse_condition(name) <= set(self.seen_genes_):
            return self.config.unseen_flow_mean_weight
        if not self._uses_validated_weight(name):
            return self.config.calibrated_flow_mean_weight
        return self.mean_weight_

    def _uses_validated_weight(self, name: str) -> bool:
        """Whether ``name`` (all genes in training) takes the validated ``mean_weight_``."""
        return not (self._calibrated(name) and self.config.calibrated_flow_mean_weight is not None)

    def _calibrated(self, name: str) -> bool:
        """Whether the additive prior's mean of ``name`` is calibrated on training conditions."""
        return self.config.additive_prior and self.shift_prior_.calibrated(name)

    def _select_mean_weight(self, dataset: PerturbationDataset, val: list[str]) -> float:
        """``flow_mean_weight``, or the grid value with the least validation pseudobulk error."""
        if self.config.flow_mean_weight is not None:
            return self.config.flow_mean_weight
        if not val:
            return 1.0
        # Judge the weight only where it applies: conditions with a gene outside the training
        # conditions, or with a calibrated prior, have weights of their own.
        val = [
            name
            for name in val
            if parse_condition(name) <= set(self.seen_genes_) and self._uses_validated_weight(name)
        ]
        if not val:
            logger.info(
                "scbig: no validation condition is judged by the flow mean weight (each has a "
                "gene outside training or a calibrated prior); flow mean weight 0"
            )
            return 0.0
        generator = np.random.default_rng(self.config.seed)
        errors = dict.fromkeys(MEAN_WEIGHT_GRID, 0.0)
        for name in val:
            start, change = self._flow_change(name, _VALIDATION_CELLS, generator)  # (n, G) each
            real_mean = dataset.expression(name).mean(axis=0)  # (G,)
            for weight in MEAN_WEIGHT_GRID:
                predicted = start.mean(axis=0) + weight * change.mean(axis=0)  # (G,)
                errors[weight] += float(np.mean((predicted - real_mean) ** 2)) / len(val)
        best = min(errors, key=lambda weight: (errors[weight], weight))
        logger.info(
            "scbig: flow mean weight %.2f (validation pseudobulk MSE %s)",
            best,
            ", ".join(f"{w:g}: {e:.4f}" for w, e in errors.items()),
        )
        return best

    def predict(self, conditions: Iterable[str], n_cells: int = 100, seed: int = 0) -> ad.AnnData:
        """Predicted single cells: ``n_cells`` per condition (control cells moved by the flow)."""
        self._check_fitted()
        if n_cells < 1:
            raise ValueError(f"n_cells must be at least 1, got {n_cells}")
        names = canonical_conditions(conditions)
        generator = np.random.default_rng(seed)
        blocks = {name: self._predict_cells(name, n_cells, generator) for name in names}
        uns = {"model": self.name, "seed": seed, "config": self.config.to_dict()}
        predictions = predictions_to_anndata(blocks, self.genes_, uns)
        predictions.var["program"] = self._programs.labels
        predictions.var["program_order"] = self.programs_["order"].to_numpy()
        return predictions

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
        """One self-describing file: config, genes, programs, vocabulary, prior and weights."""
        self._check_fitted()
        arrays = {
            "genes": np.asarray(self.genes_, dtype=str),
            "control_cells": self.control_cells_,
            "control_mean": self.control_mean_,
            "prior": self.prior_.to_numpy(),
            "prior_genes": np.asarray(self.prior_.index, dtype=str),
            **{f"shift_prior/{k}": v for k, v in self.shift_prior_.state().items()},
        }
        for prefix, module in (
            ("autoencoder", self.autoencoder_),
            ("velocity", self.velocity_),
            ("encoder", self.encoder_),
        ):
            for key, tensor in module.state_dict().items():
                if tensor is not None:
                    arrays[f"{prefix}/{key}"] = tensor.detach().cpu().numpy()
        meta = {
            "perturbflow_version": __version__,
            "programs": self._programs.to_dict(),
            "vocabulary": self.seen_genes_,
            "history": {k: float(v) for k, v in self.history_.items()},
            "flow_mean_weight": self.mean_weight_,
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
        # Checkpoints from before a setting existed keep the behaviour they were saved with.
        settings = {**_BEFORE_SETTING, **header["config"]}
        try:
            config = ScBIGConfig(**settings)
        except TypeError as error:
            raise CheckpointError(
                f"{path}: config does not match this perturbflow: {error}"
            ) from error
        model = cls(config)
        model.genes_ = pd.Index(arrays["genes"].astype(str))
        model.control_cells_ = arrays["control_cells"]
        model.control_mean_ = arrays["control_mean"]
        model.prior_ = pd.DataFrame(arrays["prior"], index=arrays["prior_genes"].astype(str))
        model._programs = GenePrograms.from_dict(header["meta"]["programs"])
        model.seen_genes_ = list(header["meta"]["vocabulary"])
        model.history_ = dict(header["meta"].get("history", {}))
        model.mean_weight_ = float(header["meta"].get("flow_mean_weight", 1.0))
        model.shift_prior_ = AdditiveShiftPrior.from_state(
            {k.split("/", 1)[1]: v for k, v in arrays.items() if k.startswith("shift_prior/")},
            model.prior_,
            config.unseen_shift_mode,
            var_names=list(model.genes_),
            target_aware=config.target_aware_prior,
        )
        model.autoencoder_ = build_autoencoder(
            config, model._programs, np.zeros(len(model.genes_), dtype=np.float32)
        )
        model._build_flow_networks()
        for prefix, module in (
            ("autoencoder", model.autoencoder_),
            ("velocity", model.velocity_),
            ("encoder", model.encoder_),
        ):
            state = {
                key.split("/", 1)[1]: torch.from_numpy(value)
                for key, value in arrays.items()
                if key.startswith(f"{prefix}/")
            }
            module.load_state_dict(state)
            module.eval()
        return model

    def __repr__(self) -> str:
        status = f"{len(self.genes_)} genes" if self.genes_ is not None else "not fitted"
        return f"ScBIG({status}, autoencoder={self.config.autoencoder!r})"
