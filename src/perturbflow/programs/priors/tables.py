"""Prior-knowledge tables: readers, gene-symbol harmonisation, coverage and the :class:`PriorBundle`.

Every reader takes a path, validates it once and returns a tidy table in the source's own gene
symbols; errors are :class:`PriorError` subclasses naming the file, the columns found and what to
do. :func:`harmonise_table` then maps a table's symbols onto a dataset's genes (exact, then
case-insensitive, then via the unambiguous aliases of the NCBI gene info) and logs one coverage
line per source. :class:`PriorBundle` finds the files under ``<data dir>/priors/`` and loads each
table lazily, once.

Tidy shapes returned:

- GO annotations: columns ``gene, go_id, ontology``, one row per (gene, term).
- GO terms: index ``go_id``, columns ``name, ontology[, definition]``.
- gene info: columns ``gene_symbol, full_name, aliases[, entrez_id, gene_type]`` (strings).
- edges (PPI, regulons, BEELINE): columns ``source, target, weight`` (float); ``attrs`` records
  the file, its format and whether the edges are directed.
"""

from __future__ import annotations

import functools
import logging
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from perturbflow.programs.genesets import (
    GeneSetFileNotFoundError,
    GeneSetFormatError,
    _gene_positions,
    read_gmt,
)

logger = logging.getLogger(__name__)

__all__ = [
    "EDGE_FORMATS",
    "GO_ONTOLOGIES",
    "Coverage",
    "MissingPriorError",
    "PriorCoverageError",
    "PriorError",
    "PriorFileNotFoundError",
    "PriorFormatError",
    "SymbolMapping",
    "as_relation_edges",
    "coverage",
    "harmonise_symbols",
    "harmonise_table",
    "read_edges",
    "read_embedding_table",
    "read_gene_go",
    "read_gene_info",
    "read_gene_sets",
    "read_go_terms",
]

GO_ONTOLOGIES = ("BP", "MF", "CC")
DOROTHEA_LEVELS = "ABCDE"
ALIAS_SEPARATOR = "|"


class PriorError(ValueError):
    """A prior-knowledge input is unusable; the message names the file or source and the fix."""


class PriorFileNotFoundError(PriorError, FileNotFoundError):
    """A prior-knowledge file does not exist."""


class PriorFormatError(PriorError):
    """A prior-knowledge file has missing columns or invalid values."""


class PriorCoverageError(PriorError):
    """A prior source shares no gene with the dataset (after symbol harmonisation)."""


class MissingPriorError(PriorError):
    """The :class:`PriorBundle` holds no file for the requested piece of prior knowledge."""


# --- readers -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class EdgeFormat:
    """Columns of one edge-list file format and how they become ``source, target, weight``."""

    name: str
    source: str
    target: str
    score: str | None  # column that min_score filters; None: no score
    extra: tuple[str, ...]
    directed: bool
    description: str

    @property
    def columns(self) -> tuple[str, ...]:
        named = (self.source, self.target) + ((self.score,) if self.score else ())
        return named + self.extra


EDGE_FORMATS: dict[str, EdgeFormat] = {
    edge_format.name: edge_format
    for edge_format in (
        EdgeFormat(
            "string",
            "gene1_symbol",
            "gene2_symbol",
            "combined_score",
            (),
            False,
            "STRING (gene1_symbol, gene2_symbol, combined_score 0-999); weight = score / 1000",
        ),
        EdgeFormat(
            "dorothea",
            "tf",
            "target",
            None,
            ("confidence", "mor"),
            True,
            "DoRothEA (tf, confidence A-E, target, mor); weight = mor (+1/-1)",
        ),
        EdgeFormat(
            "tidy",
            "source",
            "target",
            "weight",
            (),
            True,
            "source, target, weight (e.g. CollecTRI; weight signed, min_score on |weight|)",
        ),
        EdgeFormat(
            "beeline", "Gene1", "Gene2", None, (), True, "BEELINE (Gene1, Gene2); weight = 1"
        ),
    )
}


