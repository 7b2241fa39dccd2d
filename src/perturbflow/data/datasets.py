"""Registry of named Perturb-seq datasets and their loader.

Each :class:`DatasetSpec` says where a dataset lives (a file under the data folder, or a public URL
with size and checksums), which ``obs`` columns hold the condition and the cell line, and how to cite
it. :func:`load_dataset` turns a name into a validated :class:`PerturbationDataset` and records the
file's SHA-256 in ``adata.uns["perturbflow"]["dataset"]``, so every result can name its data.

Checksum status of the public (URL) datasets:

- ``norman19_scperturb``, ``replogle22_k562_essential``: size and MD5 are those Zenodo publishes
  for scPerturb record 10044268 (the same bytes are in records 7041849 and 13350497); the SHA-256
  is the one recorded by independent projects that checked their copy against that MD5. Downloads
  are verified against size, MD5 and SHA-256.
- ``norman19_gears``, ``adamson16_gears`` (GEARS Harvard Dataverse archives): no published
  checksum was found, so ``sha256`` is ``None`` and :func:`load_dataset` refuses to download them.
  A copy placed in the cache folder by the user is used, with a warning.
"""

from __future__ import annotations

import logging
import os
import shutil
import zipfile
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

import anndata as ad
import numpy as np
import pandas as pd

from perturbflow.data.download import download as download_file
from perturbflow.data.download import file_sha256
from perturbflow.data.io import (
    UNS_KEY,
    DataFileNotFoundError,
    DataValidationError,
    PerturbationDataset,
    read,
)

logger = logging.getLogger(__name__)

DATA_DIR_ENV = "PERTURBFLOW_DATA_DIR"
CACHE_DIR_ENV = "PERTURBFLOW_CACHE_DIR"
DEFAULT_CACHE_DIR = Path("~/.cache/perturbflow")
SPLITS = (
    "simulation",
    "combo",
    "unseen_single",
    "cross_cell_line",
    "cross_context",
    "unseen_guide",
    "unseen_guide_gene",
)
_REPO_ROOT = Path(__file__).resolve().parents[3]
_SHARED_DATA = Path("..") / "shared" / "data"

__all__ = [
    "CACHE_DIR_ENV",
    "DATASETS",
    "DATA_DIR_ENV",
    "DatasetSpec",
    "DatasetUnavailableError",
    "UnknownDatasetError",
    "UnverifiedChecksumError",
    "cache_dir",
    "data_dir",
    "dataset_spec",
    "file_sha256",
    "list_datasets",
    "load_dataset",
]


class UnknownDatasetError(KeyError):
    """No dataset is registered under this name; the message lists the registered names."""

    def __str__(self) -> str:
        return str(self.args[0])


class DatasetUnavailableError(DataFileNotFoundError):
    """The dataset's file is not on this machine; the message says where it was expected."""


class UnverifiedChecksumError(DatasetUnavailableError):
    """The dataset has no registered checksum, so perturbflow will not download it."""


@dataclass(frozen=True)
class DatasetSpec:
    """Where a dataset lives and how to read it.

    Exactly one of ``local_path`` (relative to the data folder, see :func:`data_dir`) and ``url``
    is set. ``subset`` keeps only the cells whose ``obs[column] == value`` for every pair.
    ``archive_member`` names the ``.h5ad`` inside a downloaded ``.zip``. ``separator`` joins the
    genes of a combination in the file's condition labels.
    """

    name: str
    description: str
    citation: str
    perturbation_type: str
    condition_key: str
    control: str | tuple[str, ...]
    cell_type_key: str | None = None
    local_path: str | None = None
    subset: tuple[tuple[str, str], ...] = ()
    url: str | None = None
    sha256: str | None = None
    size: int | None = None
    filename: str | None = None
    gene_key: str | None = None
    default_split: str = "simulation"
    notes: str = ""
    separator: str = "+"
    md5: str | None = None
    archive_member: str | None = None

    def __post_init__(self) -> None:
        if (self.local_path is None) == (self.url is None):
            raise ValueError(
                f"dataset {self.name!r}: set exactly one of local_path and url "
                f"(got local_path={self.local_path!r}, url={self.url!r})"
            )
        if self.default_split not in SPLITS:
            raise ValueError(
                f"dataset {self.name!r}: default_split {self.default_split!r} is not one of {SPLITS}"
            )
        if self.url is None and (self.sha256 or self.size or self.md5 or self.archive_member):
            raise ValueError(f"dataset {self.name!r}: checksums and archives need a url")

    @property
    def source(self) -> str:
        """``"local"`` (file under the data folder) or ``"url"`` (downloaded into the cache)."""
        return "local" if self.local_path is not None else "url"

    @property
    def verified(self) -> bool:
        """Whether a download can be checked: local files need no download."""
        return self.source == "local" or self.sha256 is not None

    @property
    def download_name(self) -> str:
        """Name of the downloaded file in the cache folder."""
        if self.filename:
            return self.filename
        if self.url is None:
            return Path(str(self.local_path)).name
        return Path(urlparse(self.url).path).name


