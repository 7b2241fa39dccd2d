"""Reading and validating networks (truth, priors) and edge tables (predictions).

Every table that enters :mod:`perturbflow.grn` passes through here once: :func:`read_network`
turns a named prior, a file, a simulated screen or a DataFrame into a **network** table
(``source, target, sign``) and :func:`validate_edges` checks an **edges** table (``source,
target, score`` and optional ``sign, effect, statistic, pvalue, fdr``). Errors are
:class:`GRNInputError` subclasses naming the source, the column or value and what to do.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd

from perturbflow.data.io import PerturbationDataset
from perturbflow.data.messages import preview as _preview
from perturbflow.programs.priors import PriorBundle, harmonise_symbols

logger = logging.getLogger(__name__)

__all__ = [
    "EDGE_COLUMNS",
    "NETWORK_COLUMNS",
    "NETWORK_SOURCES",
    "OPTIONAL_EDGE_COLUMNS",
    "EdgeTableError",
    "EmptyNetworkError",
    "GRNInputError",
    "NetworkCoverageError",
    "UnknownRegulatorError",
    "read_network",
    "require_genes",
    "restrict_network",
    "validate_edges",
]

# Named networks: a regulon of the prior bundle, and whether its weights carry a sign.
NETWORK_SOURCES: dict[str, bool] = {
    "collectri": True,
    "dorothea": True,
    "beeline_hepg2_chip": False,
    "beeline_string": False,
}
NETWORK_COLUMNS = ("source", "target", "sign")
EDGE_COLUMNS = ("source", "target", "score")
OPTIONAL_EDGE_COLUMNS = ("sign", "effect", "statistic", "pvalue", "fdr")
# Where a simulated screen (perturbflow.data.grnsim) keeps its true network.
TRUTH_KEY = "grn_edges"
# Column names accepted in network files, first match wins (compared case-insensitively).
_SOURCE_NAMES = ("source", "tf", "regulator", "gene1")
_TARGET_NAMES = ("target", "gene2")
_SIGN_NAMES = ("sign", "mor", "weight")


class GRNInputError(ValueError):
    """A network, edge table or gene list is unusable; the message says what to fix."""


class EmptyNetworkError(GRNInputError):
    """A network has no usable edge."""


class NetworkCoverageError(GRNInputError):
    """A network shares no gene (or no edge) with the dataset's genes."""


class EdgeTableError(GRNInputError):
    """An edge or network table has missing columns or invalid values."""


class UnknownRegulatorError(GRNInputError):
    """A regulator asked for by name is absent from the data."""


# --- networks --------------------------------------------------------------------------------


def read_network(
    spec: str | Path | pd.DataFrame | PerturbationDataset | ad.AnnData,
    *,
    genes: Sequence[str] | None = None,
    data_dir: str | Path | None = None,
    confidence: str = "ABC",
) -> pd.DataFrame:
    """A validated network: DataFrame ``source, target, sign`` (``sign`` int8 in {-1, 0, +1}).

    ``spec`` is one of

    - a name of :data:`NETWORK_SOURCES`: ``collectri`` and ``dorothea`` (signed TF regulons;
      DoRothEA keeps the ``confidence`` levels, e.g. ``"ABC"``, and ignores it otherwise),
      ``beeline_hepg2_chip`` and ``beeline_string`` (BEELINE's unsigned references: sign 0),
      found under ``priors/`` of ``data_dir`` (default ``$PERTURBFLOW_DATA_DIR``, else
      ``../shared/data``);
    - a CSV/TSV path (optionally gzipped) with columns ``source`` (or ``tf``, ``regulator``,
      ``Gene1``), ``target`` (or ``Gene2``) and optionally ``sign``, ``mor`` or ``weight``
      (only its sign is used; without one every sign is 0);
    - a DataFrame with those columns;
    - a :class:`~perturbflow.data.io.PerturbationDataset` or AnnData of a screen simulated by
      :func:`~perturbflow.data.grnsim.simulate_grn_screen`: its true network,
      ``uns["grn_edges"]``.

    Cleaning, each step logged with its count and recorded in ``attrs["perturbflow"]``:
    rows with an empty symbol and self-loops are dropped; a (source, target) pair listed more
    than once is kept once, with the sign its rows agree on, where a 0 (unknown) sign agrees with
    any; a pair listed both +1 and -1 gets sign 0.

    With ``genes`` (a dataset's genes), only edges whose regulator **and** target are both
    measured are kept (:func:`restrict_network`); symbols match exactly, then
    case-insensitively, then (named priors only) through the NCBI aliases of the prior bundle.
    Rows come sorted by ``source, target``.
    """
    table, what, bundle = _load_network(spec, data_dir=data_dir, confidence=confidence)
    network = _clean_network(table, what)
    if genes is not None:
        gene_info = bundle.gene_info_or_none() if bundle is not None else None
        network = restrict_network(network, genes, what=what, gene_info=gene_info)
    return network