def read_gene_go(
    path: str | Path,
    *,
    ontologies: Sequence[str] | None = None,
    drop_evidence: Sequence[str] = ("ND",),
) -> pd.DataFrame:
    """Gene → GO annotations: columns ``gene, go_id, ontology``, one row per (gene, term).

    Reads ``gene_go.tsv.gz`` (with an ``evidence`` column: rows whose code is in
    ``drop_evidence`` are dropped first; 'ND' marks "no data" annotations to the root terms) or
    ``gene_go_propagated.tsv.gz`` (no evidence column; ``drop_evidence`` does not apply).
    ``ontologies`` keeps only some of BP/MF/CC.
    """
    wanted = _check_ontologies(ontologies)
    path = Path(path)
    table = _read_table(
        path, "GO annotation", ("gene_symbol", "go_id", "ontology"), optional=("evidence",)
    )
    _check_values(path, table, "ontology", GO_ONTOLOGIES)
    n_rows = len(table)
    dropped = list(drop_evidence) if "evidence" in table.columns else []
    if dropped:
        table = table[~table["evidence"].isin(dropped)]
    table = table[table["ontology"].isin(wanted)]
    table = (
        table.rename(columns={"gene_symbol": "gene"})[["gene", "go_id", "ontology"]]
        .drop_duplicates(["gene", "go_id"])
        .reset_index(drop=True)
    )
    logger.info(
        "read %d GO annotations (%d genes, %d terms; %s; %d rows before dropping evidence %s) "
        "from %s",
        len(table),
        table["gene"].nunique(),
        table["go_id"].nunique(),
        "/".join(wanted),
        n_rows,
        dropped,
        path,
    )
    return table


def read_go_terms(path: str | Path) -> pd.DataFrame:
    """GO term names: index ``go_id``, columns ``name, ontology`` (and ``definition`` if present)."""
    path = Path(path)
    table = _read_table(path, "GO term", ("go_id", "name", "ontology"), optional=("definition",))
    duplicated = table["go_id"][table["go_id"].duplicated()]
    if len(duplicated):
        raise PriorFormatError(
            f"GO term file {path}: go_id must be unique, but {list(duplicated.unique()[:5])} "
            "appear more than once"
        )
    table = table.set_index("go_id")
    logger.info("read %d GO term names from %s", len(table), path)
    return table


def read_gene_info(path: str | Path) -> pd.DataFrame:
    """NCBI gene info: columns ``gene_symbol, full_name, aliases`` (``|``-joined, may include the
    symbol itself and previous symbols), plus ``entrez_id``/``gene_type`` when present."""
    path = Path(path)
    if not path.is_file():
        return _read_gene_info(path)  # raises the missing-file error
    # Every network, embedding and report reads the same 80k-row table: read it once per version
    # of the file (path, modification time, size) and hand out copies.
    stat = path.stat()
    return _read_gene_info_once(path.resolve(), stat.st_mtime_ns, stat.st_size).copy()


@functools.lru_cache(maxsize=4)
def _read_gene_info_once(path: Path, mtime_ns: int, size: int) -> pd.DataFrame:
    return _read_gene_info(path)


def _read_gene_info(path: Path) -> pd.DataFrame:
    table = _read_table(
        path,
        "gene info",
        ("gene_symbol", "full_name", "aliases"),
        optional=("entrez_id", "gene_type"),
        allow_missing=("full_name", "aliases"),
    )
    logger.info("read gene info for %d genes from %s", table["gene_symbol"].nunique(), path)
    return table


