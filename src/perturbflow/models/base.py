"""The one model interface, the model registry and self-describing checkpoints.

Every model — baseline or not — implements ``fit(dataset, split, config) -> self``,
``predict(conditions, n_cells, seed) -> AnnData``, ``predict_delta(conditions) -> DataFrame``,
``save(path)`` and ``load(path)``. The benchmark never special-cases a model.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import logging
import zipfile
import zlib
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, ClassVar, Protocol, runtime_checkable

import anndata as ad
import numpy as np
import pandas as pd

from perturbflow.data.conditions import canonical, format_condition, parse_condition
from perturbflow.data.io import CONDITION_COLUMN, PerturbationDataset
from perturbflow.data.outputs import write_atomic
from perturbflow.data.splits import Split

logger = logging.getLogger(__name__)

CHECKPOINT_FORMAT = "perturbflow-checkpoint-v1"


class ModelNotFittedError(RuntimeError):
    """A model was used before ``fit`` (or ``load``)."""


class CheckpointError(ValueError):
    """A checkpoint file cannot be read as a perturbflow model."""


@runtime_checkable
class Model(Protocol):
    """What every perturbflow model provides.

    Optional class attributes a model may declare: ``config_class`` (its frozen config
    dataclass), ``variant_field`` (the config field that ``name[value]`` sets, e.g. ``ridge[go]``)
    and ``resumable`` (``fit`` takes ``checkpoint_dir`` and resumes an interrupted run); and the
    method ``known_genes()`` (genes it measured, saw perturbed or has a vector for).
    """

    name: ClassVar[str]

    def fit(self, dataset: PerturbationDataset, split: Split, config: Any = None) -> Model: ...

    def predict(
        self, conditions: Iterable[str], n_cells: int = 100, seed: int = 0
    ) -> ad.AnnData: ...

    def predict_delta(self, conditions: Iterable[str]) -> pd.DataFrame: ...

    def save(self, path: str | Path, overwrite: bool = False) -> Path: ...

    @classmethod
    def load(cls, path: str | Path) -> Model: ...


MODELS: dict[str, type] = {}


def register_model(name: str) -> Callable[[type], type]:
    """Class decorator adding a model to :data:`MODELS` under ``name``."""

    def decorator(cls: type) -> type:
        if name in MODELS:
            raise ValueError(f"a model named {name!r} is already registered")
        cls.name = name
        MODELS[name] = cls
        return cls

    return decorator


def model_class(name: str) -> type:
    """The class behind a model name; ``base[variant]`` (e.g. ``ridge[go]``) names a registered
    model whose ``variant_field`` config option is set to ``variant`` (its embedding source)."""
    base, _ = _split_variant(name)
    if base not in MODELS:
        raise KeyError(f"unknown model {name!r}; registered models: {', '.join(sorted(MODELS))}")
    return MODELS[base]


def _split_variant(name: str) -> tuple[str, str | None]:
    if not name.endswith("]") or "[" not in name:
        return name, None
    base, variant = name[:-1].split("[", 1)
    return base, variant


def _with_variant(name: str, values: dict[str, Any]) -> dict[str, Any]:
    """Config ``values`` with the variant of ``name`` (if any) set on the model's variant field."""
    cls = model_class(name)
    _, variant = _split_variant(name)
    if variant is None:
        return values
    field = getattr(cls, "variant_field", None)
    if field is None or not variant:
        raise KeyError(
            f"model {name!r}: {cls.name!r} takes no [variant]; variants name an embedding "
            "source of ridge, nearest_neighbor or scbig, e.g. 'ridge[go]'"
        )
    if field in values and values[field] != variant:
        raise ValueError(
            f"model {name!r} sets {field}={variant!r} but the options set {field}={values[field]!r}"
        )
    return {**values, field: variant}


def get_model(name: str, config: Any = None) -> Model:
    """Instantiate a model by name, e.g. ``get_model("additive")`` or ``get_model("ridge[go]")``."""
    cls = model_class(name)
    if _split_variant(name)[1] is not None:
        variant = _with_variant(name, {})
        config = make_config(name) if config is None else dataclasses.replace(config, **variant)
    return cls(config)


def canonical_conditions(conditions: Iterable[str] | str) -> list[str]:
    """Canonical names of user condition labels, order kept, duplicates dropped."""
    if isinstance(conditions, str):
        conditions = [conditions]
    return list(dict.fromkeys(canonical(label) for label in conditions))


