"""GEARS (PyPI ``cell-gears`` 0.1.2) as a peer model, trained fully offline.

GEARS predicts mean expression per perturbation. Its network returns the input control cell plus
a shift that does not depend on the cell (the cell enters only as ``+ x``), so GEARS is a
mean-shift model: the peer's delta is GEARS's mean shift, and its predicted cells are stored
training control cells plus that delta (:class:`MeanShiftModel`).

One GEARS 0.1.2 quirk makes the shift depend on a cell's place in its batch: the co-expression
graph's edges index the nodes of the first graph of a batch only, so the first cell gets shift
``f_first`` and every other cell ``f_other``. ``GEARS.predict`` averages a batch of 300 control
cells; the peer returns exactly that average, ``(f_first + 299 f_other) / 300``, from two graphs.

Offline and side-effect free, unlike GEARS itself:

* ``gene2go_all.pkl`` is built from a gene → GO table (default: the data folder's
  ``priors/go_orghs/gene_go.tsv.gz``, evidence ``ND`` dropped) and GEARS's GO graph is computed
  here (:func:`go_similarity_edges`, the same Jaccard edges GEARS builds with 25 processes), so
  GEARS downloads nothing (``default_pert_graph=False``).
* GEARS writes ``./data/...`` relative to the working directory; fitting works inside a temporary
  folder (or a fresh one under ``GearsConfig.work_dir``) and restores the working directory.
* GEARS's prints and progress bars go to this module's logger at DEBUG level; the global random
  state, warning filters and scanpy verbosity that importing or running GEARS changes are restored.
* GEARS gets the cells of the training and validation conditions only; it picks its best epoch on
  validation. An empty validation part falls back to the training perturbations (logged).

The perturbation vocabulary is every measured gene plus every perturbed gene of the dataset that
has GO annotations (gene identities only). GEARS predicts conditions of one or two of those genes;
other conditions raise :class:`UnknownPerturbationError` or ``ValueError``, and training
conditions outside the vocabulary are left out with a warning. Cell types are not modelled.
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib.metadata
import importlib.util
import io
import logging
import os
import pickle
import random
import re
import tempfile
import time
import warnings
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from types import SimpleNamespace
from typing import Any, ClassVar

import anndata as ad
import numpy as np
import pandas as pd
import scipy.sparse as sp
import torch

from perturbflow.data.conditions import CONTROL_NAME, parse_condition
from perturbflow.data.datasets import DATA_DIR_ENV, data_dir
from perturbflow.data.io import PerturbationDataset
from perturbflow.data.splits import Split
from perturbflow.models.base import ModelNotFittedError, canonical_conditions
from perturbflow.models.baselines.mean_shift import MAX_STORED_CONTROL_CELLS, MeanShiftModel
from perturbflow.models.peers.envs import PeerCannotPredictError, PeerNotInstalledError

logger = logging.getLogger(__name__)

INSTALL_HINT = "pip install 'perturbflow[peers]'"
GO_TABLE = Path("priors") / "go_orghs" / "gene_go.tsv.gz"
MAX_GENES_PER_CONDITION = 2  # GEARS parses conditions as "A+B" / "A+ctrl" only
_DATASET_NAME = "perturbflow"  # GEARS's dataset name: names its files inside the work folder
_GEARS_PREDICTION_CELLS = 300  # cells per batch in GEARS.predict (see the module docstring)
_GRAPH_KEYS = ("G_go", "G_go_weight", "G_coexpress", "G_coexpress_weight")


class GoTableNotFoundError(FileNotFoundError):
    """The gene → GO annotation table GEARS needs cannot be found."""


class UnknownPerturbationError(PeerCannotPredictError):
    """A condition names a gene outside GEARS's perturbation vocabulary."""


def gears_available() -> bool:
    """Whether cell-gears and torch_geometric are installed (checked without importing them)."""
    try:
        importlib.metadata.version("cell-gears")
    except importlib.metadata.PackageNotFoundError:
        return False
    return (
        importlib.util.find_spec("gears") is not None
        and importlib.util.find_spec("torch_geometric") is not None
    )