_NORMAN19 = (
    "Norman TM, Horlbeck MA, Replogle JM, et al. Exploring genetic interaction manifolds "
    "constructed from rich single-cell phenotypes. Science 365:786-793 (2019). "
    "doi:10.1126/science.aax4438. GEO GSE133344."
)
_PERTURBENCH = (
    "Subset shipped with PerturBench (github.com/altoslabs/perturbench, "
    "src/perturbench/data/resources/devel.h5ad)."
)
_SCPERTURB = (
    "Harmonised by scPerturb: Peidli S, Green TD, Shen C, et al. scPerturb: harmonized "
    "single-cell perturbation data. Nature Methods (2024). doi:10.1038/s41592-023-02144-y; "
    "Zenodo record 10044268."
)
_GEARS = (
    "Processed by GEARS: Roohani Y, Huang K, Leskovec J. Predicting transcriptional outcomes of "
    "novel multigene perturbations with GEARS. Nature Biotechnology (2024). "
    "doi:10.1038/s41587-023-01905-6; Harvard Dataverse."
)
_ZENODO = "https://zenodo.org/records/10044268/files/"
_SCPERTURB_CHECKSUMS = (
    "Size and MD5 as published by Zenodo; SHA-256 as recorded by independent projects that "
    "checked their copy against that MD5. All three are checked on download."
)
_UNVERIFIED = (
    "Checksum not registered yet: perturbflow refuses to download it. Download the URL yourself, "
    "check it, and place it in the cache folder under the registered file name to use it."
)