def read_edges(
    path: str | Path,
    *,
    edge_format: str | None = None,
    min_score: float | None = None,
    confidence: str | Iterable[str] | None = None,
) -> pd.DataFrame:
    """An edge list (STRING, DoRothEA, CollecTRI, BEELINE) as columns ``source, target, weight``.

    ``edge_format`` is one of :data:`EDGE_FORMATS`; by default it is recognised from the columns.
    ``.csv``/``.csv.gz`` files are comma-separated, others tab-separated.

    - ``min_score``: STRING keeps ``combined_score >= min_score`` (its 0–999 scale, e.g. 700);
      ``tidy`` tables keep ``|weight| >= min_score``. Not available for DoRothEA (use
      ``confidence``) or BEELINE (unscored).
    - ``confidence``: DoRothEA only, the levels to keep, e.g. ``"ABC"``.

    Rows with an empty symbol are dropped and each (source, target) pair is kept once (first row).
    ``attrs["perturbflow"]`` records the path, format, directedness and the filters.
    """
    path = Path(path)
    sep = _separator(path)
    header = _read_header(path, "edge list", sep)
    if edge_format is None:
        edge_format = _detect_edge_format(path, header)
    elif edge_format not in EDGE_FORMATS:
        raise PriorError(
            f"unknown edge_format {edge_format!r}; choose one of {sorted(EDGE_FORMATS)}"
        )
    spec = EDGE_FORMATS[edge_format]
    if min_score is not None and spec.score is None:
        raise PriorError(
            f"{path}: min_score does not apply to {spec.name} edge lists (they have no score "
            "column)"
            + ("; use confidence='ABC' to filter DoRothEA" if spec.name == "dorothea" else "")
        )
    if confidence is not None and spec.name != "dorothea":
        raise PriorError(f"{path}: confidence applies to DoRothEA files only, not {spec.name}")
    table = _read_table(path, f"{spec.name} edge list", spec.columns, sep=sep, header=header)
    n_rows = len(table)
    table = table.dropna(subset=[spec.source, spec.target])

    if spec.name == "string":
        score = _numeric(path, table, spec.score)
        keep = score >= min_score if min_score is not None else np.ones(len(table), dtype=bool)
        weight = score / 1000.0
    elif spec.name == "dorothea":
        _check_values(path, table, "confidence", tuple(DOROTHEA_LEVELS))
        levels = _check_confidence(confidence)
        keep = table["confidence"].isin(levels).to_numpy()
        weight = _numeric(path, table, "mor")
    elif spec.name == "tidy":
        weight = _numeric(path, table, spec.score)
        keep = np.abs(weight) >= min_score if min_score is not None else np.ones(len(table), bool)
    else:
        weight = np.ones(len(table))
        keep = np.ones(len(table), dtype=bool)

    edges = pd.DataFrame(
        {
            "source": table[spec.source].to_numpy()[keep],
            "target": table[spec.target].to_numpy()[keep],
            "weight": np.asarray(weight, dtype=np.float64)[keep],
        }
    ).drop_duplicates(["source", "target"], ignore_index=True)
    edges.attrs["perturbflow"] = {
        "path": str(path),
        "format": spec.name,
        "directed": spec.directed,
        "min_score": min_score,
        "confidence": "".join(_check_confidence(confidence)) if spec.name == "dorothea" else None,
    }
    logger.info(
        "read %d %s edges (%d genes) from %s (%d rows before filters)",
        len(edges),
        spec.name,
        len(pd.unique(np.concatenate([edges["source"], edges["target"]]))),
        path,
        n_rows,
    )
    return edges


def read_gene_sets(path: str | Path) -> dict[str, list[str]]:
    """A GMT file as ``{set name: [genes]}`` (via :func:`~perturbflow.programs.genesets.read_gmt`),
    with its errors raised as :class:`PriorFileNotFoundError` / :class:`PriorFormatError`."""
    try:
        return read_gmt(path)
    except GeneSetFileNotFoundError as error:
        raise PriorFileNotFoundError(str(error)) from error
    except GeneSetFormatError as error:
        raise PriorFormatError(str(error)) from error


def read_embedding_table(path: str | Path) -> pd.DataFrame:
    """A gene-embedding table (CSV/TSV/parquet, gene symbols in the first column, numeric columns)
    as a float table indexed by symbol."""
    path = Path(path)
    if not path.is_file():
        raise PriorFileNotFoundError(
            f"{path}: embedding table not found; pass the path of a CSV/TSV/parquet table with "
            "gene symbols in the first column"
        )
    try:
        if path.suffix == ".parquet":
            table = pd.read_parquet(path)
        else:
            sep = "\t" if path.suffix in (".tsv", ".txt") else ","
            table = pd.read_csv(path, sep=sep, index_col=0)
    except (ValueError, pd.errors.ParserError) as error:
        raise PriorFormatError(
            f"{path}: could not be read as an embedding table: {error}"
        ) from error
    if table.index.has_duplicates:
        duplicated = list(table.index[table.index.duplicated()][:5])
        raise PriorFormatError(f"{path}: duplicate gene symbols in the first column: {duplicated}")
    non_numeric = [
        column for column in table.columns if not pd.api.types.is_numeric_dtype(table[column])
    ]
    if non_numeric:
        raise PriorFormatError(
            f"{path}: embedding columns must be numeric; non-numeric: {non_numeric[:5]}"
        )
    table.index = table.index.astype(str)
    return table.astype(float)