def restrict_network(
    network: pd.DataFrame,
    genes: Sequence[str],
    *,
    what: str = "network",
    gene_info: pd.DataFrame | None = None,
) -> pd.DataFrame:
    """The edges of a clean ``network`` whose regulator and target are both among ``genes``,
    with symbols rewritten to the genes' spelling (exact, case-insensitive, then ``gene_info``
    aliases; see :func:`~perturbflow.programs.priors.harmonise_symbols`).

    Logs how many edges were dropped because their regulator, or only their target, is not
    measured; the counts go into ``attrs["perturbflow"]["dropped"]``. Raises
    :class:`NetworkCoverageError` when no gene, or no edge, is left.
    """
    gene_list = _gene_list(genes, "genes")
    symbols = pd.unique(network[["source", "target"]].to_numpy().ravel())
    mapping = harmonise_symbols(symbols, gene_list, gene_info).mapping
    if not mapping:
        raise NetworkCoverageError(
            f"{what}: none of its {len(symbols)} genes (e.g. {_preview(symbols, 5)}) is among the "
            f"dataset's {len(gene_list)} genes (e.g. {_preview(gene_list, 5)}), even "
            "case-insensitively; check that both name genes the same way (e.g. human gene "
            "symbols, not Ensembl IDs)"
        )
    source = network["source"].map(mapping)
    target = network["target"].map(mapping)
    has_source, has_target = source.notna().to_numpy(), target.notna().to_numpy()
    absent_regulators = pd.unique(network.loc[~has_source, "source"])
    dropped = {
        "regulator not measured": int((~has_source).sum()),
        "target not measured": int((has_source & ~has_target).sum()),
    }
    kept = network[has_source & has_target].assign(
        source=source[has_source & has_target], target=target[has_source & has_target]
    )
    if kept.empty:
        raise NetworkCoverageError(
            f"{what}: no edge has both its regulator and its target among the dataset's "
            f"{len(gene_list)} genes ({len(mapping)} of the network's genes are measured, e.g. "
            f"{_preview(sorted(mapping.values()), 5)}); give a network with edges among these "
            "genes"
        )
    logger.info(
        "%s: kept %d of %d edges with regulator and target among the %d genes; dropped %d whose "
        "regulator is not measured (%d regulators%s) and %d whose target is not measured",
        what,
        len(kept),
        len(network),
        len(gene_list),
        dropped["regulator not measured"],
        len(absent_regulators),
        f", e.g. {_preview(absent_regulators, 5)}" if len(absent_regulators) else "",
        dropped["target not measured"],
    )
    kept = kept.sort_values(["source", "target"], ignore_index=True)
    info = dict(network.attrs.get("perturbflow", {}))
    info.update(
        n_genes=len(gene_list),
        dropped={**info.get("dropped", {}), **dropped},
        absent_regulators=[str(gene) for gene in absent_regulators],
    )
    kept.attrs = {"perturbflow": info}
    return kept


