"""Gene regulatory networks: inferred from screens and expression, completed by a graph network,
scored against known truth.

Tables (pandas DataFrames) shared by every module:

- **edges** (a prediction): columns ``source, target, score`` (``score`` ≥ 0, higher = more
  confident), optionally ``sign`` (+1 activation, -1 repression, 0 unknown), ``effect``,
  ``statistic``, ``pvalue``, ``fdr``.
- **network** (a truth or prior): columns ``source, target, sign``.

Modules: :mod:`~perturbflow.grn.network` (reading and validating networks),
:mod:`~perturbflow.grn.screen` (edges from knock-outs and from a model's in-silico
perturbations), :mod:`~perturbflow.grn.expression` (tree-ensemble and correlation edges),
:mod:`~perturbflow.grn.metrics` (AUPRC, AUROC, ratios, early precision),
:mod:`~perturbflow.grn.completion` (graph-attention link prediction over a prior network) and
:mod:`~perturbflow.grn.export` (BEELINE, GraphML and CSV files).
"""

from perturbflow.grn.completion import (
    CompletionConfig,
    CompletionResult,
    FeatureConfig,
    complete_network,
    gene_features,
)
from perturbflow.grn.export import read_edges_csv, write_beeline, write_edges_csv, write_graphml
from perturbflow.grn.expression import correlation_edges, tree_edges
from perturbflow.grn.metrics import epr_permutation_pvalue, score_edges
from perturbflow.grn.network import (
    NETWORK_SOURCES,
    GRNInputError,
    read_network,
    restrict_network,
    validate_edges,
)
from perturbflow.grn.screen import (
    model_edges,
    regression_edges,
    screen_edges,
    transitive_reduction,
)

__all__ = [
    "NETWORK_SOURCES",
    "CompletionConfig",
    "CompletionResult",
    "FeatureConfig",
    "GRNInputError",
    "complete_network",
    "correlation_edges",
    "epr_permutation_pvalue",
    "gene_features",
    "model_edges",
    "read_edges_csv",
    "read_network",
    "regression_edges",
    "restrict_network",
    "score_edges",
    "screen_edges",
    "transitive_reduction",
    "tree_edges",
    "validate_edges",
    "write_beeline",
    "write_edges_csv",
    "write_graphml",
]
