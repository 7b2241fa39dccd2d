"""Configuration of the scBIG-style model: one frozen dataclass, saved in every checkpoint."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from perturbflow.programs.priors import RELATION_GRAPHS, check_embedding_spec

PROGRAM_SOURCES = ("grc", "random")
AUTOENCODERS = ("gcae", "mlp", "pca")
ODE_METHODS = ("euler", "midpoint", "rk4")
MEAN_WEIGHT_GRID = (0.0, 0.25, 0.5, 0.75, 1.0)
STARTS = ("calibrated_additive", "combinator", "control")


@dataclass(frozen=True)
class ScBIGConfig:
    """Every setting of :class:`~perturbflow.models.scbig.ScBIG` (docs/method.md §2).

    Defaults fit a CPU budget of minutes (scBIG's GPU settings are a config away: 256-d tokens,
    3 blocks, a 1024-wide velocity MLP, 500k flow iterations).

    The flow starts at ``start``: ``calibrated_additive`` (control cells shifted by the
    :class:`~perturbflow.models.baselines.CalibratedAdditive` prediction, configured by
    ``calibrate_prior``, ``target_aware_prior`` and ``unseen_shift``), ``combinator`` (shifted by
    the :class:`~perturbflow.models.baselines.Combinator` prediction, default settings) or
    ``control`` (the control cells themselves). The flow learns the residual over that start for
    every kind of condition. ``mean_weight`` scales the flow's change of the *mean* (its
    reshaping of the cells around their mean is always kept); ``None`` chooses a weight per
    condition kind (``seen_single``, ``unseen_single``, ``combo_seen0/1/2``) from
    ``MEAN_WEIGHT_GRID`` by cross-validation on training conditions: a
    flow is fitted without ``cv_hidden_genes`` of the seen genes (their singles and combinations)
    and ``cv_doubles`` of the remaining training combinations, and each weight is scored on
    those held-out conditions. A kind with fewer than ``cv_min_conditions`` held-out conditions
    keeps the start's mean (weight 0). ``delta_conditioning`` gives the flow the start model's
    single deltas of the condition's genes, pooled symmetrically in program space (sum, pairwise
    product, max, min), next to the gene vectors.

    Ablation switches: ``programs="random"`` (no GRC), ``autoencoder="mlp"`` (no module
    attention), ``alignment=False``, ``ot_pairing=False`` (random pairing), ``autoencoder="pca"``
    (flow in PCA space), ``start="control"``, ``calibrate_prior=False``,
    ``target_aware_prior=False``, ``delta_conditioning=False``.

    Prior knowledge: ``gene_embedding`` is ``"data"`` (correlation embedding of the training
    cells), a registered prior source (``go``, ``ppi``, ``text``, ``concat``, ``mean``; several
    joined by ``+``) or a path to a gene-embedding table, used next to the data embedding as
    GRC's semantic embedding and the condition encoder's gene vectors. ``relation_graph`` is
    GRC's relation graph (``coexpression``, ``ppi``, ``regulons``, ``pathways``). ``priors`` is
    the data folder holding ``priors/``. ``unseen_shift="auto"`` is ``ridge`` with a prior
    embedding and ``mean`` with the data embedding. ``pathway_gene_sets`` gives the pathways of
    the Sinkhorn alignment loss (a gene-set library name or a GMT path; ``None``: the programs).
    ``residual_decoding`` predicts each cell as its start cell plus the decoded latent change.
    ``unseen_rate`` is the share of training draws that present a condition as if one of its
    genes had never been perturbed.
    """

    # Prior knowledge: gene vectors and relation graph
    gene_embedding: str = "data"
    relation_graph: str = "coexpression"
    priors: str | None = None
    # Gene programs (§2.1)
    programs: str = "grc"
    n_programs: int = 32
    embedding_components: int = 32
    knn: int = 10
    # Autoencoder (§2.2)
    autoencoder: str = "gcae"
    chunk_size: int = 64
    token_dim: int = 64
    n_heads: int = 8
    n_blocks: int = 2
    n_modules: int = 8
    latent_dim: int = 50
    ae_epochs: int = 10
    ae_batch_size: int = 256
    ae_lr: float = 1e-3
    # Condition encoder (§2.3)
    gene_embedding_dim: int = 128
    condition_dim: int = 256
    missing_gene: str = "mean"
    # Flow matching (§2.4)
    flow_hidden: int = 512
    flow_layers: int = 2
    flow_dropout: float = 0.1
    flow_steps: int = 1000
    flow_conditions_per_batch: int = 8
    flow_cells_per_condition: int = 64
    flow_lr: float = 5e-4
    grad_clip: float = 1.0
    ot_pairing: bool = True
    unseen_rate: float = 0.0
    start: str = "calibrated_additive"
    calibrate_prior: bool = True
    target_aware_prior: bool = True
    unseen_shift: str = "auto"
    delta_conditioning: bool = True
    sigma: float = 0.0
    # Structure-aware alignment (§2.5)
    alignment: bool = True
    align_every: int = 25
    cluster_corr_weight: float = 0.1
    pathway_ot_weight: float = 0.1
    pathway_gene_sets: str | None = None
    align_ode_steps: int = 4
    # Validation and early stopping (validation conditions only)
    val_every: int = 250
    patience: int = 4
    # Prediction
    ode_method: str = "midpoint"
    ode_steps: int = 20
    residual_decoding: bool = True
    mean_weight: float | None = None
    cv_hidden_genes: float = 0.1
    cv_doubles: float = 0.2
    cv_min_conditions: int = 3
    max_control_cells: int = 2000
    # Hardware and reproducibility
    accelerator: str = "cpu"
    devices: int = 1
    strategy: str = "auto"
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
        )
        for name in positive:
            if getattr(self, name) < 1:
                raise ValueError(
                    f"ScBIGConfig.{name} must be at least 1, got {getattr(self, name)}"
                )
        if not 0.0 <= self.unseen_rate <= 1.0:
            raise ValueError(f"ScBIGConfig.unseen_rate must be in [0, 1], got {self.unseen_rate}")
        if self.mean_weight is not None and not 0.0 <= self.mean_weight <= 1.0:
            raise ValueError(f"ScBIGConfig.mean_weight must be in [0, 1], got {self.mean_weight}")
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

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)