def _load_network(
    spec, *, data_dir: str | Path | None, confidence: str
) -> tuple[pd.DataFrame, str, PriorBundle | None]:
    """The raw table behind ``spec``, a name for messages, and the prior bundle if one was used."""
    if isinstance(spec, PerturbationDataset):
        return _truth_of(spec.adata, spec.source), spec.source, None
    if isinstance(spec, ad.AnnData):
        return _truth_of(spec, "<AnnData>"), "<AnnData>", None
    if isinstance(spec, pd.DataFrame):
        return _network_columns(spec, "<DataFrame>"), "<DataFrame>", None
    if not isinstance(spec, str | Path):
        raise GRNInputError(
            f"network must be a name ({', '.join(NETWORK_SOURCES)}), a CSV/TSV path, a DataFrame "
            f"or a simulated screen, got {type(spec).__name__}"
        )
    name = str(spec).strip().lower()
    if isinstance(spec, str) and name in NETWORK_SOURCES:
        bundle = PriorBundle.discover(data_dir)
        edges = bundle.load_regulons(name, confidence=confidence if name == "dorothea" else None)
        signs = np.sign(edges["weight"]) if NETWORK_SOURCES[name] else 0
        table = pd.DataFrame({"source": edges["source"], "target": edges["target"], "sign": signs})
        return table, name, bundle
    path = Path(spec).expanduser()
    if not path.is_file():
        raise GRNInputError(
            f"network {str(spec)!r}: not a named network ({', '.join(NETWORK_SOURCES)}) and no "
            f"file {path} exists; give a CSV/TSV with columns source, target[, sign]"
        )
    return _network_columns(_read_delimited(path), str(path)), str(path), None


def _truth_of(adata: ad.AnnData, what: str) -> pd.DataFrame:
    if TRUTH_KEY not in adata.uns:
        raise GRNInputError(
            f"{what}: uns has no {TRUTH_KEY!r}, so it holds no true network (only screens "
            f"simulated by perturbflow.data.grnsim.simulate_grn_screen do); uns keys: "
            f"{_preview(list(adata.uns))}. Pass the network as a name or a file instead"
        )
    return _network_columns(pd.DataFrame(adata.uns[TRUTH_KEY]), f"{what} uns[{TRUTH_KEY!r}]")


def _read_delimited(path: Path) -> pd.DataFrame:
    suffixes = [s.lower() for s in path.suffixes if s.lower() not in (".gz", ".bz2", ".zip")]
    separator = {".csv": ",", ".tsv": "\t", ".tab": "\t", ".txt": "\t"}.get(
        suffixes[-1] if suffixes else "", None
    )
    try:
        # Symbols such as "NA" stay text; only empty fields are missing.
        return pd.read_csv(
            path,
            sep=separator,
            engine="python" if separator is None else "c",
            dtype=str,
            keep_default_na=False,
            na_values=[""],
        )
    except pd.errors.EmptyDataError:
        raise EmptyNetworkError(f"{path}: the file is empty; expected a header line") from None
    except (pd.errors.ParserError, UnicodeDecodeError, OSError) as error:
        raise EdgeTableError(
            f"{path}: cannot be read as a CSV/TSV network ({type(error).__name__}: {error})"
        ) from error


def _network_columns(table: pd.DataFrame, what: str) -> pd.DataFrame:
    """``source, target, sign`` (sign from the first sign-like column, else 0) of a raw table."""
    lower = {str(column).strip().lower(): column for column in table.columns}
    source = next((lower[name] for name in _SOURCE_NAMES if name in lower), None)
    target = next((lower[name] for name in _TARGET_NAMES if name in lower), None)
    sign = next((lower[name] for name in _SIGN_NAMES if name in lower), None)
    missing = [
        label
        for label, found in (
            (f"a source column ({' / '.join(_SOURCE_NAMES)})", source),
            (f"a target column ({' / '.join(_TARGET_NAMES)})", target),
        )
        if found is None
    ]
    if missing:
        raise EdgeTableError(
            f"{what}: missing {' and '.join(missing)}; found columns {list(table.columns)}. "
            "A network needs columns source, target and optionally sign (+1 activation, -1 "
            "repression)"
        )
    signs = np.zeros(len(table), dtype=np.int8)
    if sign is not None:
        signs = np.sign(_numeric_column(table, sign, what)).astype(np.int8)
    return pd.DataFrame(
        {"source": table[source].to_numpy(), "target": table[target].to_numpy(), "sign": signs}
    )