DATASETS: dict[str, DatasetSpec] = {
    spec.name: spec
    for spec in (
        DatasetSpec(
            name="norman19_subset",
            description=(
                "Norman 2019 K562 CRISPRa, PerturBench subset: control + 18 singles + 15 doubles, "
                "~100 cells each, 500 HVGs, log-normalised"
            ),
            citation=f"{_NORMAN19} {_PERTURBENCH}",
            perturbation_type="CRISPRa",
            condition_key="condition",
            control="control",
            local_path="perturbench_devel/devel.h5ad",
            subset=(("dataset", "norman19"),),
            default_split="combo",
            notes=(
                "5 doubles have both singles in the file, 3 have one, 7 have none. "
                "A development-size fixture, not the full GEARS gene set."
            ),
        ),
        DatasetSpec(
            name="mcfaline23_subset",
            description=(
                "McFaline-Figueroa 2023 CRISPRi in glioblastoma lines A172, T98G, U87MG: control "
                "+ 9 singles per line, 500 HVGs, log-normalised"
            ),
            citation=(
                "McFaline-Figueroa JL, et al. Multiplex single-cell chemical genomics reveals the "
                "kinase dependence of the response to targeted therapy. Cell Genomics (2024). "
                f"{_PERTURBENCH}"
            ),
            perturbation_type="CRISPRi",
            condition_key="condition",
            control="control",
            cell_type_key="cell_type",
            local_path="perturbench_devel/devel.h5ad",
            subset=(("dataset", "mcfaline23"),),
            default_split="cross_cell_line",
            notes="Cross-cell-line task: 3 cell types in obs['cell_type']; treatment is 'none'.",
        ),
        DatasetSpec(
            name="papalexi21_thp1",
            description=(
                "Papalexi 2021 THP-1 CRISPR knock-out (ECCITE-seq): 25 single targets + "
                "non-targeting, 20,729 cells x 299 genes, raw counts (normalised on load)"
            ),
            citation=(
                "Papalexi E, Mimitou EP, Butler AW, et al. Characterizing the molecular regulation "
                "of inhibitory immune checkpoints with multimodal single-cell screens. Nature "
                "Genetics 53:322-331 (2021). Example data of the sceptre R package "
                "(github.com/Katsevich-Lab/sceptredata, data/lowmoi_example_data.rda)."
            ),
            perturbation_type="CRISPRko",
            condition_key="perturbation",
            control="non-targeting",
            local_path="papalexi2021_sceptre_lowmoi/papalexi2021_lowmoi_example.h5ad",
            default_split="unseen_single",
            notes=(
                "Conditions are a max-gRNA call per cell made during conversion, not the authors' "
                "assignment; the screen targets 26 genes, but CD274's gRNAs are never a cell's top "
                "gRNA, so 25 targets remain. Genes are a random 299-gene downsample: only 9 targets are measured, "
                "so this is a loader and sanity check, not a serious benchmark."
            ),
        ),
        DatasetSpec(
            name="grnsim_collectri_s1",
            description=(
                "Knock-out screen simulated with sergio-rs on a 250-gene CollecTRI sub-network: "
                "control + 50 singles + 100 doubles, 12,300 cells, raw counts (normalised on "
                "load); true network in uns['grn_edges']"
            ),
            citation=(
                "Simulated with sergio-rs 0.2.3 (github.com/rainx0r/sergio_rs), a Rust "
                "implementation of SERGIO: Dibaeinia P, Sinha S. SERGIO: a single-cell expression "
                "simulator guided by gene regulatory networks. Cell Systems 11:252-271 (2020). "
                "doi:10.1016/j.cels.2020.08.003. Network: CollecTRI, Müller-Dott S, et al. "
                "Expanding the coverage of regulons from high-confidence prior knowledge for "
                "accurate estimation of transcription factor activities. Nucleic Acids Research "
                "51:10934-10949 (2023). doi:10.1093/nar/gkad841."
            ),
            perturbation_type="CRISPRko",
            condition_key="condition",
            control="ctrl",
            local_path="grnsim_collectri_s1/screen.h5ad",
            default_split="combo",
            notes=(
                "Oracle network: CollecTRI generated this screen, so CollecTRI and DoRothEA "
                "(which overlaps it) are not a fair prior for models evaluated on it; label such "
                "runs 'oracle network'. Recipe in grnsim_collectri_s1/PROVENANCE.md. Caveat: its "
                "conditions were simulated on one re-used sergio-rs network, and "
                "GRN.ko_perturbation mutates the network it is called on, so knock-outs "
                "accumulate in simulation order (single effects grow along obs; the doubles' "
                "deltas correlate ~0.96 with each other). `perturbflow simulate --engine sergio` "
                "rebuilds the network for every condition."
            ),
        ),
        DatasetSpec(
            name="norman19_scperturb",
            description=(
                "Norman 2019 K562 CRISPRa, full filtered data: 111,445 cells x 33,694 genes, "
                "105 singles + 131 doubles, raw counts (normalised on load); 699 MB download"
            ),
            citation=f"{_NORMAN19} {_SCPERTURB}",
            perturbation_type="CRISPRa",
            condition_key="perturbation",
            control="control",
            separator="_",
            url=_ZENODO + "NormanWeissman2019_filtered.h5ad",
            filename="NormanWeissman2019_filtered.h5ad",
            size=698_680_199,
            md5="c870e6967d91c017d9da827bab183cd6",
            sha256="efde6f5301fe256725dce1d980f37bd96a13481a9a16135515897368e631affc",
            default_split="combo",
            notes=_SCPERTURB_CHECKSUMS,
        ),
        DatasetSpec(
            name="replogle22_k562_essential",
            description=(
                "Replogle 2022 K562 essential-gene CRISPRi screen: 310,385 cells x 8,563 genes, "
                "~2,000 single targets, raw counts (normalised on load); 1.5 GB download"
            ),
            citation=(
                "Replogle JM, Saunders RA, Pogson AN, et al. Mapping information-rich "
                "genotype-phenotype landscapes with genome-scale Perturb-seq. Cell 185:2559-2575 "
                f"(2022). doi:10.1016/j.cell.2022.05.013. {_SCPERTURB}"
            ),
            perturbation_type="CRISPRi",
            condition_key="perturbation",
            control=("control", "non-targeting"),
            url=_ZENODO + "ReplogleWeissman2022_K562_essential.h5ad",
            filename="ReplogleWeissman2022_K562_essential.h5ad",
            size=1_546_729_675,
            md5="d8cba17576d1a8afc0f7d71b79cad0f7",
            sha256="412fd0df8c4ccea9f4db91cd88033c49200838b29d40945e48574be588b48789",
            default_split="unseen_single",
            notes=f"{_SCPERTURB_CHECKSUMS} Loading needs several GB of memory.",
        ),
        DatasetSpec(
            name="norman19_gears",
            description=(
                "Norman 2019 K562 CRISPRa as processed by GEARS (5,045 genes, log-normalised), "
                "zip archive from Harvard Dataverse"
            ),
            citation=f"{_NORMAN19} {_GEARS}",
            perturbation_type="CRISPRa",
            condition_key="condition",
            control="ctrl",
            gene_key="gene_name",
            url="https://dataverse.harvard.edu/api/access/datafile/6154020",
            filename="norman.zip",
            archive_member="norman/perturb_processed.h5ad",
            default_split="combo",
            notes=_UNVERIFIED,
        ),
        DatasetSpec(
            name="adamson16_gears",
            description=(
                "Adamson 2016 K562 CRISPRi (unfolded protein response) as processed by GEARS, "
                "zip archive from Harvard Dataverse"
            ),
            citation=(
                "Adamson B, Norman TM, Jost M, et al. A multiplexed single-cell CRISPR screening "
                "platform enables systematic dissection of the unfolded protein response. Cell "
                f"167:1867-1882 (2016). doi:10.1016/j.cell.2016.11.048. {_GEARS}"
            ),
            perturbation_type="CRISPRi",
            condition_key="condition",
            control="ctrl",
            gene_key="gene_name",
            url="https://dataverse.harvard.edu/api/access/datafile/6154417",
            filename="adamson.zip",
            archive_member="adamson/perturb_processed.h5ad",
            default_split="unseen_single",
            notes=(
                f"{_UNVERIFIED} The scPerturb Adamson files are not registered: their "
                "'perturbation' column holds guide identities, some cells unassigned."
            ),
        ),
    )
}


