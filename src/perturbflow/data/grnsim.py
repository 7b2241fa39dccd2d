"""Knock-out screens simulated on a real regulatory topology with sergio-rs (ground truth known).

:func:`simulate_grn_screen` draws a sub-network of a signed TF–target prior (CollecTRI, DoRothEA or
a user table, read by :func:`load_regulons`), makes it a DAG, gives every edge Hill kinetics and
simulates control cells, single and double knock-outs of its regulators with sergio-rs (a Rust
implementation of SERGIO, Dibaeinia & Sinha, Cell Systems 2020). Technical noise is Poisson
sampling at a log-normal library size. The recipe is the one of the staged screen
``grnsim_collectri_s1`` (its PROVENANCE.md):

1. ``n_regulators`` regulators drawn from the ``regulator_pool_factor × n_regulators`` with the
   most targets; genes = those regulators + their most shared targets, ``n_genes`` in all;
2. regulators ordered by their number of targets in the prior, only forward edges kept (a DAG;
   a regulator left without any edge gives its place to a target);
3. ``|K| ~ U(k_range)``, sign from the prior, Hill coefficient ``hill``, half-response estimated
   by SERGIO; master-regulator production rates from ``MrProfile.from_random``;
4. knock-outs: ``n_singles`` of the regulators with ``>= min_targets`` targets in the DAG;
   ``n_doubles`` pairs of them, half those sharing the most targets, half at random;
5. every condition simulated separately, on a freshly built network.

Step 5 matters: sergio-rs 0.2.3 clones a GRN shallowly, so ``GRN.ko_perturbation`` also deletes
the knocked-out gene's edges from the network it was called on. Re-using one network makes every
later condition carry all earlier knock-outs. Also by sergio-rs's design, a gene that a knock-out
leaves without regulators becomes a master regulator with a random production rate drawn from
``mr_low``/``mr_high``, so it can rise when its only activator is knocked out.

Each condition's cells depend only on the seed, the network and the condition itself, so a
screen with more doubles holds the same singles.
"""

from __future__ import annotations

import dataclasses
import importlib.metadata
import itertools
import logging
import zlib
from dataclasses import dataclass
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import scipy.sparse as sp

from perturbflow.data.conditions import (
    CONTROL_NAME,
    ConditionError,
    format_condition,
    parse_condition,
)
from perturbflow.data.datasets import DATA_DIR_ENV
from perturbflow.data.datasets import data_dir as resolve_data_dir
from perturbflow.data.download import file_sha256
from perturbflow.data.io import DataFileNotFoundError, DataValidationError

logger = logging.getLogger(__name__)

__all__ = [
    "BUILTIN_NETWORKS",
    "GRNScreenConfig",
    "load_regulons",
    "simulate_grn_screen",
]

# Prior tables under the data folder: file and the columns holding source, target and sign.
BUILTIN_NETWORKS: dict[str, tuple[str, str, str, str]] = {
    "collectri": ("priors/collectri/collectri_human.tsv.gz", "source", "target", "weight"),
    "dorothea": ("priors/dorothea/dorothea_hs.tsv.gz", "tf", "target", "mor"),
}
# DoRothEA's usual high-confidence subset.
DOROTHEA_CONFIDENCE = ("A", "B", "C")
_SOURCE_COLUMNS = ("source", "tf", "regulator")
_SIGN_COLUMNS = ("sign", "weight", "mor")
_INSTALL_HINT = "pip install 'perturbflow[sim]'"
# Random streams derived from the seed: one per purpose, one per condition.
_SELECTION_STREAM, _KINETICS_STREAM, _CONDITION_STREAM = 0, 1, 2