@functools.lru_cache(maxsize=1)
def default_alias_resolver():
    """Alias resolver from the gene info of the default data folder's priors, or ``None``.

    Loaded on first need only (a gene the model does not know by name or letter case)."""
    # Lazy: the prior bundle imports scanpy; most predictions never need an alias.
    from perturbflow.programs.priors import PriorBundle
    from perturbflow.programs.priors.tables import PriorError, alias_resolver

    try:
        info = PriorBundle.discover().gene_info_or_none()
    except PriorError as error:
        logger.info("gene aliases unavailable: %s", error)
        return None
    return alias_resolver(info) if info is not None else None


def match_gene_names(
    names: Iterable[str],
    vocabulary: Iterable[str],
    *,
    owner: str,
    reported: set[str],
    aliases=default_alias_resolver,
) -> list[str]:
    """Canonical ``names`` with every gene matched to the model's ``vocabulary`` (the genes it
    measured, saw perturbed or has a vector for): exactly, else case-insensitively when exactly
    one vocabulary gene matches (``tp53`` → ``TP53``), else through the gene info's aliases and
    previous symbols when exactly one vocabulary gene is what the name denotes (``p53`` →
    ``TP53``). ``aliases`` returns that resolver (or ``None``); it is called only for a gene
    that matched neither way. Each match is logged once per gene (``reported`` remembers what
    was said); a gene matching nothing is kept as given, and the model's own fallback for genes
    it has never seen applies."""
    known = set(vocabulary)
    by_lower: dict[str, set[str]] = {}
    for gene in known:
        by_lower.setdefault(gene.lower(), set()).add(gene)
    matched = []
    for name in canonical_conditions(names):
        genes = []
        for gene in parse_condition(name):
            found, how = None, ""
            candidates = by_lower.get(gene.lower(), set())
            if gene not in known and len(candidates) == 1:
                (found,), how = candidates, "letter case"
            elif gene not in known and not candidates and aliases is not None:
                resolve = aliases()
                officials = resolve(gene) if resolve is not None else set()
                hits = {g for g in known if g.upper() in officials}
                if len(hits) == 1:
                    (found,), how = hits, "alias in the gene info"
            if found is not None:
                if gene not in reported:
                    reported.add(gene)
                    logger.info("%s: gene %r matched to %r (%s)", owner, gene, found, how)
                gene = found
            genes.append(gene)
        matched.append(format_condition(frozenset(genes)))
    return list(dict.fromkeys(matched))


def report_unknown_genes(
    names: Iterable[str],
    vocabulary: Iterable[str],
    *,
    owner: str,
    fallback: str,
    reported: set[str],
) -> None:
    """Warn once per gene that the model has never measured, seen perturbed or got a vector for,
    naming the ``fallback`` it uses instead."""
    known = set(vocabulary)
    unknown = sorted({g for name in names for g in parse_condition(name)} - known - reported)
    if unknown:
        reported.update(unknown)
        logger.warning(
            "%s: gene(s) %s were never measured or perturbed in training; they get %s",
            owner,
            ", ".join(unknown[:10]) + (" …" if len(unknown) > 10 else ""),
            fallback,
        )


def predictions_to_anndata(
    blocks: dict[str, np.ndarray], genes: Iterable[str], uns: dict[str, Any]
) -> ad.AnnData:
    """Stack predicted cells per condition into an AnnData (obs: condition; uns: provenance)."""
    names = list(blocks)
    matrix = (  # one copy, cast on the way (a million predicted cells are gigabytes)
        np.concatenate([blocks[name] for name in names], axis=0, dtype=np.float32)
        if names
        else np.zeros((0, len(list(genes))), dtype=np.float32)
    )
    sizes = [blocks[name].shape[0] for name in names]
    return stacked_predictions_to_anndata(matrix, names, sizes, genes, uns)


def stacked_predictions_to_anndata(
    matrix: np.ndarray,
    names: list[str],
    sizes: list[int],
    genes: Iterable[str],
    uns: dict[str, Any],
) -> ad.AnnData:
    """Predicted cells already stacked: ``matrix`` ``(N, G)`` float32 holds ``sizes[i]`` rows of
    ``names[i]`` in order. The matrix becomes ``X`` as it is, without a copy."""
    if matrix.dtype != np.float32 or sum(sizes) != len(matrix) or len(names) != len(sizes):
        raise ValueError(
            f"stacked predictions need a float32 matrix of sum(sizes) rows, one size per name; got "
            f"{matrix.dtype} {matrix.shape}, {len(sizes)} sizes summing to {sum(sizes)}, "
            f"{len(names)} names"
        )
    codes = np.repeat(np.arange(len(names)), sizes)  # (N,)
    obs = pd.DataFrame(
        {CONDITION_COLUMN: pd.Categorical.from_codes(codes, categories=names)},
        index=[f"pred{i}" for i in range(len(codes))],
    )
    adata = ad.AnnData(X=matrix, obs=obs, var=pd.DataFrame(index=pd.Index(list(genes))))
    adata.uns["perturbflow"] = uns
    return adata