def import_gears() -> SimpleNamespace:
    """Import cell-gears, undoing what its import changes globally.

    GEARS's modules call ``warnings.filterwarnings("ignore")``, ``torch.manual_seed(0)`` and set
    ``scanpy.settings.verbosity = 0`` at import, and the numba import they trigger resets torch's
    thread count; all four are restored. Returns the pieces used
    here: ``PertData``, ``GEARS``, ``GEARS_Model`` and ``version``.
    """
    if not gears_available():
        raise PeerNotInstalledError(
            f"the GEARS peer needs cell-gears and torch_geometric; install them with {INSTALL_HINT}"
        )
    import scanpy as sc

    verbosity, threads = sc.settings.verbosity, torch.get_num_threads()
    try:
        with warnings.catch_warnings(), torch.random.fork_rng(devices=[]):
            warnings.simplefilter("ignore", DeprecationWarning)  # torch.jit.script in PyG
            import gears
            from gears.model import GEARS_Model
    finally:
        sc.settings.verbosity = verbosity
        torch.set_num_threads(threads)
    return SimpleNamespace(
        PertData=gears.PertData,
        GEARS=gears.GEARS,
        GEARS_Model=GEARS_Model,
        version=importlib.metadata.version("cell-gears"),
    )


@dataclasses.dataclass(frozen=True)
class GearsConfig:
    """Options of the GEARS peer; the architecture options are GEARS's own, with its defaults.

    go_table: gene → GO table (TSV/CSV, optionally gzipped; columns ``gene_symbol``, ``go_id``
    and optionally ``evidence``), default the data folder's ``priors/go_orghs/gene_go.tsv.gz``.
    work_dir: keep GEARS's files in a fresh folder under it (default: a temporary folder, removed).
    max_control_cells: control cells stored for predicted cells (not for training: GEARS trains
    on all of them). timeout_s: stop GEARS after this many seconds when it runs in its own
    environment (``perturbflow peers install gears``; ``None``: no limit).
    """

    hidden_size: int = 64
    epochs: int = 15
    batch_size: int = 32
    lr: float = 1e-3
    weight_decay: float = 5e-4
    num_go_gnn_layers: int = 1
    num_gene_gnn_layers: int = 1
    decoder_hidden_size: int = 16
    num_similar_genes_go_graph: int = 20
    num_similar_genes_co_express_graph: int = 20
    coexpress_threshold: float = 0.4
    direction_lambda: float = 0.1
    device: str = "cpu"
    go_table: str | None = None
    work_dir: str | None = None
    max_control_cells: int = MAX_STORED_CONTROL_CELLS
    timeout_s: float | None = None
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("hidden_size", "epochs", "batch_size", "decoder_hidden_size"):
            if getattr(self, name) < 1:
                raise ValueError(
                    f"GearsConfig.{name} must be at least 1, got {getattr(self, name)}"
                )
        if self.lr <= 0:
            raise ValueError(f"GearsConfig.lr must be positive, got {self.lr}")
        # Paths are stored as strings so that the config stays JSON (it goes into checkpoints).
        for name in ("go_table", "work_dir"):
            value = getattr(self, name)
            if value is not None:
                object.__setattr__(self, name, str(value))


# -- GO annotations ------------------------------------------------------------------------------


def default_go_table() -> Path:
    """The data folder's gene → GO table; the error says how to point to one."""
    root = data_dir()
    hint = f"set {DATA_DIR_ENV} to the folder holding {GO_TABLE}, or pass GearsConfig(go_table=...)"
    if root is None:
        raise GoTableNotFoundError(f"no data folder found for the GEARS GO table; {hint}")
    path = root / GO_TABLE
    if not path.exists():
        raise GoTableNotFoundError(f"{path}: GO annotation table not found; {hint}")
    return path