def dataset_spec(name: str) -> DatasetSpec:
    """The registered :class:`DatasetSpec` called ``name``."""
    try:
        return DATASETS[name]
    except KeyError:
        raise UnknownDatasetError(
            f"no dataset named {name!r}; registered datasets: {', '.join(sorted(DATASETS))}"
        ) from None


def data_dir(explicit: str | Path | None = None) -> Path | None:
    """The folder holding local datasets, or ``None`` when none is found.

    Order: ``explicit``; the ``PERTURBFLOW_DATA_DIR`` environment variable; ``../shared/data``
    relative to the working directory; ``../shared/data`` relative to the repository root. The
    first two are returned even when missing, so that errors name them; the fallbacks only when
    they exist.
    """
    return _resolve_data_dir(explicit)[0]


def cache_dir(explicit: str | Path | None = None) -> Path:
    """Folder for downloads: ``explicit``, else ``PERTURBFLOW_CACHE_DIR``, else
    ``~/.cache/perturbflow``."""
    chosen = explicit if explicit is not None else os.environ.get(CACHE_DIR_ENV) or None
    return Path(chosen if chosen is not None else DEFAULT_CACHE_DIR).expanduser().resolve()


# For use inside functions whose parameters share the name.
_cache_dir = cache_dir


def load_dataset(
    name: str,
    *,
    data_dir: str | Path | None = None,
    cache_dir: str | Path | None = None,
    download: bool = False,
    progress: bool = False,
    min_cells: int = 10,
) -> PerturbationDataset:
    """Load a registered dataset into a validated :class:`PerturbationDataset`.

    Parameters
    ----------
    name
        A key of :data:`DATASETS` (see :func:`list_datasets`).
    data_dir
        Folder of local datasets; default from :func:`data_dir`.
    cache_dir
        Folder for downloaded datasets; default from :func:`cache_dir`.
    download
        Download a URL dataset that is not in the cache yet (verified against its checksum).
    progress
        Show a progress bar while downloading.
    min_cells
        Passed to :func:`~perturbflow.data.io.read`: smaller conditions trigger a warning.

    ``dataset.adata.uns["perturbflow"]["dataset"]`` records the name, the file read, its SHA-256,
    the source and the ``subset`` filter.
    """
    spec = dataset_spec(name)
    if spec.source == "local":
        path = _local_file(spec, data_dir)
        digest = file_sha256(path)
        h5ad = path
    else:
        path, digest = _remote_file(spec, cache_dir, download, progress)
        h5ad = _extract(path, spec.archive_member, digest) if spec.archive_member else path

    dataset = _read(spec, h5ad, min_cells)
    record = {
        "name": spec.name,
        "path": str(path),
        "sha256": digest,
        "source": spec.source,
        "perturbation_type": spec.perturbation_type,
        "subset": {column: value for column, value in spec.subset},
    }
    if spec.url is not None:
        record["url"] = spec.url
    if spec.archive_member is not None:
        record["archive_member"] = spec.archive_member
    dataset.adata.uns.setdefault(UNS_KEY, {})["dataset"] = record
    logger.info("loaded %s: %r (sha256 %s)", spec.name, dataset, digest)
    return dataset