def config_to_dict(config: Any) -> dict[str, Any]:
    return dataclasses.asdict(config) if dataclasses.is_dataclass(config) else {}


def write_checkpoint(
    path: str | Path,
    *,
    model: str,
    config: dict[str, Any],
    meta: dict[str, Any],
    arrays: dict[str, np.ndarray],
    overwrite: bool = False,
) -> Path:
    """Write a self-describing checkpoint (``.npz``: arrays + JSON metadata) atomically: a crash
    or a full disk leaves the previous file as it was."""
    header = {"format": CHECKPOINT_FORMAT, "model": model, "config": config, "meta": meta}
    payload = {f"array/{key}": np.asarray(value) for key, value in arrays.items()}
    payload["header"] = np.frombuffer(json.dumps(header).encode(), dtype=np.uint8)

    def write(tmp: Path) -> None:
        with open(tmp, "wb") as stream:  # a stream: numpy would add ".npz" to a path
            np.savez_compressed(stream, **payload)

    return write_atomic(path, overwrite, write)


def read_checkpoint(path: str | Path) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """Read a checkpoint: returns ``(header, arrays)``; errors name the file and the problem."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: checkpoint not found")
    try:
        # allow_pickle=False: a checkpoint is arrays and JSON; loading it never runs code.
        stored = np.load(path, allow_pickle=False)
        if not isinstance(stored, np.lib.npyio.NpzFile):
            raise ValueError("not an .npz archive")
        with stored:
            # Every member is the header or an array: a damaged name is not silently skipped.
            unexpected = [k for k in stored.files if k != "header" and not k.startswith("array/")]
            if unexpected:
                raise ValueError(f"unexpected archive member(s) {unexpected[:3]}")
            header = json.loads(bytes(stored["header"]).decode())
            arrays = {
                key.split("/", 1)[1]: stored[key]
                for key in stored.files
                if key.startswith("array/")
            }
        if not isinstance(header, dict):
            raise ValueError("header is not a JSON object")
    except ValueError as error:
        # numpy's refusals: an object array inside the archive, or a file that is neither
        # .npz nor .npy (numpy would read it as a pickle).
        if "Object arrays" in str(error):
            raise CheckpointError(
                f"{path}: holds pickled Python objects, which perturbflow checkpoints never do; "
                "the file was altered or not written by perturbflow, and was not loaded"
            ) from error
        reason = (
            "not an .npz archive; it was not unpickled" if "allow_pickle" in str(error) else error
        )
        raise CheckpointError(f"{path}: not a perturbflow checkpoint ({reason})") from error
    # Empty, truncated or corrupted files raise EOFError, BadZipFile or zlib.error; a damaged
    # flag field claims encryption or patched data, which zipfile refuses with NotImplementedError
    # or RuntimeError.
    except (
        OSError,
        KeyError,
        EOFError,
        zipfile.BadZipFile,
        zlib.error,
        NotImplementedError,
        RuntimeError,
    ) as error:
        raise CheckpointError(
            f"{path}: not a perturbflow checkpoint, or damaged ({type(error).__name__}: {error})"
        ) from error
    if header.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(
            f"{path}: unknown checkpoint format {header.get('format')!r}; expected {CHECKPOINT_FORMAT}"
        )
    return header, arrays


def load_model(path: str | Path) -> Model:
    """Load any registered model from its checkpoint."""
    header, _ = read_checkpoint(path)
    name = header.get("model")
    if name not in MODELS:
        raise CheckpointError(f"{path}: model {name!r} is not registered in this perturbflow")
    return MODELS[name].load(path)


def make_config(name: str, values: dict[str, Any] | None = None) -> Any:
    """Build model ``name``'s config dataclass from a dict (e.g. parsed YAML); errors list fields."""
    config_class = getattr(model_class(name), "config_class", None)
    values = _with_variant(name, dict(values or {}))
    if config_class is None:
        if values:
            raise ValueError(f"model {name!r} takes no configuration, got {sorted(values)}")
        return None
    fields = {field.name for field in dataclasses.fields(config_class)}
    unknown = sorted(set(values) - fields)
    if unknown:
        raise ValueError(
            f"unknown option(s) {unknown} for model {name!r}; valid options: {sorted(fields)}"
        )
    return config_class(**values)