@dataclass(frozen=True)
class GRNScreenConfig:
    """Network, kinetics, screen design and noise of a simulated knock-out screen.

    ``network``: ``collectri``, ``dorothea`` or a CSV/TSV path (see :func:`load_regulons`).
    Sub-network: ``n_genes`` genes, ``n_regulators`` of them regulators drawn from the
    ``regulator_pool_factor × n_regulators`` with the most targets. Kinetics: Hill coefficient
    ``hill`` (integer ≥ 1), ``|K|`` uniform in ``k_range``, ``decay`` of every gene,
    master-regulator production rates in ``mr_low`` or ``mr_high`` (not overlapping). Design:
    ``n_singles`` knock-outs among regulators with ≥ ``min_targets`` targets, ``n_doubles`` pairs
    of them, ``n_cells`` cells per knock-out and ``n_control_cells`` controls. SERGIO: ``scale_iter``
    steps per sampled cell after ``safety_iter`` burn-in steps, step ``dt``, noise amplitude
    ``noise_s``. Counts: Poisson at a log-normal library size (median ``library_median``, log-scale
    sd ``library_sigma``). ``n_cell_types`` > 1: cell types that differ in their master
    regulators' production rates (sergio-rs draws one profile per type); every condition is
    simulated in every type, ``n_cells`` / ``n_control_cells`` cells per type, and
    ``obs["cell_type"]`` names each cell's type (``type0``, ``type1``, …).
    """

    network: str = "collectri"
    n_genes: int = 250
    n_regulators: int = 60
    n_singles: int = 50
    n_doubles: int = 100
    n_cells: int = 80
    n_control_cells: int = 300
    hill: int = 2
    k_range: tuple[float, float] = (1.0, 5.0)
    decay: float = 0.8
    mr_low: tuple[float, float] = (0.5, 2.0)
    mr_high: tuple[float, float] = (2.5, 4.0)
    scale_iter: int = 200
    safety_iter: int = 150
    dt: float = 0.01
    noise_s: float = 1.0
    library_median: float = 2000.0
    library_sigma: float = 0.4
    min_targets: int = 5
    regulator_pool_factor: int = 3
    n_cell_types: int = 1
    seed: int = 1

    def __post_init__(self) -> None:
        if isinstance(self.network, Path):
            object.__setattr__(self, "network", str(self.network))
        if not isinstance(self.network, str) or not self.network.strip():
            raise ValueError(
                f"network must be 'collectri', 'dorothea' or a path, got {self.network!r}"
            )
        minimum = {
            "n_genes": 2,
            "n_regulators": 1,
            "n_singles": 1,
            "n_doubles": 0,
            "n_cells": 1,
            "n_control_cells": 1,
            "hill": 1,
            "scale_iter": 1,
            "safety_iter": 0,
            "min_targets": 0,
            "regulator_pool_factor": 1,
            "n_cell_types": 1,
            "seed": 0,
        }
        for name, lowest in minimum.items():
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int | np.integer):
                raise ValueError(f"{name} must be an integer, got {value!r}")
            if value < lowest:
                raise ValueError(f"{name} must be ≥ {lowest}, got {value}")
            object.__setattr__(self, name, int(value))
        for name in ("k_range", "mr_low", "mr_high"):
            low, high = _pair(name, getattr(self, name))
            if not 0 <= low <= high:
                raise ValueError(f"{name} must satisfy 0 ≤ low ≤ high, got ({low}, {high})")
            object.__setattr__(self, name, (low, high))
        if self.k_range[0] <= 0:
            raise ValueError(
                f"k_range must be positive (signs come from the network), got {self.k_range}"
            )
        if self.mr_low[1] > self.mr_high[0]:
            raise ValueError(
                f"mr_low {self.mr_low} and mr_high {self.mr_high} overlap; sergio-rs needs "
                "mr_low's upper end ≤ mr_high's lower end"
            )
        for name in ("decay", "dt", "library_median"):
            if not float(getattr(self, name)) > 0:
                raise ValueError(f"{name} must be > 0, got {getattr(self, name)!r}")
        for name in ("noise_s", "library_sigma"):
            if not float(getattr(self, name)) >= 0:
                raise ValueError(f"{name} must be ≥ 0, got {getattr(self, name)!r}")
        if self.n_regulators >= self.n_genes:
            raise ValueError(
                f"n_genes ({self.n_genes}) must exceed n_regulators ({self.n_regulators}): the "
                "other genes are their targets"
            )
        if self.n_singles > self.n_regulators:
            raise ValueError(
                f"n_singles ({self.n_singles}) cannot exceed n_regulators ({self.n_regulators})"
            )
        max_doubles = self.n_singles * (self.n_singles - 1) // 2
        if self.n_doubles > max_doubles:
            raise ValueError(
                f"n_doubles ({self.n_doubles}) exceeds the {max_doubles} pairs of "
                f"{self.n_singles} knocked-out regulators"
            )

    def to_dict(self) -> dict:
        """The settings as plain values (tuples as lists), fit for ``uns`` and YAML."""
        return {
            key: list(value) if isinstance(value, tuple) else value
            for key, value in dataclasses.asdict(self).items()
        }


