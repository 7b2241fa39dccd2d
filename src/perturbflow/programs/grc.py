"""Gene-Relation Clustering (GRC): balanced gene programs from embeddings and a relation graph.

Implements docs/method.md §2.1: KMeans on L2-normalised gene embeddings, balanced cluster capacities,
then a few rounds of optimal-transport refinement whose cost mixes cosine distance to the cluster
centroid with the fraction of the cluster that is *not* a graph neighbour of the gene, followed
by capacity-constrained rounding. The result, :class:`GenePrograms`, is self-describing and
JSON-serialisable so it can travel inside a checkpoint.
"""

from __future__ import annotations

import dataclasses
import logging
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import ot
import pandas as pd
import scipy.sparse as sp
from sklearn.cluster import KMeans

from perturbflow.programs.genesets import _gene_positions

logger = logging.getLogger(__name__)

# Sinkhorn counts as converged when every cluster receives its capacity to within this fraction.
_SINKHORN_MARGINAL_RTOL = 1e-3
_SINKHORN_MAX_ITER = 1000
_DEFAULT_SHUFFLES = 100


class GRCInputError(ValueError):
    """Inputs to GRC are inconsistent (shapes, gene names, cluster count); the message says how."""


@dataclass(frozen=True)
class GRCConfig:
    """GRC settings; defaults are scBIG's (K = 32, 10 KMeans starts, 3 rounds, Sinkhorn reg 0.1)."""

    n_clusters: int = 32
    n_init: int = 10
    n_rounds: int = 3
    sinkhorn_reg: float = 0.1
    relation_weight: float = 1.0
    seed: int = 0

    def __post_init__(self) -> None:
        if self.n_clusters < 1:
            raise ValueError(f"n_clusters must be at least 1, got {self.n_clusters}")
        if self.n_init < 1:
            raise ValueError(f"n_init must be at least 1, got {self.n_init}")
        if self.n_rounds < 1:
            raise ValueError(
                f"n_rounds must be at least 1 (the rounds balance the clusters), got {self.n_rounds}"
            )
        if not self.sinkhorn_reg > 0:
            raise ValueError(f"sinkhorn_reg must be positive, got {self.sinkhorn_reg}")
        if not self.relation_weight >= 0:
            raise ValueError(f"relation_weight must be non-negative, got {self.relation_weight}")