def as_relation_edges(edges: pd.DataFrame) -> pd.DataFrame:
    """Rename ``source, target, weight`` to the ``gene_a, gene_b, score`` columns that
    :func:`~perturbflow.programs.relations.adjacency_from_edges` takes."""
    return edges.rename(columns={"source": "gene_a", "target": "gene_b", "weight": "score"})


# --- symbol harmonisation and coverage ------------------------------------------------------------


@dataclass(frozen=True)
class SymbolMapping:
    """How a source's gene symbols map onto a dataset's genes.

    ``mapping`` sends each matched source symbol to one dataset gene, and no two source symbols
    to the same gene. ``ambiguous`` lists source symbols left unmapped because they could match
    several dataset genes (or competed with another symbol for the same gene).
    """

    mapping: Mapping[str, str]
    n_exact: int
    n_case: int
    n_alias: int
    ambiguous: tuple[str, ...] = ()


def harmonise_symbols(
    symbols: Iterable[str], genes: Sequence[str], gene_info: pd.DataFrame | None = None
) -> SymbolMapping:
    """Map source ``symbols`` onto dataset ``genes``: exact match first, then case-insensitive,
    then through ``gene_info`` aliases / previous symbols (both sides are resolved to official
    symbols; only a one-to-one resolution is used). A gene already matched by an earlier step is
    not offered to a later one."""
    dataset_genes = list(_gene_positions(genes))
    source = list(dict.fromkeys(str(symbol) for symbol in symbols))
    dataset_set = set(dataset_genes)
    mapping = {symbol: symbol for symbol in source if symbol in dataset_set}
    n_exact = len(mapping)
    ambiguous: list[str] = []

    def assign(candidates: dict[str, list[str]]) -> int:
        """Accept symbol → gene proposals that are one-to-one; the rest are ambiguous."""
        claims: dict[str, list[str]] = defaultdict(list)
        for symbol, targets in candidates.items():
            if len(targets) == 1:
                claims[targets[0]].append(symbol)
            else:
                ambiguous.append(symbol)
        accepted = 0
        for gene, claimants in claims.items():
            if len(claimants) == 1:
                mapping[claimants[0]] = gene
                accepted += 1
            else:
                ambiguous.extend(claimants)
        return accepted

    def free_genes() -> list[str]:
        taken = set(mapping.values())
        return [gene for gene in dataset_genes if gene not in taken]

    def pending() -> list[str]:
        done = set(mapping) | set(ambiguous)
        return [symbol for symbol in source if symbol not in done]

    by_upper: dict[str, list[str]] = defaultdict(list)
    for gene in free_genes():
        by_upper[gene.upper()].append(gene)
    n_case = assign(
        {symbol: by_upper[symbol.upper()] for symbol in pending() if symbol.upper() in by_upper}
    )

    n_alias = 0
    if gene_info is not None and pending() and free_genes():
        resolve = _alias_resolver(gene_info)
        by_official: dict[str, list[str]] = defaultdict(list)
        for gene in free_genes():
            officials = resolve(gene)
            if len(officials) == 1:
                by_official[next(iter(officials))].append(gene)
        candidates: dict[str, list[str]] = {}
        for symbol in pending():
            officials = resolve(symbol)
            targets = sorted({gene for name in officials for gene in by_official.get(name, [])})
            if not targets:
                continue
            if len(officials) > 1:  # an alias shared by several genes: never guess
                ambiguous.append(symbol)
            else:
                candidates[symbol] = targets
        n_alias = assign(candidates)
    return SymbolMapping(mapping, n_exact, n_case, n_alias, tuple(dict.fromkeys(ambiguous)))