def load_regulons(
    network: str | Path,
    data_dir: str | Path | None = None,
    *,
    confidence: tuple[str, ...] = DOROTHEA_CONFIDENCE,
) -> pd.DataFrame:
    """Signed TF–target edges: a DataFrame with columns ``source``, ``target``, ``sign`` (±1).

    ``network`` is ``collectri`` or ``dorothea`` (read from ``priors/`` under the data folder,
    see :func:`~perturbflow.data.datasets.data_dir`; DoRothEA keeps the ``confidence`` levels), or
    a path to a CSV/TSV (optionally gzipped) with a source column (``source``, ``tf`` or
    ``regulator``), ``target`` and a sign column (``sign``, ``weight`` or ``mor``; only its sign
    is used). Zero-sign edges, repeated pairs and genes whose symbols cannot name a condition
    (``+``, ``/``, spaces, control labels) are dropped with a warning.
    """
    path, columns = _regulon_file(network, data_dir)
    table = _read_table(path)
    if columns is None:
        columns = _find_columns(table, path)
    source, target, sign = columns
    missing = [column for column in columns if column not in table.columns]
    if missing:
        raise DataValidationError(
            f"{path}: missing column(s) {missing}; found {list(table.columns)}. A regulon table "
            f"needs {source!r}, {target!r} and {sign!r}"
        )
    if str(network).lower() == "dorothea" and "confidence" in table.columns:
        table = table[table["confidence"].astype(str).isin(confidence)]
    return _clean_edges(table[[source, target, sign]], path, sign)