def gene2go_from_table(table: pd.DataFrame, source: str = "<table>") -> dict[str, set[str]]:
    """GEARS's ``gene2go``: gene symbol → set of GO ids, dropping evidence ``ND`` (no data).

    ``ND`` rows annotate a gene to a root term only because nothing is known about it.
    """
    missing = sorted({"gene_symbol", "go_id"} - set(table.columns))
    if missing:
        raise ValueError(
            f"{source}: GO table lacks column(s) {missing}; it needs gene_symbol and go_id "
            f"(and optionally evidence); columns found: {list(table.columns)}"
        )
    if "evidence" in table.columns:
        table = table[table["evidence"] != "ND"]
    table = table.dropna(subset=["gene_symbol", "go_id"])
    grouped = table.groupby("gene_symbol", sort=True)["go_id"]
    return {str(gene): {str(term) for term in terms} for gene, terms in grouped}


def read_gene2go(path: str | Path) -> dict[str, set[str]]:
    """Read a gene → GO table (``.tsv``/``.txt`` tab-separated, else comma; gzip allowed)."""
    path = Path(path)
    if not path.exists():
        raise GoTableNotFoundError(f"{path}: GO annotation table not found")
    separator = "\t" if {".tsv", ".txt"} & set(path.suffixes) else ","
    return gene2go_from_table(pd.read_csv(path, sep=separator, dtype=str), source=str(path))


def go_similarity_edges(
    gene2go: Mapping[str, set[str]],
    genes: Sequence[str],
    threshold: float = 0.1,
    chunk_size: int = 1024,
) -> pd.DataFrame:
    """GEARS's GO graph: Jaccard similarity of GO-term sets, edges with score above ``threshold``.

    Same rows, in the same order (by source, then target, in ``genes`` order; self edges
    included), as ``gears.utils.make_GO``, computed with sparse products instead of a process
    pool. Columns ``source``, ``target``, ``importance``.
    """
    genes = list(genes)
    empty = [gene for gene in genes if not gene2go[gene]]
    if empty:
        raise ValueError(f"genes without GO terms cannot enter the GO graph: {empty[:5]}")
    terms = sorted(set().union(*(gene2go[gene] for gene in genes)))
    term_index = {term: index for index, term in enumerate(terms)}
    rows = [row for row, gene in enumerate(genes) for _ in gene2go[gene]]
    columns = [term_index[term] for gene in genes for term in gene2go[gene]]
    membership = sp.csr_matrix(
        (np.ones(len(rows)), (rows, columns)), shape=(len(genes), len(terms))
    )  # (P, T)
    sizes = np.asarray(membership.sum(axis=1)).ravel()  # (P,)
    sources, targets, scores = [], [], []
    for start in range(0, len(genes), chunk_size):
        stop = min(start + chunk_size, len(genes))
        shared = (membership[start:stop] @ membership.T).toarray()  # (c, P)
        union = sizes[start:stop, None] + sizes[None, :] - shared  # (c, P)
        score = shared / union  # (c, P)
        row, column = np.nonzero(score > threshold)  # row-major: GEARS's loop order
        sources.append(row + start)
        targets.append(column)
        scores.append(score[row, column])
    names = np.asarray(genes, dtype=object)
    source, target = np.concatenate(sources), np.concatenate(targets)
    return pd.DataFrame(
        {"source": names[source], "target": names[target], "importance": np.concatenate(scores)}
    )


# -- GEARS's expectations ------------------------------------------------------------------------


def gears_condition(name: str) -> str:
    """GEARS spelling of a condition: ``ctrl``, ``A+ctrl`` or ``A+B``."""
    genes = sorted(parse_condition(name))
    if len(genes) > MAX_GENES_PER_CONDITION:
        raise ValueError(f"GEARS handles conditions of one or two genes, not {name!r}")
    if not genes:
        return CONTROL_NAME
    return f"{genes[0]}+ctrl" if len(genes) == 1 else "+".join(genes)


