"""Completing a prior network: graph-attention link prediction over gene representations.

After GENELink (Chen & Liu, Brief. Bioinform. 2022): every gene
carries a feature vector (:func:`gene_features`: expression statistics, the project's encoder, or
a prior embedding), a graph-attention network passes messages along the *training* edges of a
partial prior network, and a decoder scores a (regulator, target) pair from the two genes'
embeddings. Scoring held-out edges against non-edges of the same regulators says how much of the
network the representations recover.

- :class:`CompletionConfig`: the model, training and split settings.
- :func:`split_edges`: held-out positives, same-regulator negatives, training pairs (seeded).
- :class:`LinkPredictor`: the torch module (graph attention encoder + pair decoder).
- :func:`complete_network`: split, train, score; returns a :class:`CompletionResult`.
- :func:`gene_features`: a ``genes × dims`` feature table of one kind
  (the ``encoder`` kind reads each gene's correlations with the latent codes, or with
  :func:`decoder_jacobian` its decoder Jacobian row).

Pairs are directed: ``source`` is the regulator, ``target`` the regulated gene. Edge signs are
not used.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Sequence
from dataclasses import dataclass

import anndata as ad
import numpy as np
import pandas as pd
import scipy.sparse as sp
import torch
import torch.nn.functional as F
from sklearn.metrics import average_precision_score, roc_auc_score
from torch import nn

from perturbflow.data import PerturbationDataset
from perturbflow.models.scbig import ScBIGConfig
from perturbflow.models.scbig.modules import build_autoencoder
from perturbflow.models.scbig.objectives import AutoencoderObjective
from perturbflow.programs.grc import GRCConfig, gene_relation_clustering
from perturbflow.programs.priors import correlation_embedding, prior_gene_table
from perturbflow.programs.relations import coexpression_knn_graph
from perturbflow.train import TrainerSettings, fit_objective

logger = logging.getLogger(__name__)

__all__ = [
    "DECODERS",
    "EDGE_TYPES",
    "FEATURE_KINDS",
    "CompletionConfig",
    "CompletionInputError",
    "CompletionResult",
    "EdgeSplit",
    "FeatureConfig",
    "GraphAttentionLayer",
    "LinkPredictor",
    "complete_network",
    "decoder_jacobian",
    "gene_features",
    "message_passing_graph",
    "split_edges",
]

DECODERS = ("bilinear", "mlp")
#: Edge types of the message-passing graph: a training edge regulator → target, the same edge
#: read backwards (target → regulator), and every gene's self-loop.
EDGE_TYPES = ("forward", "reverse", "self")
FEATURE_KINDS = ("expression", "encoder", "prior:<source>")
ENCODER_READOUTS = ("jacobian", "correlation")
_PAIR_COLUMNS = ["source", "target"]


class CompletionInputError(ValueError):
    """A network, feature table or dataset cannot be used for completion; the message says why."""


# --- configuration --------------------------------------------------------------------------


@dataclass(frozen=True)
class CompletionConfig:
    """Settings of :func:`complete_network`.

    Attributes:
        hidden_dim: width D of gene embeddings; a multiple of ``n_heads``.
        n_heads: attention heads per graph-attention layer.
        n_layers: graph-attention layers (0: the decoder sees projected features only, no
            message passing).
        decoder: ``"bilinear"`` (regulator and target role projections, dot product) or
            ``"mlp"`` (an MLP on ``[regulator, target, regulator ⊙ target]``).
        epochs: full-batch optimisation steps.
        lr: Adam learning rate.
        weight_decay: Adam L2 penalty.
        dropout: dropout on embeddings and attention weights, in [0, 1).
        held_out: share of the network's edges held out as test positives, in (0, 1).
        negatives_per_positive: training negatives drawn per training positive, per regulator.
        test_negatives_per_positive: test negatives drawn per test positive, per regulator.
        masked_share: share of the training edges taken out of the message-passing graph each
            epoch to be the positives of that epoch's loss, in [0, 1) (0: every training edge
            is both shown and scored, as in GENELink).
        seed: seeds the split, the initial weights and dropout.
    """

    hidden_dim: int = 32
    n_heads: int = 4
    n_layers: int = 2
    decoder: str = "bilinear"
    epochs: int = 100
    lr: float = 5e-3
    weight_decay: float = 5e-4
    dropout: float = 0.1
    held_out: float = 0.2
    negatives_per_positive: int = 1
    test_negatives_per_positive: int = 1
    masked_share: float = 0.3
    seed: int = 0

    def __post_init__(self) -> None:
        for name in (
            "hidden_dim",
            "n_heads",
            "epochs",
            "negatives_per_positive",
            "test_negatives_per_positive",
        ):
            if getattr(self, name) < 1:
                raise ValueError(
                    f"CompletionConfig.{name} must be at least 1, got {getattr(self, name)}"
                )
        if self.n_layers < 0:
            raise ValueError(f"CompletionConfig.n_layers must be at least 0, got {self.n_layers}")
        if self.hidden_dim % self.n_heads != 0:
            raise ValueError(
                f"CompletionConfig.hidden_dim ({self.hidden_dim}) must be a multiple of "
                f"n_heads ({self.n_heads})"
            )
        if self.decoder not in DECODERS:
            raise ValueError(
                f"CompletionConfig.decoder must be one of {DECODERS}, got {self.decoder!r}"
            )
        if not 0.0 < self.held_out < 1.0:
            raise ValueError(
                f"CompletionConfig.held_out must be in (0, 1) (a share of the edges), "
                f"got {self.held_out}"
            )
        if not 0.0 <= self.masked_share < 1.0:
            raise ValueError(
                f"CompletionConfig.masked_share must be in [0, 1), got {self.masked_share}"
            )
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"CompletionConfig.dropout must be in [0, 1), got {self.dropout}")
        if not self.lr > 0:
            raise ValueError(f"CompletionConfig.lr must be positive, got {self.lr}")
        if not self.weight_decay >= 0:
            raise ValueError(
                f"CompletionConfig.weight_decay must be non-negative, got {self.weight_decay}"
            )


# --- edge split -----------------------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class EdgeSplit:
    """Directed gene pairs (columns ``source, target``) of one completion run.

    ``train_positive`` are the prior edges kept; they are also the only forward edges of the
    message-passing graph. ``test_positive`` are the held-out edges. Negatives are non-edges of
    the full network with the same regulators: ``test_negative`` drawn first,
    ``train_negative`` then drawn from the pairs left, so no pair is in two tables.
    """

    train_positive: pd.DataFrame
    train_negative: pd.DataFrame
    test_positive: pd.DataFrame
    test_negative: pd.DataFrame

    def summary(self) -> pd.DataFrame:
        """Long-format counts: one row per ``(part, label)`` with ``n_pairs``."""
        rows = [
            {"part": part, "label": label, "n_pairs": len(getattr(self, f"{part}_{name}"))}
            for part in ("train", "test")
            for label, name in ((1, "positive"), (0, "negative"))
        ]
        return pd.DataFrame(rows)


def split_edges(network: pd.DataFrame, genes: Sequence[str], config: CompletionConfig) -> EdgeSplit:
    """Hold out ``config.held_out`` of the edges and draw same-regulator negatives (GENELink).

    ``network`` holds distinct directed edges (``source, target``, no self-loops) between
    ``genes``, the candidate targets of every regulator. Test positives are a seeded random share
    of all edges (at least one edge in each part). For each regulator, test negatives are
    ``test_negatives_per_positive`` times its test positives, drawn from the genes it does not
    regulate in the *full* network (never itself); training negatives are
    ``negatives_per_positive`` times its training positives, drawn from the non-targets that are
    not already test negatives. A regulator with too few non-targets gets all it has.
    """
    rng = np.random.default_rng(config.seed)
    edges = network[_PAIR_COLUMNS].sort_values(_PAIR_COLUMNS, ignore_index=True)
    n_edges = len(edges)
    n_test = min(max(round(config.held_out * n_edges), 1), n_edges - 1)
    is_test = np.zeros(n_edges, dtype=bool)
    is_test[rng.choice(n_edges, n_test, replace=False)] = True

    universe = np.asarray(sorted(map(str, genes)), dtype=object)  # (G,)
    targets_of = edges.groupby("source")["target"].agg(frozenset)
    test_counts = edges[is_test].groupby("source").size()
    train_counts = edges[~is_test].groupby("source").size()
    test_negative, train_negative = [], []
    short = 0
    for regulator in sorted(targets_of.index):
        excluded = [*targets_of[regulator], regulator]
        candidates = universe[~np.isin(universe, excluded)]  # (C,)
        n_want = config.test_negatives_per_positive * int(test_counts.get(regulator, 0))
        drawn = _draw(rng, candidates, n_want)
        short += n_want - len(drawn)
        test_negative += [(regulator, target) for target in drawn]
        remaining = np.setdiff1d(candidates, drawn) if len(drawn) else candidates
        n_want = config.negatives_per_positive * int(train_counts.get(regulator, 0))
        drawn = _draw(rng, remaining, n_want)
        short += n_want - len(drawn)
        train_negative += [(regulator, target) for target in drawn]
    if short:
        logger.warning(
            "completion: %d negatives fewer than asked for: some regulators have too few "
            "non-target genes among the %d genes",
            short,
            len(universe),
        )
    return EdgeSplit(
        train_positive=edges[~is_test].reset_index(drop=True),
        train_negative=pd.DataFrame(train_negative, columns=_PAIR_COLUMNS),
        test_positive=edges[is_test].reset_index(drop=True),
        test_negative=pd.DataFrame(test_negative, columns=_PAIR_COLUMNS),
    )


def _draw(rng: np.random.Generator, candidates: np.ndarray, n: int) -> np.ndarray:
    """Up to ``n`` distinct candidates in a seeded random order (all of them if fewer)."""
    if n <= 0 or len(candidates) == 0:
        return candidates[:0]
    return rng.choice(candidates, min(n, len(candidates)), replace=False)


def message_passing_graph(
    train_positive: pd.DataFrame, genes: Sequence[str]
) -> tuple[torch.Tensor, torch.Tensor]:
    """Edges along which :class:`LinkPredictor` passes messages, built from training edges only.

    Returns ``edge_index`` ``(2, E)`` (row 0 the sending gene, row 1 the receiving gene, indices
    into ``genes``) and ``edge_type`` ``(E,)`` (indices into :data:`EDGE_TYPES`): every training
    edge regulator → target (``forward``), the same edge target → regulator (``reverse``, so a
    regulator also hears from its targets; a regulator without regulators would otherwise see
    only itself), and a self-loop per gene (``self``, so every gene keeps its own features).
    A held-out pair is never a forward edge; when the prior has both u → v and v → u and only
    one is held out, the other's reverse edge joins the same two genes, which the prior states.
    """
    position = {gene: index for index, gene in enumerate(genes)}
    source = torch.as_tensor(train_positive["source"].map(position).to_numpy(np.int64))  # (P,)
    target = torch.as_tensor(train_positive["target"].map(position).to_numpy(np.int64))  # (P,)
    return _graph(source, target, len(genes))


def _graph(
    source: torch.Tensor, target: torch.Tensor, n_genes: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Forward, reverse and self-loop edges of edges ``source[i] → target[i]`` (P,) each."""
    loops = torch.arange(n_genes)  # (G,)
    senders = torch.cat([source, target, loops])  # (E,)
    receivers = torch.cat([target, source, loops])  # (E,)
    edge_type = torch.cat(
        [
            torch.full_like(source, EDGE_TYPES.index("forward")),
            torch.full_like(source, EDGE_TYPES.index("reverse")),
            torch.full_like(loops, EDGE_TYPES.index("self")),
        ]
    )  # (E,)
    return torch.stack([senders, receivers]), edge_type  # (2, E), (E,)