def simulate_grn_screen(
    config: GRNScreenConfig | None = None,
    data_dir: str | Path | None = None,
    progress: bool = False,
) -> ad.AnnData:
    """Simulate a knock-out screen with sergio-rs on a sub-network of a regulatory prior.

    Returns AnnData (cells × genes) with raw counts in ``X`` (CSR, float32),
    ``layers["clean"]`` the simulator's noise-free expression (float32), ``obs["condition"]``
    (``ctrl``, ``A``, ``A+B``), ``var["regulator"]`` and ``var["knocked_out"]``,
    ``uns["grn_edges"]`` the true network (DataFrame: source, target, sign, k) and
    ``uns["simulator"]`` every setting, the chosen regulators, knock-outs and doubles, and the
    prior file's SHA-256. ``progress=True`` shows a progress bar; otherwise progress is logged.
    """
    sergio_rs = _import_sergio()
    config = config or GRNScreenConfig()
    path, _ = _regulon_file(config.network, data_dir)
    regulons = load_regulons(config.network, data_dir)

    selection = _rng(config.seed, _SELECTION_STREAM)
    genes, regulators, edges = _subnetwork(regulons, config, selection)
    knockouts = _knockouts(edges, regulators, config, selection)
    doubles_shared, doubles_random = _doubles(edges, knockouts, config, selection)

    kinetics = _rng(config.seed, _KINETICS_STREAM)
    edges["k"] = edges["sign"] * kinetics.uniform(*config.k_range, len(edges))  # (E,)
    mr_seed = int(kinetics.integers(2**63))

    conditions = (
        [(CONTROL_NAME, ())]
        + [(gene, (gene,)) for gene in knockouts]
        + [(format_condition(pair), pair) for pair in doubles_shared + doubles_random]
    )
    logger.info(
        "simulating %d conditions on %d genes, %d edges (%s, seed %d)",
        len(conditions),
        len(genes),
        len(edges),
        config.network,
        config.seed,
    )
    clean_blocks, count_blocks, labels, cell_types = [], [], [], []
    for index, (name, knocked_out) in enumerate(_progress(conditions, progress)):
        n_cells = config.n_control_cells if name == CONTROL_NAME else config.n_cells
        stream = np.random.SeedSequence([config.seed, _CONDITION_STREAM, zlib.crc32(name.encode())])
        sim_seed, noise_seed = stream.generate_state(2, dtype=np.uint64)
        clean = _simulate_condition(
            sergio_rs, genes, edges, knocked_out, n_cells, config, mr_seed, int(sim_seed)
        )  # (n, G)
        clean_blocks.append(clean)
        count_blocks.append(_sample_counts(clean, config, np.random.default_rng(noise_seed)))
        labels += [name] * len(clean)
        cell_types += [f"type{t}" for t in range(config.n_cell_types) for _ in range(n_cells)]
        if not progress and (index + 1) % max(1, len(conditions) // 10) == 0:
            logger.info("simulated %d/%d conditions", index + 1, len(conditions))

    counts = np.vstack(count_blocks)  # (N, G)
    obs = pd.DataFrame(
        {"condition": pd.Categorical(labels, categories=[name for name, _ in conditions])},
        index=[f"c{i}" for i in range(len(labels))],
    )
    if config.n_cell_types > 1:
        obs["cell_type"] = pd.Categorical(cell_types)
    var = pd.DataFrame(
        {
            "regulator": [gene in set(regulators) for gene in genes],
            "knocked_out": [gene in set(knockouts) for gene in genes],
        },
        index=pd.Index(genes, name=None),
    )
    adata = ad.AnnData(
        X=sp.csr_matrix(counts, dtype=np.float32),
        obs=obs,
        var=var,
        layers={"clean": np.vstack(clean_blocks).astype(np.float32)},
    )
    adata.uns["grn_edges"] = edges.reset_index(drop=True)
    adata.uns["simulator"] = {
        "engine": "sergio",
        "package": "sergio-rs",
        "version": importlib.metadata.version("sergio-rs"),
        **config.to_dict(),
        "network_file": str(path),
        "network_sha256": file_sha256(path),
        "mr_profile_seed": mr_seed,
        "regulators": list(regulators),
        "knockouts": list(knockouts),
        "doubles_shared_targets": [format_condition(pair) for pair in doubles_shared],
        "doubles_random": [format_condition(pair) for pair in doubles_random],
        "technical_noise": "poisson_lognormal_library",
    }
    if config.network.lower() == "dorothea":
        adata.uns["simulator"]["dorothea_confidence"] = list(DOROTHEA_CONFIDENCE)
    logger.info("simulated %d cells × %d genes", adata.n_obs, adata.n_vars)
    return adata


def _import_sergio():
    try:
        import sergio_rs
    except ImportError as error:
        raise ImportError(
            f"the sergio engine needs the sergio-rs package (Python ≥ 3.11): {_INSTALL_HINT}"
        ) from error
    return sergio_rs


def _pair(name: str, value) -> tuple[float, float]:
    try:
        low, high = (float(v) for v in value)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a pair of numbers (low, high), got {value!r}") from None
    return low, high


def _rng(seed: int, stream: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence([seed, stream]))


def _regulon_file(
    network: str | Path, data_dir: str | Path | None
) -> tuple[Path, tuple[str, str, str] | None]:
    """The table behind ``network`` and its (source, target, sign) columns when known."""
    key = str(network).lower()
    if key in BUILTIN_NETWORKS:
        relative, *columns = BUILTIN_NETWORKS[key]
        folder = resolve_data_dir(data_dir)
        if folder is None:
            raise DataFileNotFoundError(
                f"network {key!r} is the prior table {relative} under the data folder, but no data "
                f"folder was found: set {DATA_DIR_ENV}=/path/to/data or pass data_dir= "
                "(CLI: --data-dir), or give a CSV/TSV path with source, target and sign columns"
            )
        path = folder / relative
        if not path.is_file():
            raise DataFileNotFoundError(
                f"network {key!r}: expected file {path} not found (data folder {folder}). Set "
                f"{DATA_DIR_ENV} to the folder holding {relative}, or give a CSV/TSV path"
            )
        return path, tuple(columns)
    path = Path(network).expanduser()
    if not path.is_file():
        raise DataFileNotFoundError(
            f"network {str(network)!r}: not a built-in network ({', '.join(BUILTIN_NETWORKS)}) and "
            f"no file {path} exists; give a CSV/TSV with source, target and sign columns"
        )
    return path, None


def _read_table(path: Path) -> pd.DataFrame:
    suffixes = [s.lower() for s in path.suffixes if s.lower() not in (".gz", ".bz2", ".zip")]
    separator = {".csv": ",", ".tsv": "\t", ".tab": "\t", ".txt": "\t"}.get(
        suffixes[-1] if suffixes else "", None
    )
    try:
        if separator is None:
            table = pd.read_csv(path, sep=None, engine="python")
        else:
            table = pd.read_csv(path, sep=separator)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError, OSError) as error:
        raise DataValidationError(
            f"{path}: cannot be read as a CSV/TSV regulon table ({type(error).__name__}: {error})"
        ) from error
    table.columns = [str(column).strip().lower() for column in table.columns]
    return table