@dataclass(frozen=True, eq=False)
class GenePrograms:
    """Gene programs: a cluster label per gene, the GRC gene order and cluster embeddings.

    ``labels`` ``(G,)`` program of each gene (``0 … K-1``); ``order`` ``(G,)`` gene indices sorted
    by program, then by cosine distance to the program centroid (ties by index); ``centroids``
    ``(K, d)`` unit-norm program embeddings (``d = 0`` when no embedding was used);
    ``capacities`` ``(K,)`` target program sizes. ``method`` and ``params`` record how the
    programs were made. Arrays are read-only.
    """

    genes: tuple[str, ...]
    labels: np.ndarray
    order: np.ndarray
    centroids: np.ndarray
    capacities: np.ndarray
    method: str = "grc"
    params: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        genes = tuple(str(gene) for gene in self.genes)
        labels = _frozen(np.asarray(self.labels, dtype=np.int64))  # (G,)
        order = _frozen(np.asarray(self.order, dtype=np.int64))  # (G,)
        capacities = _frozen(np.asarray(self.capacities, dtype=np.int64))  # (K,)
        centroids = np.asarray(self.centroids, dtype=np.float64)  # (K, d)
        if centroids.size == 0 and centroids.ndim < 2:
            centroids = centroids.reshape(len(capacities), 0)
        centroids = _frozen(centroids)
        n_genes, n_clusters = len(genes), len(capacities)
        if labels.shape != (n_genes,):
            raise ValueError(f"labels must have shape ({n_genes},), got {labels.shape}")
        if n_genes and (labels.min() < 0 or labels.max() >= n_clusters):
            raise ValueError(f"labels must lie in [0, {n_clusters}), the number of capacities")
        if order.shape != (n_genes,) or not np.array_equal(np.sort(order), np.arange(n_genes)):
            raise ValueError(f"order must be a permutation of range({n_genes})")
        if centroids.ndim != 2 or centroids.shape[0] != n_clusters:
            raise ValueError(f"centroids must have shape ({n_clusters}, d), got {centroids.shape}")
        object.__setattr__(self, "genes", genes)
        object.__setattr__(self, "labels", labels)
        object.__setattr__(self, "order", order)
        object.__setattr__(self, "centroids", centroids)
        object.__setattr__(self, "capacities", capacities)
        object.__setattr__(self, "params", dict(self.params))

    @property
    def n_genes(self) -> int:
        return len(self.genes)

    @property
    def n_clusters(self) -> int:
        return len(self.capacities)

    def sizes(self) -> pd.Series:
        """Number of genes per program, indexed by program."""
        counts = np.bincount(self.labels, minlength=self.n_clusters)  # (K,)
        return pd.Series(counts, index=pd.RangeIndex(self.n_clusters, name="program"), name="size")

    def to_frame(self) -> pd.DataFrame:
        """One row per gene (input order): ``gene``, ``program`` and ``order`` (GRC position)."""
        position = np.empty(self.n_genes, dtype=np.int64)  # (G,)
        position[self.order] = np.arange(self.n_genes)
        return pd.DataFrame({"gene": list(self.genes), "program": self.labels, "order": position})

    def to_dict(self) -> dict[str, Any]:
        """JSON-able representation (plain lists and numbers) for checkpoints."""
        return {
            "method": self.method,
            "params": dict(self.params),
            "genes": list(self.genes),
            "labels": self.labels.tolist(),
            "order": self.order.tolist(),
            "centroids": self.centroids.tolist(),
            "capacities": self.capacities.tolist(),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> GenePrograms:
        """Inverse of :meth:`to_dict`."""
        required = ("genes", "labels", "order", "centroids", "capacities")
        missing = [key for key in required if key not in data]
        if missing:
            raise KeyError(f"gene-program record is missing key(s) {missing}")
        return cls(
            genes=tuple(data["genes"]),
            labels=np.asarray(data["labels"], dtype=np.int64),
            order=np.asarray(data["order"], dtype=np.int64),
            centroids=np.asarray(data["centroids"], dtype=np.float64),
            capacities=np.asarray(data["capacities"], dtype=np.int64),
            method=str(data.get("method", "grc")),
            params=dict(data.get("params", {})),
        )

    def coherence(self, expression: np.ndarray | pd.DataFrame) -> float:
        """Mean absolute Pearson correlation over all pairs of genes sharing a program.

        ``expression`` is ``(cells, genes)`` in the order of :attr:`genes`, or a DataFrame whose
        columns include them. Constant genes count as uncorrelated.
        """
        if isinstance(expression, pd.DataFrame):
            missing = [gene for gene in self.genes if gene not in expression.columns]
            if missing:
                raise GRCInputError(f"expression lacks {len(missing)} genes, e.g. {missing[:5]}")
            expression = expression.loc[:, list(self.genes)].to_numpy()
        if sp.issparse(expression):
            expression = expression.toarray()
        values = np.asarray(expression, dtype=np.float64)  # (N, G)
        if values.ndim != 2 or values.shape[1] != self.n_genes:
            raise GRCInputError(
                f"expression must be (cells, {self.n_genes}) genes, got shape {values.shape}"
            )
        centred = values - values.mean(axis=0)  # (N, G)
        scale = np.linalg.norm(centred, axis=0)  # (G,)
        unit = np.divide(centred, scale, out=np.zeros_like(centred), where=scale > 0)  # (N, G)
        total, n_pairs = 0.0, 0
        for program in range(self.n_clusters):
            members = np.flatnonzero(self.labels == program)
            if len(members) < 2:
                continue
            correlation = np.abs(unit[:, members].T @ unit[:, members])  # (m, m)
            total += correlation.sum() - np.trace(correlation)
            n_pairs += len(members) * (len(members) - 1)
        return total / n_pairs if n_pairs else float("nan")

    def edge_enrichment(
        self,
        adjacency: np.ndarray | sp.spmatrix | pd.DataFrame,
        seed: int = 0,
        n_shuffles: int = _DEFAULT_SHUFFLES,
    ) -> float:
        """Within-program edge density relative to its mean under shuffled labels.

        Shuffling keeps the program sizes, so the number of within-program gene pairs is fixed
        and the ratio is that of within-program edge counts. 1 means no enrichment; ``nan`` when
        the graph has no edges; ``inf`` when shuffles never put an edge inside a program.
        """
        upper = sp.triu(_as_adjacency(adjacency, self.genes), k=1).tocoo()
        if upper.nnz == 0:
            return float("nan")
        observed, shuffled = within_program_edges(self.labels, upper, n_shuffles, seed)
        expected = shuffled.mean()
        if expected == 0:
            return float("inf") if observed else float("nan")
        return float(observed / expected)


def within_program_edges(
    labels: np.ndarray, upper: sp.coo_matrix, n_shuffles: int, seed: int
) -> tuple[int, np.ndarray]:
    """Edges of ``upper`` (the graph's upper triangle) inside programs, observed and under
    ``n_shuffles`` label permutations (sizes kept), as ``(count, (n_shuffles,) counts)``."""
    observed = int(np.count_nonzero(labels[upper.row] == labels[upper.col]))
    rng = np.random.default_rng(seed)
    shuffled = np.empty(n_shuffles)  # (n_shuffles,)
    for index in range(n_shuffles):
        permuted = rng.permutation(labels)  # (G,)
        shuffled[index] = np.count_nonzero(permuted[upper.row] == permuted[upper.col])
    return observed, shuffled


def gene_relation_clustering(
    embedding: np.ndarray | pd.DataFrame,
    adjacency: np.ndarray | sp.spmatrix | pd.DataFrame | None = None,
    config: GRCConfig | None = None,
    *,
    genes: Sequence[str] | None = None,
) -> GenePrograms:
    """Cluster genes into balanced programs (docs/method.md §2.1 steps 3–5).

    ``embedding`` is ``(G, d)``: a DataFrame indexed by gene (reordered to ``genes`` when given)
    or an array (genes named by ``genes``, else ``gene0, gene1, …``). ``adjacency`` is a binary
    ``(G, G)`` relation graph in the same gene order (a gene-labelled DataFrame is aligned), or
    ``None`` to cluster on the embedding alone. Deterministic given ``config.seed``.
    """
    config = config or GRCConfig()
    gene_names, vectors = _embedding_matrix(embedding, genes)  # (G, d)
    n_genes, n_clusters = len(gene_names), config.n_clusters
    if n_clusters > n_genes:
        raise GRCInputError(
            f"n_clusters ({n_clusters}) exceeds the number of genes ({n_genes}); "
            f"choose n_clusters <= {n_genes}"
        )
    relation = None if adjacency is None else _as_adjacency(adjacency, gene_names)
    unit = _l2_normalise(vectors)  # (G, d)

    with warnings.catch_warnings():
        # Duplicate embedding rows can leave fewer distinct points than K; the rounds fix it.
        warnings.filterwarnings("ignore", message="Number of distinct clusters")
        kmeans = KMeans(n_clusters=n_clusters, n_init=config.n_init, random_state=config.seed)
        labels = kmeans.fit_predict(unit).astype(np.int64)  # (G,)
    capacities = balanced_capacities(labels, n_clusters)  # (K,)

    solvers: list[str] = []
    for _ in range(config.n_rounds):
        centroids = _centroids(unit, labels, n_clusters)  # (K, d)
        cost = assignment_cost(unit, centroids, labels, relation, config.relation_weight)
        plan, solver = _transport_plan(capacities, cost, config.sinkhorn_reg)  # (G, K)
        solvers.append(solver)
        refined = round_transport(plan, cost, capacities)  # (G,)
        converged = np.array_equal(refined, labels)
        labels = refined
        if converged:  # a fixed point: further rounds would repeat it
            break

    centroids = _centroids(unit, labels, n_clusters)  # (K, d)
    programs = GenePrograms(
        genes=tuple(gene_names),
        labels=labels,
        order=_program_order(unit, centroids, labels),
        centroids=centroids,
        capacities=capacities,
        method="grc",
        params={
            "config": dataclasses.asdict(config),
            "embedding_dim": int(vectors.shape[1]),
            "with_relations": relation is not None,
            "solvers": solvers,
        },
    )
    _log_sizes(programs, f"GRC ({len(solvers)} rounds, solvers {solvers})")
    return programs


def random_programs(
    genes: Sequence[str],
    n_clusters: int,
    seed: int = 0,
    *,
    embedding: np.ndarray | pd.DataFrame | None = None,
) -> GenePrograms:
    """Balanced random programs: the "no GRC" ablation.

    Sizes differ by at most one. With ``embedding`` (``(G, d)``, aligned as in
    :func:`gene_relation_clustering`) the centroids and order use it; otherwise centroids are
    ``(K, 0)`` and genes keep their input order within a program.
    """
    gene_names = [str(gene) for gene in genes]
    _gene_positions(gene_names)
    n_genes = len(gene_names)
    if not 1 <= n_clusters <= n_genes:
        raise GRCInputError(
            f"n_clusters ({n_clusters}) must be between 1 and the number of genes ({n_genes})"
        )
    rng = np.random.default_rng(seed)
    labels = np.empty(n_genes, dtype=np.int64)  # (G,)
    labels[rng.permutation(n_genes)] = np.arange(n_genes) % n_clusters
    capacities = np.bincount(labels, minlength=n_clusters)  # (K,)
    if embedding is None:
        centroids = np.zeros((n_clusters, 0))  # (K, 0)
        order = np.lexsort((np.arange(n_genes), labels))  # (G,)
    else:
        _, vectors = _embedding_matrix(embedding, gene_names)  # (G, d)
        unit = _l2_normalise(vectors)
        centroids = _centroids(unit, labels, n_clusters)  # (K, d)
        order = _program_order(unit, centroids, labels)
    programs = GenePrograms(
        genes=tuple(gene_names),
        labels=labels,
        order=order,
        centroids=centroids,
        capacities=capacities,
        method="random",
        params={"n_clusters": int(n_clusters), "seed": int(seed)},
    )
    _log_sizes(programs, "random programs")
    return programs


def balanced_capacities(labels: np.ndarray, n_clusters: int) -> np.ndarray:
    """Capacities ``(K,)``: ``G // K`` each, the remainder one each to the largest clusters.

    ``labels`` ``(G,)`` are the initial (KMeans) labels; size ties go to the lower cluster index.
    """
    n_genes = len(labels)
    sizes = np.bincount(labels, minlength=n_clusters)  # (K,)
    capacities = np.full(n_clusters, n_genes // n_clusters, dtype=np.int64)  # (K,)
    largest = np.argsort(-sizes, kind="stable")[: n_genes % n_clusters]
    capacities[largest] += 1
    return capacities


def assignment_cost(
    unit: np.ndarray,
    centroids: np.ndarray,
    labels: np.ndarray,
    relation: sp.spmatrix | None,
    relation_weight: float = 1.0,
) -> np.ndarray:
    """GRC cost ``(G, K)``: scaled cosine distance plus the non-neighbour fraction of each cluster.

    ``C[g, k] = cos_dist(E_g, c_k) / max cos_dist + w · (1 − |N(g) ∩ k| / |k|)`` for unit rows
    ``unit`` ``(G, d)``, unit ``centroids`` ``(K, d)`` and current ``labels`` ``(G,)``; the
    relation term is left out when ``relation`` is ``None``.
    """
    n_clusters = len(centroids)
    distance = np.clip(1.0 - unit @ centroids.T, 0.0, 2.0)  # (G, K)
    largest = distance.max()
    cost = distance / largest if largest > 0 else distance  # (G, K)
    if relation is not None and relation_weight > 0:
        membership = sp.csr_matrix(
            (np.ones(len(labels)), (np.arange(len(labels)), labels)),
            shape=(len(labels), n_clusters),
        )  # (G, K) one-hot
        neighbours = np.asarray((relation.astype(np.float64) @ membership).todense())  # (G, K)
        sizes = np.maximum(np.bincount(labels, minlength=n_clusters), 1)  # (K,)
        cost = cost + relation_weight * (1.0 - neighbours / sizes)  # (G, K)
    return cost


def round_transport(plan: np.ndarray, cost: np.ndarray, capacities: np.ndarray) -> np.ndarray:
    """Capacity-constrained rounding of a transport plan to one cluster per gene.

    Visits (gene, cluster) pairs by descending mass in ``plan`` ``(G, K)``, ties by lower
    ``cost`` ``(G, K)`` then lower gene and cluster index, and assigns each still-unassigned gene
    to a cluster that still has room. Returns labels ``(G,)``; no cluster exceeds
    ``capacities`` ``(K,)``, whose sum must be at least ``G``.
    """
    plan = np.asarray(plan, dtype=np.float64)
    cost = np.asarray(cost, dtype=np.float64)
    remaining = np.asarray(capacities, dtype=np.int64).copy()  # (K,)
    n_genes, n_clusters = plan.shape
    if cost.shape != plan.shape or remaining.shape != (n_clusters,):
        raise ValueError(
            f"plan {plan.shape}, cost {cost.shape} and capacities {remaining.shape} disagree"
        )
    if not (np.isfinite(plan).all() and np.isfinite(cost).all()):
        raise ValueError("plan and cost must be finite")
    if (remaining < 0).any() or remaining.sum() < n_genes:
        raise ValueError(
            f"capacities must be non-negative and sum to at least {n_genes} genes, "
            f"got sum {remaining.sum()}"
        )
    visit = np.lexsort((np.arange(plan.size), cost.ravel(), -plan.ravel()))  # (G*K,)
    labels = np.full(n_genes, -1, dtype=np.int64)  # (G,)
    room = remaining.tolist()
    assigned = 0
    for flat in visit.tolist():
        gene, cluster = divmod(flat, n_clusters)
        if labels[gene] >= 0 or room[cluster] == 0:
            continue
        labels[gene] = cluster
        room[cluster] -= 1
        assigned += 1
        if assigned == n_genes:
            break
    return labels


def _transport_plan(capacities: np.ndarray, cost: np.ndarray, reg: float) -> tuple[np.ndarray, str]:
    """Entropic OT plan ``(G, K)`` from uniform genes to capacities; exact EMD if Sinkhorn fails."""
    n_genes = cost.shape[0]
    gene_mass = np.full(n_genes, 1.0 / n_genes)  # (G,)
    cluster_mass = capacities.astype(np.float64) / n_genes  # (K,)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        plan = np.asarray(
            ot.sinkhorn(gene_mass, cluster_mass, cost, reg, numItermax=_SINKHORN_MAX_ITER),
            dtype=np.float64,
        )  # (G, K)
    if _plan_matches(plan, gene_mass, cluster_mass):
        return plan, "sinkhorn"
    logger.info(
        "Sinkhorn (reg=%g) did not converge%s; falling back to exact EMD",
        reg,
        f" ({caught[-1].message})" if caught else "",
    )
    plan = np.asarray(
        ot.emd(gene_mass, cluster_mass, cost, numItermax=max(100_000, 20 * cost.size)),
        dtype=np.float64,
    )  # (G, K)
    return plan, "emd"


def _plan_matches(plan: np.ndarray, gene_mass: np.ndarray, cluster_mass: np.ndarray) -> bool:
    """Whether ``plan`` is finite, non-negative and meets both marginals to tolerance."""
    if plan.shape != (len(gene_mass), len(cluster_mass)) or not np.isfinite(plan).all():
        return False
    if (plan < 0).any():
        return False
    rows_ok = np.allclose(plan.sum(axis=1), gene_mass, rtol=_SINKHORN_MARGINAL_RTOL, atol=0)
    cols_ok = np.allclose(plan.sum(axis=0), cluster_mass, rtol=_SINKHORN_MARGINAL_RTOL, atol=0)
    return bool(rows_ok and cols_ok)


def _centroids(unit: np.ndarray, labels: np.ndarray, n_clusters: int) -> np.ndarray:
    """Unit-norm mean of each cluster's unit rows, ``(K, d)``; an empty cluster gets zeros."""
    sums = np.zeros((n_clusters, unit.shape[1]))  # (K, d)
    np.add.at(sums, labels, unit)
    return _l2_normalise(sums)


def _program_order(unit: np.ndarray, centroids: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Gene indices ``(G,)`` by program, then cosine distance to its centroid, then index."""
    distance = 1.0 - np.einsum("gd,gd->g", unit, centroids[labels])  # (G,)
    return np.lexsort((np.arange(len(labels)), distance, labels))


def _l2_normalise(vectors: np.ndarray) -> np.ndarray:
    """Rows scaled to unit length; zero rows stay zero."""
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)  # (n, 1)
    return np.divide(vectors, norms, out=np.zeros_like(vectors), where=norms > 0)


def _embedding_matrix(
    embedding: np.ndarray | pd.DataFrame, genes: Sequence[str] | None
) -> tuple[list[str], np.ndarray]:
    """Validated gene names and a float ``(G, d)`` matrix aligned to them."""
    if isinstance(embedding, pd.DataFrame):
        frame = embedding.set_axis(embedding.index.astype(str), axis=0)  # never mutate input
        if genes is None:
            gene_names = [str(gene) for gene in frame.index]
        else:
            gene_names = [str(gene) for gene in genes]
            missing = [gene for gene in gene_names if gene not in frame.index]
            if missing:
                raise GRCInputError(
                    f"embedding has no row for {len(missing)} genes, e.g. {missing[:5]}"
                )
            frame = frame.loc[gene_names]
        vectors = frame.to_numpy(dtype=np.float64)  # (G, d)
    else:
        vectors = np.asarray(embedding, dtype=np.float64)  # (G, d)
        if vectors.ndim != 2:
            raise GRCInputError(f"embedding must be 2-D (genes, dims), got shape {vectors.shape}")
        gene_names = (
            [f"gene{i}" for i in range(len(vectors))]
            if genes is None
            else [str(gene) for gene in genes]
        )
        if len(gene_names) != len(vectors):
            raise GRCInputError(
                f"embedding has {len(vectors)} rows but {len(gene_names)} genes were given"
            )
    _gene_positions(gene_names)
    if vectors.ndim != 2 or vectors.shape[1] == 0:
        raise GRCInputError(f"embedding must have at least one column, got shape {vectors.shape}")
    if not np.isfinite(vectors).all():
        raise GRCInputError("embedding contains NaN or infinite values")
    return gene_names, vectors


def _as_adjacency(
    adjacency: np.ndarray | sp.spmatrix | pd.DataFrame, genes: Sequence[str]
) -> sp.csr_matrix:
    """Binary symmetric CSR ``(G, G)`` with empty diagonal, aligned to ``genes``."""
    n_genes = len(genes)
    if isinstance(adjacency, pd.DataFrame):
        gene_list = list(genes)
        missing = [gene for gene in gene_list if gene not in adjacency.index]
        missing += [gene for gene in gene_list if gene not in adjacency.columns]
        if missing:
            raise GRCInputError(
                f"adjacency table lacks rows/columns for genes, e.g. {sorted(set(missing))[:5]}"
            )
        adjacency = adjacency.loc[gene_list, gene_list].to_numpy()
    matrix = sp.csr_matrix(adjacency, dtype=np.float64)  # (G, G)
    if matrix.shape != (n_genes, n_genes):
        raise GRCInputError(
            f"adjacency must be ({n_genes}, {n_genes}) to match the {n_genes} genes, "
            f"got shape {matrix.shape}"
        )
    if not np.isfinite(matrix.data).all():
        raise GRCInputError("adjacency contains NaN or infinite values")
    matrix = abs(matrix) + abs(matrix.T)  # symmetrise: an edge either way counts
    matrix.setdiag(0)
    matrix.eliminate_zeros()
    return matrix.astype(bool).tocsr()


def _log_sizes(programs: GenePrograms, what: str) -> None:
    sizes = programs.sizes()
    logger.info(
        "%s: %d genes in %d programs, sizes %d–%d",
        what,
        programs.n_genes,
        programs.n_clusters,
        sizes.min(),
        sizes.max(),
    )
    logger.debug("program sizes: %s", sizes.tolist())


def _frozen(array: np.ndarray) -> np.ndarray:
    array = array.copy()
    array.setflags(write=False)
    return array