# --- the module -----------------------------------------------------------------------------


class GraphAttentionLayer(nn.Module):
    """One multi-head graph-attention layer (GAT, Veličković et al. 2018) with typed edges.

    A gene's update is the attention-weighted sum of its in-neighbours' messages. Attention logits
    are GAT's ``LeakyReLU(a_s · W h_j + a_r · W h_i)`` plus a learned per-head bias of the edge's
    type; messages use a value projection per edge type, so what a gene hears from its
    regulators, its targets and itself can differ. Softmax runs over each receiver's edges.
    """

    def __init__(self, dim: int, n_heads: int, dropout: float) -> None:
        super().__init__()
        self.n_heads = n_heads
        self.head_dim = dim // n_heads
        self.key = nn.Linear(dim, dim, bias=False)
        self.values = nn.ModuleList(nn.Linear(dim, dim, bias=False) for _ in EDGE_TYPES)
        self.attend_sender = nn.Parameter(torch.randn(n_heads, self.head_dim) * 0.1)  # (H, Dh)
        self.attend_receiver = nn.Parameter(torch.randn(n_heads, self.head_dim) * 0.1)  # (H, Dh)
        self.type_bias = nn.Embedding(len(EDGE_TYPES), n_heads)
        nn.init.zeros_(self.type_bias.weight)
        self.output = nn.Linear(dim, dim)
        self.dropout = nn.Dropout(dropout)

    def forward(
        self, nodes: torch.Tensor, edge_index: torch.Tensor, edge_type: torch.Tensor
    ) -> torch.Tensor:
        """``nodes`` (N, D), ``edge_index`` (2, E), ``edge_type`` (E,) → updates (N, D)."""
        n_nodes = nodes.shape[0]
        sender, receiver = edge_index  # (E,), (E,)
        keys = self.key(nodes).view(n_nodes, self.n_heads, self.head_dim)  # (N, H, Dh)
        logits = (keys[sender] * self.attend_sender).sum(-1) + (
            keys[receiver] * self.attend_receiver
        ).sum(-1)  # (E, H)
        logits = F.leaky_relu(logits + self.type_bias(edge_type), 0.2)  # (E, H)
        weights = self.dropout(_receiver_softmax(logits, receiver, n_nodes))  # (E, H)
        values = torch.stack([value(nodes) for value in self.values])  # (T, N, D)
        messages = values[edge_type, sender].view(-1, self.n_heads, self.head_dim)  # (E, H, Dh)
        pooled = nodes.new_zeros(n_nodes, self.n_heads, self.head_dim)  # (N, H, Dh)
        pooled = pooled.index_add(0, receiver, weights.unsqueeze(-1) * messages)  # (N, H, Dh)
        return self.output(pooled.reshape(n_nodes, -1))  # (N, D)