def _find_columns(table: pd.DataFrame, path: Path) -> tuple[str, str, str]:
    present = set(table.columns)
    source = next((c for c in _SOURCE_COLUMNS if c in present), None)
    sign = next((c for c in _SIGN_COLUMNS if c in present), None)
    missing = [
        label
        for label, found in (
            (f"a source column ({' / '.join(_SOURCE_COLUMNS)})", source),
            ("target", "target" if "target" in present else None),
            (f"a sign column ({' / '.join(_SIGN_COLUMNS)})", sign),
        )
        if found is None
    ]
    if missing:
        raise DataValidationError(
            f"{path}: missing {', '.join(missing)}; found columns {list(table.columns)}. Rename "
            "the columns to source, target and sign (+1 activation, -1 repression)"
        )
    return source, "target", sign  # type: ignore[return-value]


def _clean_edges(table: pd.DataFrame, path: Path, sign_column: str) -> pd.DataFrame:
    table = table.dropna()
    values = pd.to_numeric(table.iloc[:, 2], errors="coerce")
    if values.isna().any():
        bad = table.iloc[:, 2][values.isna()].iloc[0]
        raise DataValidationError(
            f"{path}: column {sign_column!r} holds a non-numeric value {bad!r}; signs must be "
            "numbers (+1 activation, -1 repression)"
        )
    edges = pd.DataFrame(
        {
            "source": table.iloc[:, 0].astype(str).str.strip().to_numpy(),
            "target": table.iloc[:, 1].astype(str).str.strip().to_numpy(),
            "sign": np.sign(values.to_numpy()).astype(np.int8),
        }
    )
    unusable = {gene for gene in set(edges["source"]) | set(edges["target"]) if not _usable(gene)}
    dropped = {
        "zero-sign": int((edges["sign"] == 0).sum()),
        "unusable symbol": int(
            (edges["source"].isin(unusable) | edges["target"].isin(unusable)).sum()
        ),
    }
    edges = edges[
        (edges["sign"] != 0) & ~edges["source"].isin(unusable) & ~edges["target"].isin(unusable)
    ]
    dropped["repeated pair"] = int(edges.duplicated(["source", "target"]).sum())
    edges = edges.drop_duplicates(["source", "target"]).reset_index(drop=True)
    if any(dropped.values()):
        logger.warning(
            "%s: dropped %s edges",
            path,
            ", ".join(f"{n} {why}" for why, n in dropped.items() if n),
        )
    if edges.empty:
        raise DataValidationError(f"{path}: no usable signed edges")
    return edges