def list_datasets(
    *, data_dir: str | Path | None = None, cache_dir: str | Path | None = None
) -> pd.DataFrame:
    """One row per registered dataset: name, perturbation_type, source (local/url), available
    (file on this machine), verified (checksum registered or local), default_split,
    description."""
    folder = _resolve_data_dir(data_dir)[0]
    cache = _cache_dir(cache_dir)
    rows = []
    for spec in DATASETS.values():
        if spec.source == "local":
            available = folder is not None and (folder / str(spec.local_path)).is_file()
        else:
            available = (cache / spec.download_name).is_file()
        rows.append(
            {
                "name": spec.name,
                "perturbation_type": spec.perturbation_type,
                "source": spec.source,
                "available": bool(available),
                "verified": spec.verified,
                "default_split": spec.default_split,
                "description": spec.description,
            }
        )
    return pd.DataFrame(rows)


def _resolve_data_dir(explicit: str | Path | None) -> tuple[Path | None, str]:
    """The data folder and where its location came from (for error messages)."""
    if explicit is not None:
        return Path(explicit).expanduser().resolve(), "the data_dir argument"
    from_env = os.environ.get(DATA_DIR_ENV)
    if from_env:
        return Path(from_env).expanduser().resolve(), f"${DATA_DIR_ENV}"
    for base, origin in ((Path.cwd(), "the working directory"), (_REPO_ROOT, "the repository")):
        candidate = (base / _SHARED_DATA).resolve()
        if candidate.is_dir():
            return candidate, f"../shared/data next to {origin}"
    return None, "nowhere"


def _local_file(spec: DatasetSpec, explicit: str | Path | None) -> Path:
    folder, origin = _resolve_data_dir(explicit)
    if folder is None:
        raise DatasetUnavailableError(
            f"dataset {spec.name!r} is the local file {spec.local_path}, but no data folder was "
            f"found: set {DATA_DIR_ENV}=/path/to/data (the folder holding {spec.local_path}) or "
            "pass data_dir=; ../shared/data next to the working directory or the repository is "
            "used when it exists"
        )
    path = folder / str(spec.local_path)
    if not path.is_file():
        raise DatasetUnavailableError(
            f"dataset {spec.name!r}: expected file {path} not found (data folder {folder}, from "
            f"{origin}). Set {DATA_DIR_ENV} to the folder holding {spec.local_path}, or pass "
            "data_dir="
        )
    return path


