"""Configuration of the scBIG-style model: one frozen dataclass, saved in every checkpoint."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from perturbflow.programs.priors import RELATION_GRAPHS, check_embedding_spec

PROGRAM_SOURCES = ("grc", "random")
AUTOENCODERS = ("gcae", "mlp", "pca")
ODE_METHODS = ("euler", "midpoint", "rk4")
MEAN_WEIGHT_GRID = (0.0, 0.25, 0.5, 0.75, 1.0)
# Shape weights above 1 amplify the flow's reshaping: a flow trained for minutes moves the cells'
# spread only part of the way (docs/method.md §2.4 and §7), and the fold says how far to scale it.
SHAPE_WEIGHT_GRID = (0.0, 0.25, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 4.0)
COMBINATOR_WEIGHT_GRID = (0.0, 0.25, 0.5, 0.75, 1.0)
# The combinator share is judged on each held-out combination's top DE genes, as many as the
# evaluation's (docs/method.md §2.4).
COMBINATOR_DE_GENES = 20
STARTS = ("calibrated_additive", "combinator", "control")


@dataclass(frozen=True)
class ScBIGConfig:
    """Every setting of :class:`~perturbflow.models.scbig.ScBIG`, one comment per field.

    How the pieces fit together is in docs/method.md §2; why each default is what it is, with the
    measurements, in §7: the flow runs in PCA space without alignment losses or OT pairing,
    because GCAE, alignment and OT pairing added nothing measurable on screens with a known
    answer. scBIG's published components are ``autoencoder="gcae"``, ``alignment=True`` and
    ``ot_pairing=True``; the other switches are ``programs="random"``, ``autoencoder="mlp"``,
    ``start="control"``, ``calibrate_prior=False``, ``target_aware_prior=False``,
    ``propagate_prior=False``, ``network_prior=False``, ``prior_combination_weight=0``,
    ``delta_conditioning=False`` and
    ``combinator_weight=0``. Defaults fit a CPU budget of minutes.
    """

    # Prior knowledge. Gene vectors: "data" (correlation embedding of the training cells), a prior
    # source (go, ppi, text, concat, mean; several joined by "+") or an embedding-table path.
    gene_embedding: str = "data"
    relation_graph: str = "coexpression"  # GRC graph: coexpression, ppi, regulons, pathways
    priors: str | None = None  # data folder holding priors/ (default $PERTURBFLOW_DATA_DIR)
    # Gene programs (§2.1)
    programs: str = "grc"  # "grc" or "random" (ablation)
    n_programs: int = 32
    embedding_components: int = 32  # size of the data embedding
    knn: int = 10  # neighbours of the co-expression graph
    # Autoencoder (§2.2)
    autoencoder: str = "pca"  # pca, gcae (module attention), mlp; §7 for the measurements
    chunk_size: int = 64  # genes per GCAE token
    token_dim: int = 64
    n_heads: int = 8
    n_blocks: int = 2
    n_modules: int = 8
    latent_dim: int = 50
    ae_epochs: int = 10  # 0: keep the initial weights
    ae_batch_size: int = 256
    ae_lr: float = 1e-3
    # Condition encoder (§2.3)
    gene_embedding_dim: int = 128
    condition_dim: int = 256
    missing_gene: str = "mean"  # a gene without a vector: "mean" vector or "error"
    # Flow matching (§2.4)
    flow_hidden: int = 512
    flow_layers: int = 2
    flow_dropout: float = 0.1
    flow_steps: int = 1000
    flow_conditions_per_batch: int = 8
    flow_cells_per_condition: int = 64
    flow_lr: float = 5e-4
    grad_clip: float = 1.0
    ot_pairing: bool = False  # exact OT pairing within a condition; False: random pairs
    unseen_rate: float = 0.0  # share of draws that present a condition as if a gene were unseen
    start: str = (
        "calibrated_additive"  # where the flow starts: calibrated_additive, combinator, control
    )
    calibrate_prior: bool = True  # calibrated_additive start: per-category scale
    calibration_genes: int = 20  # ... fitted on each training condition's most changed genes
    target_aware_prior: bool = True  # calibrated_additive start: target-aware fill of unseen genes
    propagate_prior: bool = True  # ... spread to the genes co-varying with the target
    network_prior: bool = True  # ... plus the learned map of combinations (network_additive)
    # ... with each seen gene's delta fitted on the training combinations too, at this weight per
    # combination cell (0: the single's own cells; pooled_additive's estimate otherwise) ...
    prior_combination_weight: float = 1.0
    # ... where that predicts held-out training combinations better than the singles' deltas with
    # the network map (False: wherever the map's own choice is "no map")
    prior_pooled_if_better: bool = True
    # ... with combinations of seen genes moved this share of the way to pooled_additive's mean
    prior_pooled_share: float = 0.0
    # ... with a gene that has no training single but is in training combinations given its
    # effect fitted on them (calibrated_additive's combination_genes), not the unseen fallback
    prior_combination_genes: bool = True
    # ... with each training single's delta shrunk gene by gene by its sampling noise, at this
    # factor (calibrated_additive's shrinkage; 0: off)
    prior_shrinkage: float = 0.0
    # The flow's training combinations start from the map's residual fitted without them, so the
    # flow learns the residual a held-out combination has (off: the in-sample, smaller one).
    cross_fit_start: bool = False
    unseen_shift: str = "auto"  # unseen-gene fallback: mean, ridge, auto (ridge with a prior)
    delta_conditioning: bool = True  # also condition on the start's single deltas (program space)
    sigma: float = 0.0  # noise of the probability path
    # Structure-aware alignment (§2.5)
    alignment: bool = False  # structure-aware alignment losses (§2.5)
    align_every: int = 25  # steps between alignment losses
    cluster_corr_weight: float = 0.1
    pathway_ot_weight: float = 0.1
    pathway_gene_sets: str | None = None  # Sinkhorn pathways: library name or GMT; None: programs
    align_ode_steps: int = 4
    # Validation and early stopping (validation conditions only)
    val_every: int = 250
    patience: int = 4
    # Prediction
    ode_method: str = "midpoint"  # euler, midpoint, rk4
    ode_steps: int = 5  # 20 gave the same predictions at 4x the flow's cost (§7)
    residual_decoding: bool = True  # a cell = its start cell + the decoded latent change
    # Share of the flow's mean change kept, in [0, 1]; None: chosen per condition kind by
    # cross-validation on training conditions (§2.4), holding out cv_hidden_genes of the seen
    # genes and cv_doubles of the other combinations; kinds with fewer than cv_min_conditions
    # held-out conditions keep the start's mean.
    mean_weight: float | None = None
    # Scale of the flow's reshaping of the cells around their mean, >= 0 (1: as the flow moved
    # them); None: chosen per condition kind from SHAPE_WEIGHT_GRID in the same fold by energy
    # distance to the held-out conditions' cells on control PCs and on genes (kinds with too few
    # take the pooled choice; 0 when the fold has too few in all).
    shape_weight: float | None = None
    # Share of the combinator's mean in a combination's start, in [0, 1] (calibrated_additive
    # start only); None: chosen per combination kind from COMBINATOR_WEIGHT_GRID in the same fold
    # by MSE on the held-out combinations' top DE genes (kinds with too few keep the start's mean).
    combinator_weight: float | None = None
    cv_hidden_genes: float = 0.1
    cv_doubles: float = 0.2
    cv_min_conditions: int = 3
    max_control_cells: int = 2000  # control cells kept in the checkpoint as flow sources
    # Cells sampled (seeded) for gene embeddings, GRC, the autoencoder and the flow's targets;
    # smaller data use every cell. Bounds fit memory and time whatever the number of cells.
    max_fit_cells: int = 50_000
    # Hardware and reproducibility
    accelerator: str = "cpu"
    devices: int = 1  # devices per node; under "ddp" each draws its own batch every step
    strategy: str = "auto"  # "auto" or "ddp": one process per device (README, multi-GPU)
    num_nodes: int = 1  # machines of a multi-node run (torchrun or SLURM starts the processes)
    progress: bool = False
    seed: int = 0

    def __post_init__(self) -> None:
        choices = {
            "programs": PROGRAM_SOURCES,
            "autoencoder": AUTOENCODERS,
            "ode_method": ODE_METHODS,
            "missing_gene": ("error", "mean"),
            "unseen_shift": ("auto", "mean", "ridge"),
            "start": STARTS,
            "relation_graph": RELATION_GRAPHS,
        }
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                raise ValueError(
                    f"ScBIGConfig.{name} must be one of {allowed}, got {getattr(self, name)!r}"
                )
        positive = (
            "n_programs",
            "latent_dim",
            "ae_batch_size",
            "flow_steps",
            "flow_conditions_per_batch",
            "flow_cells_per_condition",
            "val_every",
            "ode_steps",
            "align_ode_steps",
            "max_fit_cells",
        )
        for name in positive:
            if getattr(self, name) < 1:
                raise ValueError(
                    f"ScBIGConfig.{name} must be at least 1, got {getattr(self, name)}"
                )
        if not 0.0 <= self.unseen_rate <= 1.0:
            raise ValueError(f"ScBIGConfig.unseen_rate must be in [0, 1], got {self.unseen_rate}")
        if self.calibration_genes < 0:
            raise ValueError(
                f"ScBIGConfig.calibration_genes must be non-negative, got {self.calibration_genes}"
            )
        if self.mean_weight is not None and not 0.0 <= self.mean_weight <= 1.0:
            raise ValueError(f"ScBIGConfig.mean_weight must be in [0, 1], got {self.mean_weight}")
        if self.shape_weight is not None and not 0.0 <= self.shape_weight < float("inf"):
            raise ValueError(
                f"ScBIGConfig.shape_weight must be a finite number >= 0, got {self.shape_weight}"
            )
        if not 0.0 <= self.prior_combination_weight < float("inf"):
            raise ValueError(
                "ScBIGConfig.prior_combination_weight must be a finite number >= 0, got "
                f"{self.prior_combination_weight}"
            )
        if not 0.0 <= self.prior_shrinkage < float("inf"):
            raise ValueError(
                f"ScBIGConfig.prior_shrinkage must be a finite number >= 0, got {self.prior_shrinkage}"
            )
        if not 0.0 <= self.prior_pooled_share <= 1.0:
            raise ValueError(
                f"ScBIGConfig.prior_pooled_share must be in [0, 1], got {self.prior_pooled_share}"
            )
        share = self.combinator_weight
        if share is not None and not 0.0 <= share <= 1.0:
            raise ValueError(f"ScBIGConfig.combinator_weight must be in [0, 1], got {share}")
        if share and self.start != "calibrated_additive":
            raise ValueError(
                "ScBIGConfig.combinator_weight blends the combinator into the calibrated_additive "
                f"start; with start={self.start!r} leave it None or 0"
            )
        for name in ("cv_hidden_genes", "cv_doubles"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise ValueError(f"ScBIGConfig.{name} must be in [0, 1), got {getattr(self, name)}")
        if self.cv_min_conditions < 1:
            raise ValueError(
                f"ScBIGConfig.cv_min_conditions must be at least 1, got {self.cv_min_conditions}"
            )
        check_embedding_spec(self.gene_embedding, "ScBIGConfig.gene_embedding")
        if self.ae_epochs < 0:
            raise ValueError(f"ScBIGConfig.ae_epochs must be non-negative, got {self.ae_epochs}")
        for name in ("devices", "num_nodes"):
            if getattr(self, name) < 1:
                raise ValueError(
                    f"ScBIGConfig.{name} must be at least 1, got {getattr(self, name)}"
                )

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)