def _clean_network(table: pd.DataFrame, what: str) -> pd.DataFrame:
    """Drop empty symbols and self-loops, merge repeated pairs (see :func:`read_network`)."""
    if table.empty:
        raise EmptyNetworkError(f"{what}: the network has no edges; give at least one edge")
    source = _symbols(table["source"])
    target = _symbols(table["target"])
    empty = (source == "") | (target == "")
    self_loop = ~empty & (source == target)
    frame = pd.DataFrame(
        {"source": source, "target": target, "sign": table["sign"].to_numpy(np.int8)}
    )[~(empty | self_loop)]
    if frame.empty:
        raise EmptyNetworkError(
            f"{what}: none of its {len(table)} edges is usable ({int(empty.sum())} with an empty "
            f"symbol, {int(self_loop.sum())} self-loops); give edges between two named genes"
        )
    grouped = frame.groupby(["source", "target"], sort=True)["sign"]
    has_positive = grouped.max() > 0
    has_negative = grouped.min() < 0
    repeats = grouped.size()
    conflicting = has_positive & has_negative
    signs = np.where(conflicting, 0, np.where(has_positive, 1, np.where(has_negative, -1, 0)))
    network = pd.DataFrame(
        {
            "source": repeats.index.get_level_values(0).astype(str),
            "target": repeats.index.get_level_values(1).astype(str),
            "sign": signs.astype(np.int8),
        }
    )
    dropped = {
        "empty symbol": int(empty.sum()),
        "self-loop": int(self_loop.sum()),
        "repeated pair": int((repeats - 1).sum()),
    }
    n_conflicting = int(conflicting.sum())
    if any(dropped.values()):
        logger.info(
            "%s: dropped %s edges",
            what,
            ", ".join(f"{n} {why}" for why, n in dropped.items() if n),
        )
    if n_conflicting:
        examples = [f"{s}→{t}" for s, t in conflicting[conflicting].index[:3]]
        logger.warning(
            "%s: %d pair(s) listed with both signs got sign 0 (unknown), e.g. %s",
            what,
            n_conflicting,
            ", ".join(examples),
        )
    network.attrs = {
        "perturbflow": {
            "source": what,
            "n_rows": len(table),
            "dropped": dropped,
            "conflicting_signs": n_conflicting,
        }
    }
    return network


# --- predicted edges -------------------------------------------------------------------------