def _remote_file(
    spec: DatasetSpec, explicit: str | Path | None, download: bool, progress: bool
) -> tuple[Path, str]:
    """Path of the cached (verified) file and its SHA-256; downloads when asked."""
    assert spec.url is not None
    path = _cache_dir(explicit) / spec.download_name
    if spec.sha256 is None:
        if not path.is_file():
            raise UnverifiedChecksumError(
                f"dataset {spec.name!r}: its checksum is not registered yet, so perturbflow will "
                f"not download it{' (download=True refused)' if download else ''}. Download "
                f"{spec.url} yourself, check it, and save it as {path}; it is then loaded with a "
                "warning. Datasets with verified downloads: "
                + ", ".join(n for n, s in DATASETS.items() if s.source == "url" and s.verified)
            )
        logger.warning(
            "%s: using %s without checksum verification (none is registered for %s)",
            spec.name,
            path,
            spec.url,
        )
        return path, file_sha256(path)
    if not path.is_file() and not download:
        size = f" ({spec.size / 1e9:.2f} GB)" if spec.size else ""
        raise DatasetUnavailableError(
            f"dataset {spec.name!r} is not downloaded yet: expected {path}. Pass download=True "
            f"(CLI: --download) to fetch it{size} from {spec.url}, verified by SHA-256; "
            f"set {CACHE_DIR_ENV} or cache_dir= to put it elsewhere"
        )
    # Verifies an existing file without network access, or downloads and verifies.
    download_file(
        spec.url, path, sha256=spec.sha256, size=spec.size, md5=spec.md5, progress=progress
    )
    return path, spec.sha256


def _extract(archive: Path, member: str, digest: str) -> Path:
    """Extract ``member`` of a zip once, into a folder named by the archive's checksum."""
    target = archive.parent / f"{archive.stem}-{digest[:12]}" / member
    if target.is_file():
        return target
    try:
        with zipfile.ZipFile(archive) as bundle:
            names = bundle.namelist()
            if member not in names:
                raise DataValidationError(
                    f"{archive}: the archive has no member {member!r}; it holds "
                    f"{', '.join(names[:10])}{' …' if len(names) > 10 else ''}"
                )
            target.parent.mkdir(parents=True, exist_ok=True)
            partial = target.with_name(target.name + ".part")
            with bundle.open(member) as source, partial.open("wb") as sink:
                shutil.copyfileobj(source, sink, 1 << 20)
    except zipfile.BadZipFile as error:
        raise DataValidationError(f"{archive}: not a valid zip archive ({error})") from error
    os.replace(partial, target)
    logger.info("extracted %s from %s", member, archive)
    return target


def _read(spec: DatasetSpec, path: Path, min_cells: int) -> PerturbationDataset:
    options = {
        "condition_key": spec.condition_key,
        "control": spec.control,
        "gene_key": spec.gene_key,
        "separator": spec.separator,
        "cell_type_key": spec.cell_type_key,
        "min_cells": min_cells,
    }
    if not spec.subset:
        return read(path, **options)
    filters = " & ".join(f"{column} == {value!r}" for column, value in spec.subset)
    dataset = read(_subset(path, spec.subset), **options)
    dataset.source = f"{path} [{filters}]"
    return dataset


def _subset(path: Path, subset: tuple[tuple[str, str], ...]) -> ad.AnnData:
    """Cells of ``path`` matching every ``obs[column] == value``, unused categories dropped."""
    try:
        adata = ad.read_h5ad(path)
    except (OSError, KeyError, ValueError, TypeError) as error:
        raise DataValidationError(
            f"{path}: cannot be read as an .h5ad file ({type(error).__name__}: {error})"
        ) from error
    keep = np.ones(adata.n_obs, dtype=bool)
    for column, value in subset:
        if column not in adata.obs.columns:
            raise DataValidationError(
                f"{path}: obs has no column {column!r} to select {column} == {value!r}; "
                f"available columns: {', '.join(map(str, adata.obs.columns))}"
            )
        match = adata.obs[column].astype(str).to_numpy() == value
        if not match.any():
            present = sorted(adata.obs[column].astype(str).unique())
            raise DataValidationError(
                f"{path}: no cell has obs[{column!r}] == {value!r}; values present: "
                f"{', '.join(present[:10])}"
            )
        keep &= match
    adata = adata[keep].copy()
    for column in adata.obs.columns:
        if isinstance(adata.obs[column].dtype, pd.CategoricalDtype):
            adata.obs[column] = adata.obs[column].cat.remove_unused_categories()
    return adata