@dataclass(frozen=True)
class Coverage:
    """How many of a dataset's genes, and of its perturbed genes, a prior source covers."""

    source: str
    n_genes: int
    n_covered: int
    n_perturbed: int = 0
    n_perturbed_covered: int = 0
    n_exact: int = 0
    n_case: int = 0
    n_alias: int = 0
    n_ambiguous: int = 0
    missing_perturbed: tuple[str, ...] = ()

    @property
    def fraction(self) -> float:
        return self.n_covered / self.n_genes if self.n_genes else 0.0

    @property
    def perturbed_fraction(self) -> float:
        return self.n_perturbed_covered / self.n_perturbed if self.n_perturbed else 0.0

    def summary(self) -> str:
        """One line: coverage of all genes, of perturbed genes, and how symbols matched."""
        line = (
            f"{self.source}: covers {self.n_covered}/{self.n_genes} genes "
            f"({100 * self.fraction:.1f}%)"
        )
        if self.n_perturbed:
            line += (
                f", {self.n_perturbed_covered}/{self.n_perturbed} perturbed genes "
                f"({100 * self.perturbed_fraction:.1f}%)"
            )
            if self.missing_perturbed:
                shown = ", ".join(self.missing_perturbed[:5])
                more = len(self.missing_perturbed) - 5
                line += f" [missing: {shown}{f' +{more} more' if more > 0 else ''}]"
        line += (
            f"; symbols matched {self.n_exact} exact, {self.n_case} by case, {self.n_alias} by "
            f"alias, {self.n_ambiguous} ambiguous skipped"
        )
        return line


def coverage(
    source: str,
    covered: Iterable[str],
    genes: Sequence[str],
    perturbed: Iterable[str] | None = None,
    symbols: SymbolMapping | None = None,
) -> Coverage:
    """Coverage of dataset ``genes`` (and ``perturbed`` genes) by the ``covered`` genes."""
    gene_list = [str(gene) for gene in genes]
    covered_set = set(covered) & set(gene_list)
    perturbed_list = sorted(set(perturbed)) if perturbed is not None else []
    missing = tuple(gene for gene in perturbed_list if gene not in covered_set)
    return Coverage(
        source=source,
        n_genes=len(gene_list),
        n_covered=len(covered_set),
        n_perturbed=len(perturbed_list),
        n_perturbed_covered=len(perturbed_list) - len(missing),
        n_exact=symbols.n_exact if symbols else 0,
        n_case=symbols.n_case if symbols else 0,
        n_alias=symbols.n_alias if symbols else 0,
        n_ambiguous=len(symbols.ambiguous) if symbols else 0,
        missing_perturbed=missing,
    )


def harmonise_table(
    table: pd.DataFrame,
    genes: Sequence[str],
    *,
    columns: Sequence[str] | None = None,
    gene_info: pd.DataFrame | None = None,
    perturbed: Iterable[str] | None = None,
    source: str = "prior",
) -> tuple[pd.DataFrame, Coverage]:
    """Rewrite a table's gene symbols into the dataset's ``genes`` and report coverage.

    ``columns`` names the symbol columns (e.g. ``("source", "target")`` for edges, ``("gene",)``
    for GO annotations); ``None`` means the index (e.g. an embedding table, whose rows are then
    put in the order of ``genes``). Rows with any symbol outside the dataset are dropped; a gene
    is covered when it appears in a kept row. Logs one coverage line; raises
    :class:`PriorCoverageError` when no row is left.
    """
    gene_list = list(_gene_positions(genes))
    symbol_columns = list(columns) if columns is not None else None
    if symbol_columns is not None:
        absent = [column for column in symbol_columns if column not in table.columns]
        if absent:
            raise PriorFormatError(
                f"{source}: no column(s) {absent} to harmonise; the table has {list(table.columns)}"
            )
        values = pd.unique(table[symbol_columns].astype(str).to_numpy().ravel())
    else:
        values = table.index.astype(str).unique()
    symbols = harmonise_symbols(values, gene_list, gene_info)
    lookup = symbols.mapping

    if symbol_columns is None:
        mapped = table.index.astype(str).map(lambda symbol: lookup.get(symbol))
        keep = mapped.notna()
        result = table[np.asarray(keep)].copy()
        result.index = pd.Index(mapped[np.asarray(keep)], name=table.index.name)
        order = pd.Index(gene_list)
        result = result.loc[order[order.isin(result.index)]]
        covered = set(result.index)
    else:
        result = table.copy()
        keep = np.ones(len(table), dtype=bool)
        for column in symbol_columns:
            mapped = table[column].astype(str).map(lookup)
            keep &= mapped.notna().to_numpy()
            result[column] = mapped
        result = result[keep].reset_index(drop=True)
        covered = set(pd.unique(result[symbol_columns].to_numpy().ravel()))
    result.attrs = dict(table.attrs)

    report = coverage(source, covered, gene_list, perturbed, symbols)
    if not covered:
        raise PriorCoverageError(_no_overlap_message(source, values, gene_list))
    logger.info("prior coverage | %s", report.summary())
    return result, report