def _receiver_softmax(logits: torch.Tensor, receiver: torch.Tensor, n_nodes: int) -> torch.Tensor:
    """Softmax of ``logits`` (E, H) over the edges of each receiving node; every node needs one."""
    index = receiver.unsqueeze(-1).expand_as(logits)  # (E, H)
    peak = logits.new_full((n_nodes, logits.shape[1]), -torch.inf)  # (N, H)
    peak = peak.scatter_reduce(0, index, logits, reduce="amax")  # (N, H)
    scores = torch.exp(logits - peak[receiver].detach())  # (E, H)
    total = logits.new_zeros(n_nodes, logits.shape[1]).index_add(0, receiver, scores)  # (N, H)
    return scores / total[receiver]  # (E, H)


class LinkPredictor(nn.Module):
    """Gene features → graph-attention embeddings → a logit per (regulator, target) pair.

    Features are projected to ``hidden_dim``; each layer adds a GELU of its graph-attention
    update to the residual stream, then LayerNorm. Regulator and target roles get their own
    projection of the final embedding (a gene can be both). The ``bilinear`` decoder takes the dot
    product of the two roles (a low-rank bilinear form); the ``mlp`` decoder reads
    ``[regulator, target, regulator ⊙ target]``.
    """

    def __init__(self, n_features: int, config: CompletionConfig) -> None:
        super().__init__()
        dim = config.hidden_dim
        self.config = config
        self.project = nn.Linear(n_features, dim)
        self.layers = nn.ModuleList(
            GraphAttentionLayer(dim, config.n_heads, config.dropout) for _ in range(config.n_layers)
        )
        self.norms = nn.ModuleList(nn.LayerNorm(dim) for _ in range(config.n_layers))
        self.dropout = nn.Dropout(config.dropout)
        self.regulator_role = nn.Linear(dim, dim)
        self.target_role = nn.Linear(dim, dim)
        self.mlp = (
            nn.Sequential(nn.Linear(3 * dim, dim), nn.GELU(), nn.Linear(dim, 1))
            if config.decoder == "mlp"
            else None
        )

    def embed(
        self, features: torch.Tensor, edge_index: torch.Tensor, edge_type: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(N, F) features over the graph → (N, D) regulator-role and (N, D) target-role vectors."""
        hidden = self.dropout(self.project(features))  # (N, D)
        for layer, norm in zip(self.layers, self.norms, strict=True):
            update = F.gelu(layer(hidden, edge_index, edge_type))  # (N, D)
            hidden = norm(hidden + self.dropout(update))  # (N, D)
        return self.regulator_role(hidden), self.target_role(hidden)  # (N, D), (N, D)

    def decode(
        self, regulators: torch.Tensor, targets: torch.Tensor, pairs: torch.Tensor
    ) -> torch.Tensor:
        """Logits (P,) of ``pairs`` (P, 2) (regulator index, target index)."""
        source = regulators[pairs[:, 0]]  # (P, D)
        target = targets[pairs[:, 1]]  # (P, D)
        if self.mlp is None:
            return (source * target).sum(-1) / source.shape[-1] ** 0.5  # (P,)
        joint = torch.cat([source, target, source * target], dim=-1)  # (P, 3D)
        return self.mlp(joint).squeeze(-1)  # (P,)

    def forward(
        self,
        features: torch.Tensor,
        edge_index: torch.Tensor,
        edge_type: torch.Tensor,
        pairs: torch.Tensor,
    ) -> torch.Tensor:
        """Logits (P,) of ``pairs`` (P, 2) given features (N, F) and the graph (2, E), (E,)."""
        regulators, targets = self.embed(features, edge_index, edge_type)  # (N, D), (N, D)
        return self.decode(regulators, targets, pairs)  # (P,)


# --- completion -----------------------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class CompletionResult:
    """What :func:`complete_network` measured and the model it trained.

    Attributes:
        auroc: area under the ROC curve of the test pairs.
        auprc: average precision of the test pairs (chance level: their share of positives).
        scores: test pairs, columns ``source, target, score, label`` (``score`` the predicted
            edge probability, ``label`` 1 for a held-out edge, 0 for a negative).
        history: ``epoch, loss`` (training binary cross-entropy).
        split: the pairs of every part, see :class:`EdgeSplit`.
        genes: node order of the model (the network genes that have features).
        features: the model's input, ``genes × dims``.
        config: the settings used.
        model: the trained :class:`LinkPredictor`, in eval mode.
    """

    auroc: float
    auprc: float
    scores: pd.DataFrame
    history: pd.DataFrame
    split: EdgeSplit
    genes: tuple[str, ...]
    features: pd.DataFrame = dataclasses.field(repr=False)
    config: CompletionConfig
    model: LinkPredictor = dataclasses.field(repr=False)

    @property
    def metrics(self) -> pd.DataFrame:
        """Long format: ``metric, value, chance, n_positive, n_negative`` for AUROC and AUPRC."""
        n_positive = int(self.scores["label"].sum())
        n_negative = len(self.scores) - n_positive
        rows = [
            ("auroc", self.auroc, 0.5),
            ("auprc", self.auprc, n_positive / max(len(self.scores), 1)),
        ]
        return pd.DataFrame(
            [
                {
                    "metric": name,
                    "value": value,
                    "chance": chance,
                    "n_positive": n_positive,
                    "n_negative": n_negative,
                }
                for name, value, chance in rows
            ]
        )

    @torch.no_grad()
    def score(self, pairs: pd.DataFrame) -> pd.DataFrame:
        """Edge probabilities of any ``pairs`` (``source, target`` among :attr:`genes`).

        Messages pass along the training edges only, as in training. Returns an edges table
        ``source, target, score``.
        """
        position = {gene: index for index, gene in enumerate(self.genes)}
        unknown = sorted(set(pairs["source"]).union(pairs["target"]) - set(position))
        if unknown:
            raise CompletionInputError(
                f"{len(unknown)} gene(s) of the pairs are not nodes of the model "
                f"(e.g. {unknown[:5]}); score pairs among result.genes"
            )
        index = _pair_index(pairs, position)  # (P, 2)
        edge_index, edge_type = message_passing_graph(self.split.train_positive, self.genes)
        values = torch.as_tensor(self.features.to_numpy(np.float32))  # (N, F)
        probability = torch.sigmoid(self.model(values, edge_index, edge_type, index))  # (P,)
        table = pairs[_PAIR_COLUMNS].reset_index(drop=True).copy()
        table["score"] = probability.numpy().astype(np.float64)
        return table


def complete_network(
    network: pd.DataFrame, features: pd.DataFrame, config: CompletionConfig | None = None
) -> CompletionResult:
    """Train a graph-attention link predictor on part of ``network`` and score the rest.

    ``network`` is a network table (``source, target``; ``sign`` and other columns are ignored;
    duplicate pairs and self-loops are dropped). ``features`` is ``genes × dims`` (e.g. from
    :func:`gene_features`), used as given. Nodes are the network's genes that have a feature row;
    edges touching a gene without one are dropped with a warning. The split is
    :func:`split_edges`; messages pass along the training edges only
    (:func:`message_passing_graph`), less each epoch's ``masked_share`` of them, which are that
    epoch's positives; the loss is binary cross-entropy against the training negatives, with
    positives and negatives weighted equally. Test pairs are scored over the graph of all
    training edges. Deterministic given ``config.seed`` (CPU); the global torch RNG is left as
    it was.
    """
    config = config or CompletionConfig()
    edges, table = _validated_inputs(network, features)
    genes = tuple(sorted(set(edges["source"]).union(edges["target"])))
    table = table.loc[list(genes)]
    split = split_edges(edges, genes, config)
    for part in ("test", "train"):
        if getattr(split, f"{part}_negative").empty:
            raise CompletionInputError(
                f"no {part} negatives: every regulator of the {part} edges regulates every other "
                f"gene of the network ({len(genes)} genes); scoring needs non-edges"
            )
    logger.info(
        "completion: %d genes, %d training edges (+%d negatives), %d test edges (+%d negatives)",
        len(genes),
        len(split.train_positive),
        len(split.train_negative),
        len(split.test_positive),
        len(split.test_negative),
    )
    position = {gene: index for index, gene in enumerate(genes)}
    train_positive = _pair_index(split.train_positive, position)  # (P, 2)
    train_negative = _pair_index(split.train_negative, position)  # (Q, 2)
    test_pairs, test_labels = _labelled_pairs(
        split.test_positive, split.test_negative, position
    )  # (T, 2), (T,)
    edge_index, edge_type = message_passing_graph(split.train_positive, genes)  # (2, E), (E,)
    values = torch.as_tensor(table.to_numpy(np.float32))  # (N, F)

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.seed)
        model = LinkPredictor(values.shape[1], config)
        history = _train(model, values, train_positive, train_negative, config)
        model.eval()
        with torch.no_grad():
            logits = model(values, edge_index, edge_type, test_pairs)  # (T,)
    probability = torch.sigmoid(logits).numpy().astype(np.float64)  # (T,)
    labels = test_labels.numpy().astype(np.int64)  # (T,)
    scores = pd.concat([split.test_positive, split.test_negative], ignore_index=True)
    scores["score"] = probability
    scores["label"] = labels
    scores.attrs["perturbflow"] = {"complete_network": dataclasses.asdict(config)}
    auroc = float(roc_auc_score(labels, probability))
    auprc = float(average_precision_score(labels, probability))
    logger.info("completion: test AUROC %.3f, AUPRC %.3f", auroc, auprc)
    return CompletionResult(
        auroc=auroc,
        auprc=auprc,
        scores=scores,
        history=history,
        split=split,
        genes=genes,
        features=table,
        config=config,
        model=model,
    )


def _validated_inputs(
    network: pd.DataFrame, features: pd.DataFrame
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Distinct directed edges between genes with features, and the numeric feature table."""
    if not isinstance(network, pd.DataFrame):
        raise CompletionInputError(f"network must be a DataFrame, got {type(network).__name__}")
    missing = [column for column in _PAIR_COLUMNS if column not in network.columns]
    if missing:
        raise CompletionInputError(
            f"network lacks column(s) {missing}; a network table has columns source, target, sign"
        )
    if network.empty:
        raise CompletionInputError("network has no edges; completion needs a prior network")
    if not isinstance(features, pd.DataFrame) or features.shape[1] == 0:
        raise CompletionInputError(
            "features must be a genes × dims DataFrame with at least one column (see gene_features)"
        )
    if features.index.has_duplicates:
        duplicated = features.index[features.index.duplicated()].unique().tolist()
        raise CompletionInputError(f"features has duplicate genes, e.g. {duplicated[:5]}")
    try:
        values = features.to_numpy(np.float64)  # (G, F)
    except (TypeError, ValueError) as error:
        raise CompletionInputError(f"features must be numeric ({error})") from None
    if not np.isfinite(values).all():
        raise CompletionInputError(
            "features has NaN or infinite values; fill them (gene_features gives zeros to genes "
            "without a vector)"
        )
    table = pd.DataFrame(values, index=features.index.map(str), columns=features.columns)

    edges = network[_PAIR_COLUMNS].astype(str).drop_duplicates(ignore_index=True)
    loops = edges["source"] == edges["target"]
    if loops.any():
        logger.info("completion: dropping %d self-loop(s) of the network", int(loops.sum()))
        edges = edges[~loops].reset_index(drop=True)
    genes = sorted(set(edges["source"]).union(edges["target"]))
    lacking = [gene for gene in genes if gene not in table.index]
    if len(lacking) == len(genes):
        raise CompletionInputError(
            f"none of the network's {len(genes)} genes has a row in features (network genes "
            f"e.g. {genes[:3]}, feature genes e.g. {table.index[:3].tolist()}); are they the "
            "same kind of identifier?"
        )
    if lacking:
        kept = edges["source"].isin(table.index) & edges["target"].isin(table.index)
        logger.warning(
            "completion: %d of %d network genes have no features (e.g. %s); dropping their %d "
            "edge(s)",
            len(lacking),
            len(genes),
            lacking[:5],
            int((~kept).sum()),
        )
        edges = edges[kept].reset_index(drop=True)
    if len(edges) < 2:
        raise CompletionInputError(
            f"the network has {len(edges)} usable edge(s) between genes with features; "
            "holding some out needs at least 2"
        )
    return edges, table


def _pair_index(pairs: pd.DataFrame, position: dict[str, int]) -> torch.Tensor:
    """Gene-index pairs (P, 2) of a ``source, target`` table."""
    index = np.stack(
        [
            pairs["source"].map(position).to_numpy(np.int64),
            pairs["target"].map(position).to_numpy(np.int64),
        ],
        axis=1,
    )  # (P, 2)
    return torch.as_tensor(index.reshape(-1, 2))


def _labelled_pairs(
    positive: pd.DataFrame, negative: pd.DataFrame, position: dict[str, int]
) -> tuple[torch.Tensor, torch.Tensor]:
    """Index pairs (P, 2) of positives then negatives, and their labels (P,) (1, then 0)."""
    index = torch.cat([_pair_index(positive, position), _pair_index(negative, position)])
    labels = torch.cat([torch.ones(len(positive)), torch.zeros(len(negative))])  # (P,)
    return index, labels


def _train(
    model: LinkPredictor,
    features: torch.Tensor,
    positive: torch.Tensor,
    negative: torch.Tensor,
    config: CompletionConfig,
) -> pd.DataFrame:
    """Full-batch Adam on weighted binary cross-entropy; returns ``epoch, loss``.

    ``positive`` (P, 2) are the training edges, ``negative`` (Q, 2) the training non-edges.
    Each epoch a random ``masked_share`` of the positives leaves the message-passing graph and
    alone supplies the positive targets of the loss, so training scores edges absent from the
    graph, as testing does; with ``masked_share = 0`` every positive is both a graph edge and a
    target (GENELink's scheme), and the model can learn to recognise edges it was shown.
    """
    optimiser = torch.optim.Adam(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    n_genes, n_positive = features.shape[0], positive.shape[0]
    n_masked = max(round(config.masked_share * n_positive), 1) if config.masked_share > 0 else 0
    n_masked = min(n_masked, n_positive)
    generator = torch.Generator().manual_seed(config.seed)
    model.train()
    losses = []
    for _ in range(config.epochs):
        if n_masked:
            order = torch.randperm(n_positive, generator=generator)  # (P,)
            shown, supervised = positive[order[n_masked:]], positive[order[:n_masked]]
        else:
            shown, supervised = positive, positive  # (P, 2), (P, 2)
        edge_index, edge_type = _graph(shown[:, 0], shown[:, 1], n_genes)  # (2, E), (E,)
        pairs = torch.cat([supervised, negative])  # (S + Q, 2)
        labels = torch.cat([torch.ones(len(supervised)), torch.zeros(len(negative))])  # (S + Q,)
        # Positives weigh as much as the negatives together, whatever their numbers.
        pos_weight = torch.tensor(len(negative) / len(supervised))
        optimiser.zero_grad()
        logits = model(features, edge_index, edge_type, pairs)  # (S + Q,)
        loss = F.binary_cross_entropy_with_logits(logits, labels, pos_weight=pos_weight)
        loss.backward()
        optimiser.step()
        losses.append(loss.item())
    return pd.DataFrame({"epoch": np.arange(1, len(losses) + 1), "loss": losses})


# --- gene features --------------------------------------------------------------------------


@dataclass(frozen=True)
class FeatureConfig:
    """Settings of :func:`gene_features`.

    Attributes:
        n_components: principal components whose gene loadings the ``expression`` features
            hold (capped by the data's rank); also the width of the correlation embedding that
            GRC clusters for the ``encoder`` kind.
        latent_dim: latent size of the ``encoder`` kind's autoencoder (its feature width).
        n_programs: GRC gene programs that order the encoder's genes (capped at genes / 2);
            also its number of module tokens.
        knn: neighbours of the co-expression graph of GRC.
        chunk_size: genes per GCAE token (capped at the number of genes).
        token_dim: GCAE token width; a multiple of ``n_heads``.
        n_heads: GCAE attention heads.
        n_blocks: GCAE module-attention blocks.
        epochs: autoencoder training epochs.
        batch_size: cells per autoencoder step.
        lr: autoencoder Adam learning rate.
        encoder_readout: how the ``encoder`` kind reads a gene's vector off the trained
            autoencoder: ``"correlation"`` (the gene's correlation with each latent code over
            the cells; the default, measured in docs/method.md §8) or ``"jacobian"`` (the
            decoder's cell-averaged Jacobian row).
        probe_cells: cells at whose codes the decoder Jacobian is averaged.
        priors: data folder holding ``priors/`` for ``prior:<source>`` (default: the project's).
        seed: seeds programs, autoencoder and the probe cells.
    """

    n_components: int = 16
    latent_dim: int = 16
    n_programs: int = 8
    knn: int = 10
    chunk_size: int = 32
    token_dim: int = 32
    n_heads: int = 4
    n_blocks: int = 1
    epochs: int = 10
    batch_size: int = 128
    lr: float = 1e-3
    encoder_readout: str = "correlation"
    probe_cells: int = 256
    priors: str | None = None
    seed: int = 0

    def __post_init__(self) -> None:
        for name in (
            "n_components",
            "latent_dim",
            "n_programs",
            "knn",
            "chunk_size",
            "token_dim",
            "n_heads",
            "n_blocks",
            "epochs",
            "batch_size",
            "probe_cells",
        ):
            if getattr(self, name) < 1:
                raise ValueError(
                    f"FeatureConfig.{name} must be at least 1, got {getattr(self, name)}"
                )
        if self.token_dim % self.n_heads != 0 or self.token_dim % 2 != 0:
            raise ValueError(
                f"FeatureConfig.token_dim ({self.token_dim}) must be even and a multiple of "
                f"n_heads ({self.n_heads})"
            )
        if not self.lr > 0:
            raise ValueError(f"FeatureConfig.lr must be positive, got {self.lr}")
        if self.encoder_readout not in ENCODER_READOUTS:
            raise ValueError(
                f"FeatureConfig.encoder_readout must be one of {ENCODER_READOUTS}, got "
                f"{self.encoder_readout!r}"
            )


def gene_features(
    kind: str,
    dataset: PerturbationDataset | ad.AnnData | None,
    *,
    genes: Sequence[str],
    conditions: Sequence[str] | None = None,
    config: FeatureConfig | None = None,
) -> pd.DataFrame:
    """A ``(genes, dims)`` feature table of ``kind``, columns standardised, rows in ``genes`` order.

    Kinds:

    - ``"expression"``: per gene, the mean, variance and fraction of non-zero values of the
      dataset's (log-normalised) expression, and its loadings on the top ``n_components``
      principal components of the cells — computed on z-scored genes, so a loading is the
      Pearson correlation between the gene and the component's cell scores (each component's
      sign fixed so that its largest loading is positive).
    - ``"encoder"``: the project's GCAE autoencoder (scBIG's build: GRC programs from the
      co-expression graph order the genes; a small :class:`FeatureConfig`) trained on the
      expression, and per gene (``encoder_readout="correlation"``) its Pearson correlation with
      each latent code over the cells — the encoder's counterpart of the ``expression`` kind's
      PCA loadings — or (``"jacobian"``) the decoder's Jacobian row ``∂ x̂_g / ∂ z`` averaged over
      ``probe_cells`` cells: how the reconstructed gene moves along every latent axis. It is the
      nonlinear counterpart of a PCA loading and is defined for each gene separately, whereas
      GCAE's chunk tokens and readout weights are shared by the genes of a chunk or a slot.
      Central differences along each latent axis give it (the attention kernels lack
      forward-mode derivatives on CPU).
    - ``"prior:<source>"``: a prior-knowledge embedding from
      :func:`~perturbflow.programs.priors.prior_gene_table` (``go``, ``ppi``, ``text``, ``go+ppi``
      or a table path); ``dataset`` is not used and may be ``None``.

    Expression kinds use the dataset's cells (only those of ``conditions`` when given, for a
    :class:`~perturbflow.data.PerturbationDataset`). Each column is z-scored over the genes that
    have a vector; the others get zeros, and their count is logged. Raises
    :class:`CompletionInputError` for an unknown kind or unusable inputs.
    """
    config = config or FeatureConfig()
    wanted = list(dict.fromkeys(map(str, genes)))
    if not wanted:
        raise CompletionInputError("genes is empty; name the genes that need features")
    if kind.startswith("prior:"):
        source = kind.removeprefix("prior:")
        if not source:
            raise CompletionInputError("kind 'prior:' needs a source, e.g. 'prior:go'")
        table = prior_gene_table(source, wanted, priors=config.priors)
    elif kind in ("expression", "encoder"):
        expression, measured = _expression(dataset, conditions)  # (N, G), (G,)
        if kind == "expression":
            table = _expression_statistics(expression, measured, config.n_components)
        else:
            table = _encoder_features(expression, measured, config)
    else:
        raise CompletionInputError(
            f"unknown feature kind {kind!r}; one of 'expression', 'encoder', 'prior:<source>' "
            "(e.g. 'prior:go', 'prior:ppi', 'prior:text')"
        )
    return _standardised(table, wanted, kind)


def _expression(
    dataset: PerturbationDataset | ad.AnnData | None, conditions: Sequence[str] | None
) -> tuple[np.ndarray, pd.Index]:
    """Dense (cells, genes) expression and gene names of ``dataset``."""
    if isinstance(dataset, PerturbationDataset):
        adata = dataset.adata
        if conditions is not None:
            adata = adata[dataset.cell_mask(list(conditions))]
    elif isinstance(dataset, ad.AnnData):
        if conditions is not None:
            raise CompletionInputError(
                "conditions needs a PerturbationDataset; subset the AnnData instead"
            )
        adata = dataset
    else:
        raise CompletionInputError(
            "expression features need a PerturbationDataset or AnnData, got "
            f"{type(dataset).__name__}"
        )
    matrix = adata.X
    matrix = matrix.toarray() if sp.issparse(matrix) else np.asarray(matrix)
    expression = np.asarray(matrix, dtype=np.float64)  # (N, G)
    if expression.shape[0] < 2:
        raise CompletionInputError(
            f"expression features need at least 2 cells, got {expression.shape[0]}"
        )
    return expression, pd.Index(adata.var_names.map(str))


def _expression_statistics(
    expression: np.ndarray, genes: pd.Index, n_components: int
) -> pd.DataFrame:
    """Mean, variance, fraction non-zero and top-PC loadings of every gene: (G, 3 + k)."""
    n_cells, n_genes = expression.shape
    centred = expression - expression.mean(axis=0)  # (N, G)
    scale = centred.std(axis=0)  # (G,)
    standardised = np.divide(centred, scale, out=np.zeros_like(centred), where=scale > 0)
    _, singular, components = np.linalg.svd(standardised, full_matrices=False)  # (r,), (r, G)
    k = min(n_components, len(singular))
    loadings = components[:k].T * singular[:k] / np.sqrt(n_cells)  # (G, k) correlations
    signs = np.sign(loadings[np.abs(loadings).argmax(axis=0), np.arange(k)])  # (k,)
    loadings = loadings * np.where(signs == 0, 1.0, signs)
    statistics = np.column_stack(
        [expression.mean(axis=0), expression.var(axis=0), (expression != 0).mean(axis=0)]
    )  # (G, 3)
    columns = ["mean", "variance", "fraction_nonzero", *(f"pc{i}_loading" for i in range(k))]
    return pd.DataFrame(np.hstack([statistics, loadings]), index=genes, columns=columns)


def _encoder_features(
    expression: np.ndarray, genes: pd.Index, config: FeatureConfig
) -> pd.DataFrame:
    """Per-gene vectors (G, latent_dim) read off a small GCAE trained on ``expression``: the
    cell-averaged decoder Jacobian or each gene's correlation with the latent codes."""
    cells = expression.astype(np.float32)  # (N, G)
    n_genes = cells.shape[1]
    embedding = correlation_embedding(cells, genes, min(config.n_components, n_genes))
    adjacency = coexpression_knn_graph(cells, genes, k=min(config.knn, max(n_genes - 1, 1)))
    n_programs = min(config.n_programs, max(1, n_genes // 2))
    programs = gene_relation_clustering(
        embedding, adjacency, GRCConfig(n_clusters=n_programs, seed=config.seed), genes=genes
    )
    scbig = ScBIGConfig(
        autoencoder="gcae",
        chunk_size=min(config.chunk_size, n_genes),
        token_dim=config.token_dim,
        n_heads=config.n_heads,
        n_blocks=config.n_blocks,
        n_modules=n_programs,
        latent_dim=config.latent_dim,
        seed=config.seed,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.seed)
        autoencoder = build_autoencoder(scbig, programs, cells.mean(axis=0))
        objective = AutoencoderObjective(
            autoencoder,
            torch.from_numpy(cells),
            None,
            batch_size=config.batch_size,
            seed=config.seed,
        )
        fit_objective(
            objective,
            TrainerSettings(accelerator="cpu", devices=1),
            stage="gene_features_encoder",
            lr=config.lr,
            seed=config.seed,
            has_val=False,
            max_epochs=config.epochs,
            owner="gene_features",
        )
    autoencoder.eval()
    if config.encoder_readout == "correlation":
        with torch.no_grad():
            codes = torch.cat(
                [
                    autoencoder.encode(torch.from_numpy(cells[start : start + 4096]))
                    for start in range(0, len(cells), 4096)
                ]
            ).numpy()  # (N, L)
        correlations = _correlations(expression, codes.astype(np.float64))  # (G, L)
        columns = [f"latent{i}_correlation" for i in range(correlations.shape[1])]
        return pd.DataFrame(correlations, index=genes, columns=columns)
    rng = np.random.default_rng(config.seed)
    probe = rng.choice(len(cells), min(config.probe_cells, len(cells)), replace=False)
    with torch.no_grad():
        codes = autoencoder.encode(torch.from_numpy(cells[np.sort(probe)]))  # (B, L)
        jacobian = decoder_jacobian(autoencoder, codes)  # (G, L)
    columns = [f"latent{i}_jacobian" for i in range(jacobian.shape[1])]
    return pd.DataFrame(jacobian.numpy().astype(np.float64), index=genes, columns=columns)


def _correlations(expression: np.ndarray, codes: np.ndarray) -> np.ndarray:
    """Pearson correlation ``(G, L)`` of every gene (columns of ``expression`` (N, G)) with every
    latent code (columns of ``codes`` (N, L)) over the cells; 0 for a constant gene or code."""

    def standardised(values: np.ndarray) -> np.ndarray:
        centred = values - values.mean(axis=0)
        scale = centred.std(axis=0)
        return np.divide(centred, scale, out=np.zeros_like(centred), where=scale > 0)

    return standardised(expression).T @ standardised(codes) / len(expression)


@torch.no_grad()
def decoder_jacobian(autoencoder: nn.Module, codes: torch.Tensor) -> torch.Tensor:
    """Mean over cells of ``∂ decode(z) / ∂ z`` at ``codes`` (B, L), by central differences: (G, L).

    Row g says how the reconstructed gene g moves along every latent axis; for a linear decoder
    it is the gene's decoder weights. Any module with ``decode`` (B, L) → (B, G) works. The step
    along latent axis k is 1% of the codes' spread on that axis, small against the decoder's
    curvature and large against float32 rounding.
    """
    step = 0.01 * codes.std(dim=0).clamp_min(1e-3)  # (L,)
    columns = []
    for axis in range(codes.shape[1]):
        shift = torch.zeros_like(codes)  # (B, L)
        shift[:, axis] = step[axis]
        ahead = autoencoder.decode(codes + shift).mean(dim=0)  # (G,)
        behind = autoencoder.decode(codes - shift).mean(dim=0)  # (G,)
        columns.append((ahead - behind) / (2 * step[axis]))  # (G,)
    return torch.stack(columns, dim=1)  # (G, L)


def _standardised(table: pd.DataFrame, genes: list[str], kind: str) -> pd.DataFrame:
    """``table``'s rows of ``genes``, z-scored per column over the genes present, zero rows for
    the genes absent (the column mean)."""
    table = table.set_axis(table.index.map(str))
    table = table[~table.index.duplicated()]
    present = [gene for gene in genes if gene in table.index]
    missing = [gene for gene in genes if gene not in table.index]
    values = table.loc[present].to_numpy(np.float64)  # (n, d)
    centred = values - values.mean(axis=0) if len(values) else values
    scale = centred.std(axis=0) if len(values) else np.ones(values.shape[1])
    standard = np.divide(centred, scale, out=np.zeros_like(centred), where=scale > 1e-12)
    frame = pd.DataFrame(standard, index=present, columns=table.columns)
    if missing:
        logger.warning(
            "gene features %r: %d of %d genes have no vector (e.g. %s); they get zeros",
            kind,
            len(missing),
            len(genes),
            missing[:5],
        )
    result = frame.reindex(genes, fill_value=0.0)
    result.index.name = "gene"
    result.attrs["perturbflow"] = {"gene_features": kind, "n_missing": len(missing)}
    return result