class _SeriesKeyCSR(sp.csr_matrix):
    """CSR matrix accepting a pandas boolean Series as row key.

    ``GEARS.__init__`` indexes ``adata.X`` with ``obs.condition == 'ctrl'``, which current scipy
    rejects (``'Series' object has no attribute 'nonzero'``).
    """

    def __getitem__(self, key: Any) -> Any:
        if isinstance(key, pd.Series):
            key = key.to_numpy()
        return super().__getitem__(key)


def _gears_anndata(dataset: PerturbationDataset, names: Sequence[str]) -> ad.AnnData:
    """The cells of ``names`` as GEARS wants them: sparse float32 X, condition, cell_type, gene_name."""
    subset = dataset.subset(list(names))
    labels = subset.condition_labels.map(gears_condition)
    obs = pd.DataFrame(
        {"condition": labels.to_numpy(), "cell_type": "all"},
        index=pd.Index([f"cell{i}" for i in range(subset.adata.n_obs)]),
    )
    var = pd.DataFrame({"gene_name": list(dataset.genes)}, index=pd.Index(list(dataset.genes)))
    matrix = sp.csr_matrix(subset.adata.X, dtype=np.float32)  # (cells, G)
    return ad.AnnData(X=matrix, obs=obs, var=var)


class _LogStream(io.TextIOBase):
    """Text stream writing each line it receives to the logger (progress bars split at ``\\r``)."""

    def __init__(self, level: int = logging.DEBUG) -> None:
        self._level = level
        self._pending = ""

    def writable(self) -> bool:
        return True

    def write(self, text: str) -> int:
        *lines, self._pending = re.split(r"[\r\n]", self._pending + text)
        for line in lines:
            if line.strip():
                logger.log(self._level, "GEARS: %s", line.strip())
        return len(text)

    def flush(self) -> None:
        if self._pending.strip():
            logger.log(self._level, "GEARS: %s", self._pending.strip())
        self._pending = ""


@contextlib.contextmanager
def _gears_quiet() -> Iterator[None]:
    """Route GEARS's prints to the logger; hide the deprecation warnings its 2023 code triggers."""
    stream = _LogStream()
    try:
        with (
            contextlib.redirect_stdout(stream),
            contextlib.redirect_stderr(stream),
            warnings.catch_warnings(),
        ):
            warnings.simplefilter("ignore", FutureWarning)
            warnings.simplefilter("ignore", DeprecationWarning)
            warnings.simplefilter("ignore", ad.ImplicitModificationWarning)
            warnings.filterwarnings("ignore", message="'data.DataLoader' is deprecated")
            yield
    finally:
        stream.flush()


@contextlib.contextmanager
def _seeded(seed: int) -> Iterator[None]:
    """Seed Python's, NumPy's and torch's global generators (GEARS uses them); restore them after."""
    # GEARS draws from NumPy's legacy global generator, so that is the one to seed.
    python_state, numpy_state = random.getstate(), np.random.get_state()  # noqa: NPY002
    try:
        with torch.random.fork_rng(devices=[]):
            random.seed(seed)
            np.random.seed(seed)  # noqa: NPY002
            torch.manual_seed(seed)
            yield
    finally:
        random.setstate(python_state)
        np.random.set_state(numpy_state)  # noqa: NPY002


@contextlib.contextmanager
def _workspace(work_dir: str | None) -> Iterator[Path]:
    """A fresh folder as working directory (GEARS writes ``./data``); cwd is restored after.

    Without ``work_dir`` the folder is temporary and removed; with it, a new ``gears-*`` folder
    under ``work_dir`` is kept (never an existing one: GEARS would reuse its cached files).
    """
    previous = Path.cwd()
    with contextlib.ExitStack() as stack:
        if work_dir is None:
            root = Path(
                stack.enter_context(tempfile.TemporaryDirectory(prefix="perturbflow-gears-"))
            )
        else:
            Path(work_dir).mkdir(parents=True, exist_ok=True)
            root = Path(tempfile.mkdtemp(prefix="gears-", dir=work_dir)).resolve()
        os.chdir(root)
        try:
            yield root
        finally:
            os.chdir(previous)


# -- the model -----------------------------------------------------------------------------------