def alias_resolver(gene_info: pd.DataFrame):
    """Function from a gene symbol to the set of official (upper-case) symbols it may denote:
    itself when official, else every gene listing it as an alias or previous symbol."""
    return _alias_resolver(gene_info)


def _alias_resolver(gene_info: pd.DataFrame):
    """Function from a symbol to the set of official (upper-case) symbols it may denote."""
    # Building the alias map takes ~0.5 s for NCBI's table; the map depends only on the set of
    # (symbol, aliases) rows, so it is kept per content hash (hashing takes ~0.05 s). Callers get
    # copies of its sets, never the cached ones.
    rows = gene_info[["gene_symbol", "aliases"]]
    key = int(pd.util.hash_pandas_object(rows, index=False).sum())
    official, alias_to_official = _alias_maps(key, rows)

    def resolve(symbol: str) -> set[str]:
        key = symbol.upper()
        if key in official:
            return {key}
        return set(alias_to_official.get(key, ()))

    return resolve


_ALIAS_MAPS: dict[int, tuple[set[str], dict[str, set[str]]]] = {}


def _alias_maps(key: int, gene_info: pd.DataFrame) -> tuple[set[str], dict[str, set[str]]]:
    """Official symbols and alias → official symbols of ``gene_info`` (cached under ``key``)."""
    if key in _ALIAS_MAPS:
        return _ALIAS_MAPS[key]
    official = set(gene_info["gene_symbol"].astype(str).str.upper())
    alias_to_official: dict[str, set[str]] = defaultdict(set)
    for symbol, aliases in zip(
        gene_info["gene_symbol"].astype(str).str.upper(),
        gene_info["aliases"].fillna("").astype(str),
        strict=True,
    ):
        for alias in aliases.split(ALIAS_SEPARATOR):
            alias = alias.strip().upper()
            if alias:
                alias_to_official[alias].add(symbol)
    if len(_ALIAS_MAPS) >= 4:
        _ALIAS_MAPS.clear()
    _ALIAS_MAPS[key] = official, dict(alias_to_official)
    return _ALIAS_MAPS[key]


def _no_overlap_message(source: str, symbols: Sequence[str], genes: list[str]) -> str:
    message = (
        f"{source}: none of its {len(symbols)} gene symbols (e.g. {list(symbols[:5])}) matches "
        f"the dataset's {len(genes)} genes (e.g. {genes[:5]}), even case-insensitively or via "
        "aliases"
    )
    if sum(gene.upper().startswith("ENS") for gene in genes[:100]) > 50:
        message += "; the dataset's genes look like Ensembl IDs: use gene symbols as var_names"
    return message + "; check that both use human gene symbols"


# --- validation helpers ---------------------------------------------------------------------


def _separator(path: Path) -> str:
    return "," if ".csv" in path.suffixes else "\t"


def _read_header(path: Path, what: str, sep: str) -> list[str]:
    if not path.is_file():
        raise PriorFileNotFoundError(
            f"{what} file {path} does not exist; check the path or the prior bundle's folder"
        )
    try:
        return [str(column) for column in pd.read_csv(path, sep=sep, nrows=0).columns]
    except pd.errors.EmptyDataError:
        raise PriorFormatError(f"{what} file {path} is empty; expected a header line") from None
    except (OSError, UnicodeDecodeError, pd.errors.ParserError) as error:
        raise PriorFormatError(
            f"{what} file {path} could not be read as a {_sep_name(sep)} table: {error}"
        ) from error