def _usable(gene: str) -> bool:
    """Whether a symbol can name a knock-out condition (no separators, not a control label)."""
    try:
        return parse_condition(gene) == frozenset([gene])
    except ConditionError:
        return False


def _subnetwork(
    regulons: pd.DataFrame, config: GRNScreenConfig, rng: np.random.Generator
) -> tuple[list[str], list[str], pd.DataFrame]:
    """Genes (regulators first, in DAG order), the regulators and the DAG's edges."""
    edges = regulons[regulons["source"] != regulons["target"]]
    n_targets = edges.groupby("source").size()  # (R,) targets per regulator in the prior
    ranked = sorted(n_targets.index, key=lambda gene: (-n_targets[gene], gene))
    if len(ranked) < config.n_regulators:
        raise ValueError(
            f"network {config.network!r} has {len(ranked)} regulators; n_regulators is "
            f"{config.n_regulators}: lower it"
        )
    pool = ranked[: config.regulator_pool_factor * config.n_regulators]
    drawn = set(rng.choice(pool, config.n_regulators, replace=False).tolist())
    regulators = [gene for gene in ranked if gene in drawn]
    while True:
        genes, dag = _dag(edges, regulators, config.n_genes)
        connected = set(dag["source"]) | set(dag["target"])
        isolated = [gene for gene in regulators if gene not in connected]
        if not isolated:
            break
        # Targets always keep their edges; a regulator can lose all of them to the DAG.
        logger.warning(
            "regulator(s) %s lost every edge to the DAG: left out, targets take their places",
            ", ".join(isolated),
        )
        regulators = [gene for gene in regulators if gene in connected]
    if len(genes) < config.n_genes:
        logger.warning(
            "the sub-network has %d genes, fewer than n_genes=%d: the chosen regulators have "
            "too few targets in %s",
            len(genes),
            config.n_genes,
            config.network,
        )
    return genes, regulators, dag


def _dag(
    edges: pd.DataFrame, regulators: list[str], n_genes: int
) -> tuple[list[str], pd.DataFrame]:
    """Genes (``regulators`` + their most shared targets) and the forward edges among them.

    ``regulators`` come in DAG order (most targets in the prior first); targets follow them, so
    keeping the edges that point forward in this order makes the network acyclic.
    """
    chosen = set(regulators)
    outgoing = edges[edges["source"].isin(chosen) & ~edges["target"].isin(chosen)]
    shared = outgoing.groupby("target").size()  # (T,) chosen regulators per target
    targets = sorted(shared.index, key=lambda gene: (-shared[gene], gene))
    genes = regulators + targets[: n_genes - len(regulators)]
    position = {gene: i for i, gene in enumerate(genes)}
    dag = edges[edges["source"].isin(chosen) & edges["target"].isin(position)]
    source, target = dag["source"].map(position), dag["target"].map(position)
    dag = dag[source < target]
    order = np.lexsort((dag["target"].map(position), dag["source"].map(position)))
    return genes, dag.iloc[order].reset_index(drop=True).astype({"sign": np.int8})


def _knockouts(
    edges: pd.DataFrame, regulators: list[str], config: GRNScreenConfig, rng: np.random.Generator
) -> list[str]:
    """``n_singles`` regulators with ≥ ``min_targets`` targets in the DAG, in network order."""
    out_degree = edges.groupby("source").size()
    eligible = [gene for gene in regulators if out_degree.get(gene, 0) >= config.min_targets]
    if not eligible:
        raise ValueError(
            f"no regulator has ≥ {config.min_targets} targets in the sub-network; lower "
            "min_targets or raise n_genes"
        )
    if len(eligible) < config.n_singles:
        logger.warning(
            "only %d regulators have ≥ %d targets: knocking out all of them, not n_singles=%d",
            len(eligible),
            config.min_targets,
            config.n_singles,
        )
        return eligible
    drawn = set(rng.choice(eligible, config.n_singles, replace=False).tolist())
    return [gene for gene in eligible if gene in drawn]