class GearsModel(MeanShiftModel):
    """GEARS behind perturbflow's model interface: delta = GEARS's shift; cells = control + delta.

    Registered as ``gears`` when cell-gears is installed (``pip install 'perturbflow[peers]'``).
    """

    name: ClassVar[str] = "gears"
    config_class: ClassVar[type] = GearsConfig

    def __init__(self, config: Any = None) -> None:
        if not gears_available():
            raise PeerNotInstalledError(
                f"the GEARS peer model needs cell-gears and torch_geometric: {INSTALL_HINT}"
            )
        super().__init__(config)
        self.network_: torch.nn.Module | None = None
        self.perturbable_genes_: tuple[str, ...] = ()
        self.graphs_: dict[str, torch.Tensor] = {}  # GO and co-expression edges, weights

    @property
    def peer_version_(self) -> str:
        """Version of cell-gears that runs this model."""
        return importlib.metadata.version("cell-gears")

    # -- fitting -------------------------------------------------------------------------------
    def fit(self, dataset: PerturbationDataset, split: Split, config: Any = None) -> GearsModel:
        """Train GEARS on ``split.train`` (best epoch on ``split.val``); test cells are never used."""
        super().fit(dataset, split, config)  # stored control cells, control mean, training deltas
        self.network_ = None
        self._train_gears(dataset, split)
        return self

    def _train_gears(self, dataset: PerturbationDataset, split: Split) -> None:
        config = self.config
        gears = import_gears()
        present = set(dataset.conditions)
        gene2go, train, val = gears_conditions(
            dataset,
            [n for n in split.train if n in present],
            [n for n in split.val if n in present],
            config.go_table,
            predict=list(split.test),
        )
        adata = _gears_anndata(dataset, sorted(set(train) | set(val)))
        parts = {
            "train": [gears_condition(name) for name in train],
            "val": [gears_condition(name) for name in val],
            "test": [],
        }
        start = time.perf_counter()
        with _seeded(config.seed), _workspace(config.work_dir) as root, _gears_quiet():
            data_path = write_gears_files(root, gene2go, parts)
            pert_data = gears.PertData(
                str(data_path),
                gene_set_path=str(root / "perturbable_genes.pkl"),
                default_pert_graph=False,
            )
            pert_data.new_data_process(dataset_name=_DATASET_NAME, adata=adata)
            # make_GO reads this file when present instead of forking 25 processes to build it.
            go_similarity_edges(gene2go, list(pert_data.pert_names)).to_csv(
                data_path / f"go_essential_{_DATASET_NAME}.csv", index=False
            )
            pert_data.prepare_split(
                split="custom", seed=config.seed, split_dict_path=str(root / "split.pkl")
            )
            # GEARS's own mode for "no test set": no test cells exist to load or score.
            pert_data.split = "no_test"
            pert_data.get_dataloader(batch_size=config.batch_size)
            pert_data.adata.X = _SeriesKeyCSR(pert_data.adata.X)
            trainer = gears.GEARS(pert_data, device=config.device)
            trainer.model_initialize(
                hidden_size=config.hidden_size,
                num_go_gnn_layers=config.num_go_gnn_layers,
                num_gene_gnn_layers=config.num_gene_gnn_layers,
                decoder_hidden_size=config.decoder_hidden_size,
                num_similar_genes_go_graph=config.num_similar_genes_go_graph,
                num_similar_genes_co_express_graph=config.num_similar_genes_co_express_graph,
                coexpress_threshold=config.coexpress_threshold,
                direction_lambda=config.direction_lambda,
            )
            trainer.train(epochs=config.epochs, lr=config.lr, weight_decay=config.weight_decay)
        if list(trainer.gene_list) != list(self.genes_):
            raise RuntimeError("GEARS reordered the genes; predictions could not be aligned")
        self.perturbable_genes_ = tuple(str(gene) for gene in trainer.pert_list)
        self.graphs_ = {key: trainer.config[key].cpu() for key in _GRAPH_KEYS}
        self.network_ = trainer.best_model.eval()
        logger.info(
            "GEARS trained on %d conditions (%d validation) in %.1fs; %d perturbable genes",
            len(train),
            len(val),
            time.perf_counter() - start,
            len(self.perturbable_genes_),
        )

    # -- prediction ----------------------------------------------------------------------------
    def _check_fitted(self) -> None:
        super()._check_fitted()
        if self.network_ is None:
            raise ModelNotFittedError("gears model is not fitted; call fit() or load()")

    def predict_delta(self, conditions: Iterable[str]) -> pd.DataFrame:
        """GEARS's shift per condition, ``(conditions, genes)``; control is zero.

        Raises :class:`UnknownPerturbationError` for genes outside :attr:`perturbable_genes_` and
        ``ValueError`` for conditions of more than two genes.
        """
        self._check_fitted()
        names = canonical_conditions(conditions)
        too_many = [name for name in names if len(parse_condition(name)) > MAX_GENES_PER_CONDITION]
        if too_many:
            raise ValueError(f"GEARS predicts conditions of one or two genes, not {too_many[:5]}")
        known = set(self.perturbable_genes_)
        unknown = {
            name: sorted(parse_condition(name) - known)
            for name in names
            if parse_condition(name) - known
        }
        if unknown:
            raise UnknownPerturbationError(
                f"GEARS cannot predict {len(unknown)} condition(s) whose genes are outside its "
                f"perturbation graph (measured or perturbed genes of the training data with GO "
                f"annotations): {dict(list(unknown.items())[:5])}"
            )
        return super().predict_delta(names)

    def _delta(self, condition: frozenset[str], name: str) -> np.ndarray:
        from torch_geometric.data import Batch, Data

        index = {gene: i for i, gene in enumerate(self.perturbable_genes_)}
        genes = sorted(condition)
        pert_idx = [index[gene] for gene in genes]
        # A zero cell: the output is then the shift itself (the cell is only added to it).
        zero = torch.zeros(len(self.genes_), 1)  # (G, 1)
        graphs = [Data(x=zero, pert_idx=pert_idx, pert=genes) for _ in range(2)]
        batch = Batch.from_data_list(graphs).to(self.config.device)
        with torch.no_grad():
            first, other = self.network_(batch).cpu().double()  # (G,), (G,)
        n = _GEARS_PREDICTION_CELLS
        return ((first + (n - 1) * other) / n).numpy()  # (G,) = GEARS.predict's mean shift

    # -- persistence ---------------------------------------------------------------------------
    def _state(self) -> dict[str, np.ndarray]:
        arrays = {
            "gears_version": np.asarray(importlib.metadata.version("cell-gears")),
            "gears_perturbable_genes": np.asarray(self.perturbable_genes_, dtype=str),
        }
        arrays.update({f"gears_graph/{k}": v.cpu().numpy() for k, v in self.graphs_.items()})
        arrays.update(
            {f"gears_state/{k}": v.cpu().numpy() for k, v in self.network_.state_dict().items()}
        )
        return arrays

    def _set_state(self, arrays: dict[str, np.ndarray]) -> None:
        gears = import_gears()
        saved_version = str(arrays["gears_version"])
        if saved_version != gears.version:
            logger.warning(
                "checkpoint was trained with cell-gears %s; loading with %s",
                saved_version,
                gears.version,
            )
        self.perturbable_genes_ = tuple(arrays["gears_perturbable_genes"].astype(str))
        self.graphs_ = {key: torch.from_numpy(arrays[f"gears_graph/{key}"]) for key in _GRAPH_KEYS}
        prefix = "gears_state/"
        state = {
            key[len(prefix) :]: torch.from_numpy(np.array(value))
            for key, value in arrays.items()
            if key.startswith(prefix)
        }
        self.network_ = self._build_network(gears)
        self.network_.load_state_dict(state)
        self.network_.eval()

    def _build_network(self, gears: SimpleNamespace) -> torch.nn.Module:
        """An untrained GEARS network of this config's shape (random init not seen by callers)."""
        config = self.config
        args = {
            "hidden_size": config.hidden_size,
            "num_go_gnn_layers": config.num_go_gnn_layers,
            "num_gene_gnn_layers": config.num_gene_gnn_layers,
            "decoder_hidden_size": config.decoder_hidden_size,
            "uncertainty": False,
            "no_perturb": False,
            "num_genes": len(self.genes_),
            "num_perts": len(self.perturbable_genes_),
            "device": config.device,
            **self.graphs_,
        }
        with torch.random.fork_rng(devices=[]):
            return gears.GEARS_Model(args).to(config.device)