def _read_table(
    path: Path,
    what: str,
    required: Sequence[str],
    *,
    optional: Sequence[str] = (),
    sep: str = "\t",
    header: list[str] | None = None,
    allow_missing: Sequence[str] = (),
) -> pd.DataFrame:
    """Read the ``required`` (and present ``optional``) columns of a delimited file as strings,
    with empty fields as missing values; raises specific errors for a missing file, missing
    columns, an empty table or empty values in required columns."""
    header = header if header is not None else _read_header(path, what, sep)
    missing = [column for column in required if column not in header]
    if missing:
        hint = ""
        if len(header) == 1 and any(other in header[0] for other in (",", "\t", ";")):
            hint = f" (the header is one field: is the file really {_sep_name(sep)}?)"
        raise PriorFormatError(
            f"{what} file {path}: missing column(s) {missing}; it has {header}{hint}. Expected "
            f"a {_sep_name(sep)} table with columns {list(required)}"
        )
    columns = list(required) + [column for column in optional if column in header]
    # Keep symbols such as "NA" or "NAN" as text: only empty fields are missing.
    table = pd.read_csv(
        path, sep=sep, usecols=columns, dtype=str, keep_default_na=False, na_values=[""]
    )[columns]
    if table.empty:
        raise PriorFormatError(f"{what} file {path} has a header but no rows")
    for column in required:
        if column in allow_missing:
            continue
        empty = table[column].isna().to_numpy()
        if empty.all():
            raise PriorFormatError(f"{what} file {path}: column {column!r} is entirely empty")
    return table


def _numeric(path: Path, table: pd.DataFrame, column: str) -> np.ndarray:
    values = pd.to_numeric(table[column], errors="coerce")
    bad = values.isna().to_numpy()
    if bad.any():
        first = int(np.flatnonzero(bad)[0])
        raise PriorFormatError(
            f"{path}: column {column!r} must be numeric; {int(bad.sum())} value(s) are not, "
            f"e.g. {table[column].iloc[first]!r} on data row {first + 1}"
        )
    return values.to_numpy(dtype=np.float64)


def _check_values(path: Path, table: pd.DataFrame, column: str, allowed: Sequence[str]) -> None:
    bad = ~table[column].isin(list(allowed))
    if bad.any():
        examples = list(pd.unique(table.loc[bad, column].astype(str))[:5])
        raise PriorFormatError(
            f"{path}: column {column!r} has values outside {list(allowed)}, e.g. {examples}"
        )


def _check_ontologies(ontologies: Sequence[str] | None) -> list[str]:
    if ontologies is None:
        return list(GO_ONTOLOGIES)
    if isinstance(ontologies, str):
        ontologies = [ontologies]
    wanted = [str(ontology).upper() for ontology in ontologies]
    unknown = [ontology for ontology in wanted if ontology not in GO_ONTOLOGIES]
    if unknown or not wanted:
        raise PriorError(f"ontologies must be among {list(GO_ONTOLOGIES)}, got {list(ontologies)}")
    return wanted


def _check_confidence(confidence: str | Iterable[str] | None) -> list[str]:
    if confidence is None:
        return list(DOROTHEA_LEVELS)
    levels = [str(level).upper() for level in confidence]
    unknown = [level for level in levels if level not in DOROTHEA_LEVELS]
    if unknown or not levels:
        raise PriorError(
            f"confidence must be letters among {DOROTHEA_LEVELS!r} (e.g. 'ABC'), got {confidence!r}"
        )
    return sorted(set(levels))


def _detect_edge_format(path: Path, header: list[str]) -> str:
    for name, spec in EDGE_FORMATS.items():
        if all(column in header for column in spec.columns):
            return name
    expected = "; ".join(spec.description for spec in EDGE_FORMATS.values())
    raise PriorFormatError(
        f"edge list {path}: columns {header} match no known format. Expected one of: {expected}. "
        "Pass edge_format= to name the format"
    )


def _sep_name(sep: str) -> str:
    return "comma-separated" if sep == "," else "tab-separated"