def _doubles(
    edges: pd.DataFrame, knockouts: list[str], config: GRNScreenConfig, rng: np.random.Generator
) -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
    """Pairs sharing the most targets (half, rounded up) and random other pairs."""
    pairs = list(itertools.combinations(knockouts, 2))
    n_doubles = min(config.n_doubles, len(pairs))
    if n_doubles < config.n_doubles:
        logger.warning("only %d pairs of knock-outs exist: simulating all of them", n_doubles)
    targets = edges.groupby("source")["target"].agg(frozenset)
    by_shared = sorted(
        range(len(pairs)), key=lambda i: (-len(targets[pairs[i][0]] & targets[pairs[i][1]]), i)
    )
    n_shared = n_doubles - n_doubles // 2
    shared = sorted(by_shared[:n_shared])
    rest = sorted(by_shared[n_shared:])
    drawn = sorted(rng.choice(rest, n_doubles - n_shared, replace=False).tolist()) if rest else []
    return [pairs[i] for i in shared], [pairs[i] for i in drawn]


def _simulate_condition(
    sergio_rs,
    genes: list[str],
    edges: pd.DataFrame,
    knocked_out: tuple[str, ...],
    n_cells: int,
    config: GRNScreenConfig,
    mr_seed: int,
    seed: int,
) -> np.ndarray:
    """Noise-free expression (cells × genes) of one condition; knocked-out genes are 0. With
    several cell types the rows are ``n_cells`` of the first type, then of the next.

    The network is built afresh: a knock-out mutates the network it is applied to (see the
    module docstring), so no network object outlives one condition.
    """
    grn = sergio_rs.GRN()
    nodes = {gene: sergio_rs.Gene(gene, config.decay) for gene in genes}
    for source, target, k in zip(edges["source"], edges["target"], edges["k"], strict=True):
        grn.add_interaction(nodes[source], nodes[target], float(k), None, config.hill)
    grn.set_mrs()
    profile = sergio_rs.MrProfile.from_random(
        grn, config.n_cell_types, config.mr_low, config.mr_high, mr_seed
    )
    for gene in knocked_out:
        grn, profile = grn.ko_perturbation(gene, profile)
    simulated = sergio_rs.Sim(
        grn, n_cells, config.safety_iter, config.scale_iter, config.dt, config.noise_s, seed
    ).simulate(profile)  # genes × cells, column "Genes" first
    names = simulated.get_column("Genes").to_list()
    expected = set(genes) - set(knocked_out)
    if set(names) != expected:
        raise RuntimeError(
            f"sergio-rs returned {len(names)} genes for condition {knocked_out or 'ctrl'}, "
            f"expected {len(expected)}"
        )
    values = simulated.drop("Genes").to_numpy().T  # (n, G - len(knocked_out))
    clean = np.zeros((len(values), len(genes)), dtype=np.float64)  # (n × types, G)
    position = {gene: i for i, gene in enumerate(genes)}
    clean[:, [position[name] for name in names]] = values
    return clean


def _sample_counts(
    clean: np.ndarray, config: GRNScreenConfig, rng: np.random.Generator
) -> np.ndarray:
    """Poisson counts (cells × genes) of each cell's profile at a log-normal library size."""
    clean = np.clip(clean, 0.0, None)  # (n, G)
    totals = clean.sum(axis=1, keepdims=True)  # (n, 1)
    library = config.library_median * rng.lognormal(0.0, config.library_sigma, totals.shape)
    rate = clean / np.maximum(totals, 1e-12) * library  # (n, G)
    return rng.poisson(rate).astype(np.float32)


def _progress(conditions: list, progress: bool):
    if not progress:
        return conditions
    from tqdm import tqdm

    return tqdm(conditions, desc="simulating", unit="condition")