def validate_edges(table: pd.DataFrame, *, what: str = "edges") -> pd.DataFrame:
    """A checked copy of a predicted **edges** table.

    Required columns ``source, target, score`` (``score`` finite and ≥ 0, higher = more
    confident); optional ``sign`` (-1, 0, +1), ``effect``, ``statistic``, ``pvalue`` and ``fdr``
    (both in [0, 1]); other columns are kept after these. A (source, target) pair may appear
    once. Returns the columns in that order, symbols as ``str``, ``score`` float64 and ``sign``
    int8. ``what`` names the table in error messages.
    """
    if not isinstance(table, pd.DataFrame):
        raise EdgeTableError(f"{what}: expected a DataFrame, got {type(table).__name__}")
    missing = [column for column in EDGE_COLUMNS if column not in table.columns]
    if missing:
        raise EdgeTableError(
            f"{what}: missing column(s) {missing}; found {list(table.columns)}. An edges table "
            "needs source, target and score (≥ 0, higher = more confident)"
        )
    edges = table.reset_index(drop=True).copy()
    for column in ("source", "target"):
        symbols = _symbols(edges[column])
        if (symbols == "").any():
            row = int(np.flatnonzero(symbols == "")[0])
            raise EdgeTableError(f"{what}: column {column!r} is empty on row {row}")
        edges[column] = symbols
    edges["score"] = _numeric_column(edges, "score", what)
    negative = edges["score"].to_numpy() < 0
    if negative.any():
        row = int(np.flatnonzero(negative)[0])
        raise EdgeTableError(
            f"{what}: column 'score' must be ≥ 0 (higher = more confident); row {row} has "
            f"{edges['score'].iloc[row]!r}. Put |value| in score and the direction in sign"
        )
    if "sign" in edges.columns:
        signs = _numeric_column(edges, "sign", what)
        bad = ~np.isin(signs, (-1, 0, 1))
        if bad.any():
            raise EdgeTableError(
                f"{what}: column 'sign' must be -1, 0 or +1; found {signs[bad][0]!r}"
            )
        edges["sign"] = signs.astype(np.int8)
    for column in ("effect", "statistic", "pvalue", "fdr"):
        if column in edges.columns:
            edges[column] = _numeric_column(edges, column, what, allow_nan=True)
    for column in ("pvalue", "fdr"):
        if column in edges.columns:
            values = edges[column].to_numpy()
            outside = (values < 0) | (values > 1)
            if outside.any():
                raise EdgeTableError(
                    f"{what}: column {column!r} must lie in [0, 1]; found {values[outside][0]!r}"
                )
    duplicated = edges.duplicated(["source", "target"])
    if duplicated.any():
        first = edges.loc[duplicated, ["source", "target"]].iloc[0]
        raise EdgeTableError(
            f"{what}: {int(duplicated.sum())} (source, target) pair(s) appear more than once, "
            f"e.g. {first['source']}→{first['target']}; keep one row per pair"
        )
    known = [c for c in (*EDGE_COLUMNS, *OPTIONAL_EDGE_COLUMNS) if c in edges.columns]
    edges = edges[known + [c for c in edges.columns if c not in known]]
    edges.attrs = dict(table.attrs)
    return edges


def require_genes(
    names: Iterable[str] | str, available: Iterable[str], *, what: str, where: str
) -> list[str]:
    """``names`` as a list, raising :class:`UnknownRegulatorError` (naming the absent ones and
    some available ones) when any is not in ``available``. ``what`` says what the names are
    (``"regulator"``), ``where`` what they were looked for in."""
    chosen = [names] if isinstance(names, str) else [str(name) for name in names]
    if not chosen:
        raise GRNInputError(f"no {what} given; name at least one")
    pool = set(available)
    absent = [name for name in dict.fromkeys(chosen) if name not in pool]
    if absent:
        raise UnknownRegulatorError(
            f"{len(absent)} {what}(s) not in {where}: {_preview(absent)}; available: "
            f"{_preview(sorted(pool))}"
        )
    return list(dict.fromkeys(chosen))


# --- helpers ---------------------------------------------------------------------------------


def _symbols(column: pd.Series) -> np.ndarray:
    """Gene symbols as stripped strings; missing values become ``""``."""
    return column.astype(object).where(column.notna(), "").astype(str).str.strip().to_numpy()


def _numeric_column(
    table: pd.DataFrame, column: str, what: str, *, allow_nan: bool = False
) -> np.ndarray:
    raw = table[column]
    values = pd.to_numeric(raw, errors="coerce").to_numpy(dtype=np.float64)
    bad = np.isnan(values) & (raw.notna().to_numpy() | (not allow_nan))
    bad |= np.isinf(values)
    if bad.any():
        row = int(np.flatnonzero(bad)[0])
        raise EdgeTableError(
            f"{what}: column {column!r} must be numeric and finite; {int(bad.sum())} value(s) are "
            f"not, e.g. {raw.iloc[row]!r} on row {row}"
        )
    return values


def _gene_list(genes: Sequence[str], what: str) -> list[str]:
    gene_list = [str(gene) for gene in genes]
    if not gene_list:
        raise GRNInputError(f"{what} is empty; give the dataset's genes")
    duplicated = pd.Index(gene_list)[pd.Index(gene_list).duplicated()]
    if len(duplicated):
        raise GRNInputError(f"{what} has duplicates: {_preview(list(duplicated.unique()))}")
    return gene_list