def _usable(names: list[str], known: frozenset[str], part: str) -> list[str]:
    """``names`` GEARS can use: at most two genes, all with GO annotations (others logged)."""
    usable, dropped = [], []
    for name in names:
        genes = parse_condition(name)
        fits = len(genes) <= MAX_GENES_PER_CONDITION and genes <= known
        (usable if fits else dropped).append(name)
    if dropped:
        logger.warning(
            "GEARS leaves out %d %s condition(s) with a gene without GO annotations or more "
            "than two genes: %s",
            len(dropped),
            part,
            ", ".join(dropped[:10]) + (" …" if len(dropped) > 10 else ""),
        )
    return usable


def gears_conditions(
    dataset: PerturbationDataset,
    train: list[str],
    val: list[str],
    go_table: str | None,
    predict: Sequence[str] = (),
) -> tuple[dict[str, set[str]], list[str], list[str]]:
    """The GO annotations of the dataset's genes and the training / validation conditions GEARS
    can use, in process or in its own environment.

    A validation part left empty falls back to the training perturbations (logged); no usable
    training perturbation is an error naming the GO table. A condition of ``predict`` (the
    split's test conditions) with a gene outside GEARS's perturbation graph raises
    :class:`UnknownPerturbationError` now, not after training.
    """
    table = Path(go_table).resolve() if go_table else default_go_table()
    vocabulary = set(dataset.genes) | set(dataset.perturbed_genes)
    gene2go = {gene: terms for gene, terms in read_gene2go(table).items() if gene in vocabulary}
    known = frozenset(gene2go)
    unknown = {
        name: sorted(genes - known)
        for name in predict
        if name != CONTROL_NAME and (genes := parse_condition(name)) - known
    }
    if unknown:
        raise UnknownPerturbationError(
            f"GEARS cannot predict {len(unknown)} condition(s) the split asks for, whose genes "
            f"have no annotations in the GO table {table} (outside its perturbation graph): "
            f"{dict(list(unknown.items())[:5])}; checked before training. Leave them out of the "
            "split or pass GearsConfig(go_table=...) with annotations for them"
        )
    train = _usable(train, known, "training")
    val = _usable(val, known, "validation")
    perturbed = [name for name in train if name != CONTROL_NAME]
    if not perturbed:
        raise ValueError(
            f"GEARS has no training perturbation to learn from: every training condition names "
            f"a gene without annotations in the GO table {table} or more than two genes; "
            "pass GearsConfig(go_table=...) with annotations for the perturbed genes"
        )
    if not val:
        logger.warning(
            "GEARS needs validation conditions to pick its best epoch; the split has none "
            "usable, so it validates on the %d training perturbations",
            len(perturbed),
        )
        val = perturbed
    return gene2go, train, val


def write_gears_files(root: Path, gene2go: dict[str, set[str]], split: dict) -> Path:
    """GEARS's offline inputs under ``root``: ``data/gene2go_all.pkl``, ``perturbable_genes.pkl``
    and ``split.pkl`` (GEARS spellings); returns the ``data`` folder."""
    data = root / "data"
    data.mkdir()
    with open(data / "gene2go_all.pkl", "wb") as stream:
        pickle.dump(gene2go, stream)
    with open(root / "perturbable_genes.pkl", "wb") as stream:
        pickle.dump(sorted(gene2go), stream)
    with open(root / "split.pkl", "wb") as stream:
        pickle.dump(split, stream)
    return data
