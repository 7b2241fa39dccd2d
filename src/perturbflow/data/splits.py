"""Deterministic train / validation / test splits over perturbation conditions.

A :class:`Split` holds canonical condition names (see :mod:`perturbflow.data.conditions`) in three
disjoint parts, a subgroup for every validation and test condition and the parameters that made
it, so a saved split explains itself. Four kinds are registered in :data:`SPLITS`:

* ``simulation`` — GEARS simulation split: unseen single genes plus doubles grouped by how many
  of their genes were seen as singles in training (``combo_seen0/1/2``).
* ``combo`` — all singles train, a fraction of the doubles is held out.
* ``unseen_single`` — for single-gene screens: held-out singles (and doubles touching them).
* ``random`` — held-out conditions drawn at random.

Context kinds (:data:`CONTEXT_KINDS`: ``cross_cell_line``) hold out a condition *in one cell line*
only. Their test names may also be in ``train``, where they stand for the other lines' cells, so
``train`` and ``test`` need not be disjoint; validation stays disjoint from both. Such a split is
made from cells, not names (:func:`perturbflow.data.contexts.cross_cell_line_task`), and records
the cell-type column and target line in ``params`` so that the cell-level check
(:func:`perturbflow.data.contexts.check_no_context_leakage`) can be run from the split alone.

Seen genes are always counted from the *final* training part (after validation is carved out):
a gene is seen when its single-gene condition is in ``train``. Conditions with three or more
genes are treated like doubles, with subgroup ``combo_seen{k}`` for ``k`` seen genes. Control
(``ctrl``) is always in ``train``. Validation is always taken from training conditions.
"""

from __future__ import annotations

import inspect
import json
import logging
import math
import os
import uuid
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from perturbflow.data.conditions import (
    CONTROL_NAME,
    Condition,
    format_condition,
    parse_condition,
)

logger = logging.getLogger(__name__)

PARTS: tuple[str, ...] = ("train", "val", "test")
SCHEMA = "perturbflow.split"
SCHEMA_VERSION = 1
_REQUIRED_KEYS: tuple[str, ...] = ("kind", "seed", "train", "val", "test", "subgroups", "params")
CROSS_CELL_LINE = "cross_cell_line"
CROSS_CONTEXT = "cross_context"
# Kinds whose test conditions are held out in one context only; see the module doc.
# ``cross_context`` is the generic kind (any obs column: stimulation, donor, cell line);
# ``cross_cell_line`` is the same split over cell lines, with its own subgroup names.
CONTEXT_KINDS: frozenset[str] = frozenset({CROSS_CELL_LINE, CROSS_CONTEXT})
_CONTEXT_SUBGROUP = {CROSS_CELL_LINE: "cross_line", CROSS_CONTEXT: "cross_context"}
# What a context split's params must record so that its cells can be checked for leakage.
CONTEXT_PARAMS: tuple[str, ...] = ("cell_type_key", "target_line")


class SplitLeakageError(ValueError):
    """A validation or test condition also appears in training or validation (any gene order)."""


class SplitFormatError(ValueError):
    """A split file or dictionary is malformed."""


@dataclass(frozen=True, repr=False)
class Split:
    """Canonical condition names in disjoint ``train`` / ``val`` / ``test`` parts.

    For a context kind (:data:`CONTEXT_KINDS`) a test name may also be in ``train``: there it
    names the other contexts' cells.

    ``subgroups`` maps every val and test condition to its subgroup (e.g. ``combo_seen1``) and
    ``params`` records the parameters used; both are plain dicts to be treated as read-only.
    Construction validates the split and raises :class:`SplitLeakageError` on leakage.
    """

    kind: str
    seed: int
    train: tuple[str, ...]
    val: tuple[str, ...]
    test: tuple[str, ...]
    subgroups: Mapping[str, str] = field(default_factory=dict, hash=False)
    params: Mapping[str, object] = field(default_factory=dict, hash=False)

    def __post_init__(self) -> None:
        for part in PARTS:
            names = getattr(self, part)
            if isinstance(names, str):
                raise TypeError(
                    f"Split.{part} must be a sequence of names, not the string {names!r}"
                )
            object.__setattr__(self, part, tuple(names))
        if not isinstance(self.kind, str) or not self.kind:
            raise ValueError(f"Split.kind must be a non-empty string, got {self.kind!r}")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int | np.integer):
            raise TypeError(f"Split.seed must be an integer, got {self.seed!r}")
        object.__setattr__(self, "seed", int(self.seed))
        object.__setattr__(self, "subgroups", dict(self.subgroups))
        object.__setattr__(self, "params", _json_normalised(self.params))
        _validate(self)

    def __repr__(self) -> str:
        return (
            f"Split(kind={self.kind!r}, seed={self.seed}, train={len(self.train)}, "
            f"val={len(self.val)}, test={len(self.test)})"
        )

    def conditions(self, part: str) -> tuple[str, ...]:
        """Condition names of ``part`` (``"train"``, ``"val"`` or ``"test"``)."""
        if part not in PARTS:
            raise ValueError(f"unknown split part {part!r}; valid parts: {', '.join(PARTS)}")
        return getattr(self, part)

    def test_subgroups(self) -> dict[str, list[str]]:
        """Test conditions grouped by subgroup: ``{subgroup: [condition, ...]}``."""
        groups: dict[str, list[str]] = {}
        for name in self.test:
            groups.setdefault(self.subgroups[name], []).append(name)
        return dict(sorted(groups.items()))

    def summary(self) -> pd.DataFrame:
        """Long table of counts with columns ``part``, ``subgroup``, ``n_conditions``.

        Training conditions are grouped as ``ctrl``, ``single`` and ``combo``.
        """
        rows = []
        for part in PARTS:
            counts = Counter(self._subgroup(part, name) for name in getattr(self, part))
            rows.extend(
                {"part": part, "subgroup": group, "n_conditions": counts[group]}
                for group in sorted(counts)
            )
        return pd.DataFrame(rows, columns=["part", "subgroup", "n_conditions"])

    def _subgroup(self, part: str, name: str) -> str:
        if part != "train":
            return self.subgroups[name]
        size = len(parse_condition(name))
        return CONTROL_NAME if size == 0 else "single" if size == 1 else "combo"

    def to_dict(self) -> dict[str, object]:
        """JSON-ready dictionary; :meth:`from_dict` inverts it."""
        return {
            "schema": SCHEMA,
            "version": SCHEMA_VERSION,
            "kind": self.kind,
            "seed": self.seed,
            **{part: list(getattr(self, part)) for part in PARTS},
            "subgroups": dict(self.subgroups),
            "params": dict(self.params),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, object]) -> Split:
        """Build a split from :meth:`to_dict` output, checking keys and types."""
        if not isinstance(data, Mapping):
            raise SplitFormatError(f"a split must be a JSON object, got {type(data).__name__}")
        if data.get("schema", SCHEMA) != SCHEMA:
            raise SplitFormatError(f"schema is {data['schema']!r}, expected {SCHEMA!r}")
        version = data.get("version", SCHEMA_VERSION)
        if not isinstance(version, int) or version > SCHEMA_VERSION:
            raise SplitFormatError(
                f"split format version {version!r} is not supported (this perturbflow reads "
                f"versions up to {SCHEMA_VERSION}); upgrade perturbflow"
            )
        missing = [key for key in _REQUIRED_KEYS if key not in data]
        if missing:
            raise SplitFormatError(f"missing key(s): {', '.join(missing)}")
        if not isinstance(data["kind"], str):
            raise SplitFormatError(f"'kind' must be a string, got {data['kind']!r}")
        if isinstance(data["seed"], bool) or not isinstance(data["seed"], int):
            raise SplitFormatError(f"'seed' must be an integer, got {data['seed']!r}")
        for part in PARTS:
            names = data[part]
            if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
                raise SplitFormatError(f"{part!r} must be a list of condition names")
        subgroups = data["subgroups"]
        if not isinstance(subgroups, Mapping) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in subgroups.items()
        ):
            raise SplitFormatError("'subgroups' must map condition names to subgroup names")
        if not isinstance(data["params"], Mapping):
            raise SplitFormatError("'params' must be an object")
        return cls(
            kind=data["kind"],
            seed=data["seed"],
            train=tuple(data["train"]),
            val=tuple(data["val"]),
            test=tuple(data["test"]),
            subgroups=dict(subgroups),
            params=dict(data["params"]),
        )

    def save(self, path: str | os.PathLike[str], overwrite: bool = False) -> Path:
        """Write the split as JSON, atomically (temporary file + rename in the same folder)."""
        path = Path(path)
        if path.exists() and not overwrite:
            raise FileExistsError(
                f"split file {path} already exists; pass overwrite=True (or --overwrite on the "
                "command line) to replace it"
            )
        path.parent.mkdir(parents=True, exist_ok=True)
        text = json.dumps(self.to_dict(), indent=2) + "\n"
        # os.open with mode 0o666 lets the umask decide permissions (tempfile would force 0o600).
        temporary = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
        descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        try:
            with os.fdopen(descriptor, "w", encoding="utf-8") as handle:
                handle.write(text)
            os.replace(temporary, path)
        except BaseException:
            temporary.unlink(missing_ok=True)
            raise
        logger.debug("saved %r to %s", self, path)
        return path

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> Split:
        """Read a split written by :meth:`save`; errors name the file."""
        path = Path(path)
        try:
            text = path.read_text(encoding="utf-8")
        except FileNotFoundError:
            raise FileNotFoundError(f"split file {path} does not exist") from None
        except UnicodeDecodeError as err:
            raise SplitFormatError(f"split file {path} is not UTF-8 JSON text: {err}") from err
        try:
            data = json.loads(text)
        except json.JSONDecodeError as err:
            raise SplitFormatError(f"split file {path} is not valid JSON: {err}") from err
        try:
            return cls.from_dict(data)
        except SplitLeakageError as err:
            raise SplitLeakageError(f"split file {path}: {err}") from err
        except (ValueError, TypeError) as err:
            raise SplitFormatError(f"split file {path} is malformed: {err}") from err


def _json_normalised(params: Mapping[str, object]) -> dict[str, object]:
    """Copy of ``params`` as it reads back from JSON, so a saved split equals the loaded one."""
    if not all(isinstance(key, str) for key in params):
        raise ValueError(f"Split.params keys must be strings, got {list(params)!r}")
    try:
        return json.loads(json.dumps(dict(params)))
    except (TypeError, ValueError) as err:
        raise ValueError(f"Split.params must be JSON-serialisable: {err}") from err


def _canonical_genes(name: object) -> Condition:
    """Genes of a canonical condition name; non-canonical spellings are rejected."""
    genes = parse_condition(name)
    expected = format_condition(genes)
    if name != expected:
        raise ValueError(
            f"condition {name!r} is not a canonical name (expected {expected!r}); convert labels "
            "with perturbflow.data.conditions.canonical first"
        )
    return genes


def _validate(split: Split) -> None:
    if CONTROL_NAME not in split.train:
        raise ValueError(f"control condition {CONTROL_NAME!r} must be in train")
    for part in ("val", "test"):
        if CONTROL_NAME in getattr(split, part):
            raise ValueError(f"control condition {CONTROL_NAME!r} must never be in {part}")
    check_no_leakage(split)
    if split.kind in CONTEXT_KINDS:
        absent = [key for key in CONTEXT_PARAMS if not isinstance(split.params.get(key), str)]
        if absent:
            raise ValueError(
                f"a {split.kind!r} split must record {', '.join(absent)} in params (the "
                "cell-type column and the line whose test cells are held out)"
            )
    for part in PARTS:
        names = getattr(split, part)
        for name in names:
            _canonical_genes(name)
        repeated = sorted(name for name, count in Counter(names).items() if count > 1)
        if repeated:
            raise ValueError(f"{part} lists condition(s) more than once: {', '.join(repeated)}")
    held_out = set(split.val) | set(split.test)
    if set(split.subgroups) != held_out:
        lacking = sorted(held_out - set(split.subgroups))
        extra = sorted(set(split.subgroups) - held_out)
        raise ValueError(
            "subgroups must name exactly the val and test conditions; "
            f"without subgroup: {lacking}, not in val/test: {extra}"
        )
    bad = {name: group for name, group in split.subgroups.items() if not isinstance(group, str)}
    if bad:
        raise ValueError(f"subgroup names must be strings, got {bad!r}")


def check_no_leakage(split: Split) -> None:
    """Raise :class:`SplitLeakageError` if a val/test condition is in train, or test in val.

    Conditions are compared as gene sets, so ``B+A`` in test collides with ``A+B`` in train. In a
    context split (:data:`CONTEXT_KINDS`) a test name in train is allowed — it names other cell
    lines' cells there; that no *target-line* test cell is trained on is a property of the cells,
    checked by :func:`perturbflow.data.contexts.check_no_context_leakage`.
    """
    train = {parse_condition(name): name for name in split.train}
    val = {parse_condition(name): name for name in split.val}
    test_in_train_allowed = split.kind in CONTEXT_KINDS
    for part, names in (("val", split.val), ("test", split.test)):
        for name in names:
            genes = parse_condition(name)
            if genes in train and not (part == "test" and test_in_train_allowed):
                raise SplitLeakageError(
                    f"{part} condition {name!r} is also in train (as {train[genes]!r})"
                )
            if part == "test" and genes in val:
                raise SplitLeakageError(
                    f"test condition {name!r} is also in val (as {val[genes]!r}); early stopping "
                    "would see test data"
                )


def seen_genes(train: Iterable[str]) -> frozenset[str]:
    """Genes whose single-gene condition is among the ``train`` condition names."""
    singles = (parse_condition(name) for name in train)
    return frozenset(next(iter(genes)) for genes in singles if len(genes) == 1)


def combo_subgroup(genes: Condition, seen: frozenset[str]) -> str:
    """``combo_seen{k}`` where ``k`` is how many of ``genes`` are in ``seen``."""
    return f"combo_seen{len(genes & seen)}"


# --- building blocks shared by the split functions ---------------------------------------------


def _perturbations(conditions: Iterable[str]) -> dict[str, Condition]:
    """Sorted distinct perturbation names (control dropped) mapped to their gene sets."""
    if isinstance(conditions, str):
        raise TypeError(f"conditions must be an iterable of names, not the string {conditions!r}")
    genes_by_name = {name: _canonical_genes(name) for name in dict.fromkeys(conditions)}
    perturbations = {name: genes for name, genes in sorted(genes_by_name.items()) if genes}
    if len(perturbations) < 2:
        raise ValueError(
            f"a split needs at least 2 perturbation conditions besides control, got "
            f"{len(perturbations)}: {list(perturbations)}"
        )
    return perturbations


def _rng(seed: int) -> np.random.Generator:
    if isinstance(seed, bool) or not isinstance(seed, int | np.integer) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
    return np.random.default_rng(int(seed))


def _fraction(name: str, value: float, *, zero_ok: bool, one_ok: bool) -> float:
    low, high = ("[" if zero_ok else "("), ("]" if one_ok else ")")
    value = float(value)
    above = value >= 0 if zero_ok else value > 0
    below = value <= 1 if one_ok else value < 1
    if not (above and below):
        raise ValueError(f"{name} must lie in {low}0, 1{high}, got {value}")
    return value


def _count(fraction: float, n: int) -> int:
    """``fraction * n`` rounded half up (Python's ``round`` rounds half to even)."""
    return int(math.floor(fraction * n + 0.5))


def _sample(names: list[str], k: int, rng: np.random.Generator) -> list[str]:
    """``k`` distinct names drawn with ``rng``, returned sorted."""
    if k <= 0:
        return []
    picked = rng.choice(len(names), size=k, replace=False)
    return sorted(names[int(i)] for i in picked)


def _carve_validation(
    train: list[str],
    perturbations: Mapping[str, Condition],
    rng: np.random.Generator,
    val_fraction: float,
    *,
    prefer_combos: bool = False,
) -> list[str]:
    """Draw ``val_fraction`` of the training perturbations (at least 1 of 3 or more).

    With ``prefer_combos``, validation is drawn from combinations when at least as many remain in
    training, so early stopping sees combinations.
    """
    n_val = _count(val_fraction, len(train))
    if val_fraction > 0 and len(train) >= 3:
        n_val = max(n_val, 1)
    n_val = min(n_val, len(train) - 1)
    pool = train
    if prefer_combos:
        combos = [name for name in train if len(perturbations[name]) > 1]
        if n_val > 0 and len(combos) >= 2 * n_val:
            pool = combos
    return _sample(pool, n_val, rng)


def _build(
    kind: str,
    seed: int,
    params: Mapping[str, object],
    perturbations: Mapping[str, Condition],
    test: list[str],
    rng: np.random.Generator,
    *,
    single_label: str,
    prefer_combos: bool = False,
) -> Split:
    """Carve validation from the non-test conditions, label subgroups and build the split."""
    held_out = set(test)
    train = [name for name in perturbations if name not in held_out]
    if not train or not test:
        raise ValueError(
            f"cannot make a {kind!r} split of {len(perturbations)} perturbation conditions with "
            f"{dict(params)}: it leaves {'train' if not train else 'test'} without perturbations"
        )
    val = _carve_validation(
        train, perturbations, rng, params["val_fraction"], prefer_combos=prefer_combos
    )
    in_val = frozenset(val)
    train = [name for name in train if name not in in_val]
    seen = seen_genes(train)
    subgroups = {
        name: "val_single" if len(perturbations[name]) == 1 else "val_combo" for name in val
    }
    for name in sorted(test):
        genes = perturbations[name]
        subgroups[name] = single_label if len(genes) == 1 else combo_subgroup(genes, seen)
    split = Split(
        kind=kind,
        seed=int(seed),
        train=(CONTROL_NAME, *train),
        val=tuple(val),
        test=tuple(sorted(test)),
        subgroups=subgroups,
        params=dict(params),
    )
    logger.info(
        "%s split (seed %d): %d train, %d val, %d test conditions; test subgroups %s",
        kind,
        split.seed,
        len(split.train),
        len(split.val),
        len(split.test),
        {group: len(names) for group, names in split.test_subgroups().items()},
    )
    return split


# --- the split kinds ---------------------------------------------------------------------------


def simulation_split(
    conditions: Iterable[str],
    *,
    seed: int,
    train_gene_fraction: float = 0.75,
    combo_seen2_train_fraction: float = 0.75,
    val_fraction: float = 0.1,
) -> Split:
    """GEARS simulation split.

    ``train_gene_fraction`` of the genes with a single-gene condition are *seen*; singles of the
    other genes are test (``unseen_single``). Combinations with an unseen gene (or a gene without
    a single) are test (``combo_seen0``/``combo_seen1``); of those whose genes are all seen,
    ``1 - combo_seen2_train_fraction`` are test (``combo_seen2``). Validation
    (``val_single``/``val_combo``) is ``val_fraction`` of the remaining training conditions.
    Subgroups count seen genes against the final ``train`` part.
    """
    rng = _rng(seed)
    params = {
        "train_gene_fraction": _fraction(
            "train_gene_fraction", train_gene_fraction, zero_ok=False, one_ok=True
        ),
        "combo_seen2_train_fraction": _fraction(
            "combo_seen2_train_fraction", combo_seen2_train_fraction, zero_ok=True, one_ok=True
        ),
        "val_fraction": _fraction("val_fraction", val_fraction, zero_ok=True, one_ok=False),
    }
    perturbations = _perturbations(conditions)
    singles = [name for name, genes in perturbations.items() if len(genes) == 1]
    if not singles:
        raise ValueError("a 'simulation' split needs single-gene conditions; none were given")
    single_genes = [next(iter(perturbations[name])) for name in singles]
    n_seen = _count(params["train_gene_fraction"], len(single_genes))
    seen = frozenset(_sample(single_genes, n_seen, rng))
    combos = [name for name, genes in perturbations.items() if len(genes) > 1]
    fully_seen = [name for name in combos if perturbations[name] <= seen]
    test = [name for name in singles + combos if not perturbations[name] <= seen]
    n_held = _count(1 - params["combo_seen2_train_fraction"], len(fully_seen))
    test += _sample(fully_seen, n_held, rng)
    return _build(
        "simulation", seed, params, perturbations, test, rng, single_label="unseen_single"
    )


def combo_split(
    conditions: Iterable[str], *, seed: int, test_fraction: float = 0.5, val_fraction: float = 0.1
) -> Split:
    """All singles in train; ``test_fraction`` of the combinations (at least one) held out.

    Test subgroups are ``combo_seen{k}`` counted against train singles; validation prefers
    combinations when enough remain in training.
    """
    rng = _rng(seed)
    params = {
        "test_fraction": _fraction("test_fraction", test_fraction, zero_ok=False, one_ok=False),
        "val_fraction": _fraction("val_fraction", val_fraction, zero_ok=True, one_ok=False),
    }
    perturbations = _perturbations(conditions)
    combos = [name for name, genes in perturbations.items() if len(genes) > 1]
    if not combos:
        raise ValueError(
            "a 'combo' split needs conditions with two or more genes; only singles were given "
            "(use the 'unseen_single' split for single-gene screens)"
        )
    n_test = max(_count(params["test_fraction"], len(combos)), 1)
    test = _sample(combos, n_test, rng)
    return _build(
        "combo", seed, params, perturbations, test, rng, single_label="single", prefer_combos=True
    )


def unseen_single_split(
    conditions: Iterable[str], *, seed: int, test_fraction: float = 0.25, val_fraction: float = 0.1
) -> Split:
    """Hold out ``test_fraction`` of the singles (``unseen_single``) for single-gene screens.

    Combinations containing a held-out gene are test too, as ``combo_seen{k}``.
    """
    rng = _rng(seed)
    params = {
        "test_fraction": _fraction("test_fraction", test_fraction, zero_ok=False, one_ok=False),
        "val_fraction": _fraction("val_fraction", val_fraction, zero_ok=True, one_ok=False),
    }
    perturbations = _perturbations(conditions)
    singles = [name for name, genes in perturbations.items() if len(genes) == 1]
    if len(singles) < 2:
        raise ValueError(
            f"an 'unseen_single' split needs at least 2 single-gene conditions, got {len(singles)}"
        )
    n_test = min(max(_count(params["test_fraction"], len(singles)), 1), len(singles) - 1)
    test_singles = _sample(singles, n_test, rng)
    test_genes = frozenset().union(*(perturbations[name] for name in test_singles))
    combos = [name for name, genes in perturbations.items() if len(genes) > 1]
    test = test_singles + [name for name in combos if perturbations[name] & test_genes]
    return _build(
        "unseen_single", seed, params, perturbations, test, rng, single_label="unseen_single"
    )


def unseen_guide_split(
    conditions: Iterable[str],
    *,
    seed: int,
    guide_map: Mapping[str, str],
    test_fraction: float = 0.25,
    val_fraction: float = 0.1,
) -> Split:
    """Guide level: hold out ``test_fraction`` of each gene's guides (at least one, never all),
    among genes with two or more guides; subgroup ``unseen_guide``. The held-out guides' genes
    stay seen through their other guides. ``guide_map`` is the dataset's guide → gene map
    (:attr:`PerturbationDataset.guide_genes`)."""
    return _guide_split("unseen_guide", conditions, seed, guide_map, test_fraction, val_fraction)


def unseen_guide_gene_split(
    conditions: Iterable[str],
    *,
    seed: int,
    guide_map: Mapping[str, str],
    test_fraction: float = 0.25,
    val_fraction: float = 0.1,
) -> Split:
    """Guide level: hold out every guide of ``test_fraction`` of the genes (subgroup
    ``unseen_guide_gene``): genes never seen through any guide."""
    return _guide_split(
        "unseen_guide_gene", conditions, seed, guide_map, test_fraction, val_fraction
    )


def _guide_split(
    kind: str,
    conditions: Iterable[str],
    seed: int,
    guide_map: Mapping[str, str],
    test_fraction: float,
    val_fraction: float,
) -> Split:
    rng = _rng(seed)
    params = {
        "test_fraction": _fraction("test_fraction", test_fraction, zero_ok=False, one_ok=False),
        "val_fraction": _fraction("val_fraction", val_fraction, zero_ok=True, one_ok=False),
        "guide_map": {str(k): str(v) for k, v in sorted(dict(guide_map).items())},
    }
    perturbations = _perturbations(conditions)
    guides = [name for name, genes in perturbations.items() if len(genes) == 1]
    unmapped = sorted(name for name in guides if name not in params["guide_map"])
    if not params["guide_map"] or unmapped:
        raise ValueError(
            f"a {kind!r} split needs guide-level conditions with a guide → gene map (read the "
            f"data with guide_key=); conditions without a gene: {unmapped[:5] or 'all'}"
        )
    by_gene: dict[str, list[str]] = {}
    for name in guides:
        by_gene.setdefault(params["guide_map"][name], []).append(name)
    if kind == "unseen_guide":
        test = []
        for gene in sorted(by_gene):
            names = sorted(by_gene[gene])
            if len(names) >= 2:
                n_test = min(max(_count(params["test_fraction"], len(names)), 1), len(names) - 1)
                test += _sample(names, n_test, rng)
        label = "unseen_guide"
    else:
        genes = sorted(by_gene)
        n_test = min(max(_count(params["test_fraction"], len(genes)), 1), len(genes) - 1)
        test = sorted(g for gene in _sample(genes, n_test, rng) for g in by_gene[gene])
        label = "unseen_guide_gene"
    if not test:
        raise ValueError(f"a {kind!r} split needs a gene with two or more guides")
    return _build(kind, seed, params, perturbations, test, rng, single_label=label)


def random_split(
    conditions: Iterable[str], *, seed: int, test_fraction: float = 0.2, val_fraction: float = 0.1
) -> Split:
    """Hold out ``test_fraction`` of all perturbation conditions at random.

    Test subgroups: ``single`` for singles, ``combo_seen{k}`` for combinations.
    """
    rng = _rng(seed)
    params = {
        "test_fraction": _fraction("test_fraction", test_fraction, zero_ok=False, one_ok=False),
        "val_fraction": _fraction("val_fraction", val_fraction, zero_ok=True, one_ok=False),
    }
    perturbations = _perturbations(conditions)
    names = list(perturbations)
    n_test = min(max(_count(params["test_fraction"], len(names)), 1), len(names) - 1)
    test = _sample(names, n_test, rng)
    return _build("random", seed, params, perturbations, test, rng, single_label="single")


def cross_cell_line_split(
    other_conditions: Iterable[str],
    target_conditions: Iterable[str],
    *,
    seed: int,
    cell_type_key: str,
    target_line: str,
    lines: Iterable[str] = (),
    test_fraction: float = 0.5,
    val_fraction: float = 0.1,
    kind: str = CROSS_CELL_LINE,
) -> Split:
    """The condition names of a cross-cell-line split (its cells: ``cross_cell_line_task``).

    ``kind`` is ``cross_cell_line`` (subgroup ``cross_line_<target>``) or the generic
    ``cross_context`` (subgroup ``cross_context_<target>``) for any context column.

    ``other_conditions`` are the conditions with cells in the training lines,
    ``target_conditions`` those with cells in ``target_line``. ``test_fraction`` of the target
    line's perturbations (at least one; fewer than all unless ``test_fraction`` is 1) are test,
    subgroup ``cross_line_<target_line>``. ``train`` is control plus every perturbation that keeps
    training cells — all of ``other_conditions`` and the target line's non-test perturbations — so
    a test name is usually in ``train`` too, for the other lines' cells. Validation is
    ``val_fraction`` of the training perturbations that are not test names (at least 1 of 3 or
    more); it leaves ``train`` in every line. ``lines`` (all lines) is recorded in ``params``.
    """
    if kind not in CONTEXT_KINDS:
        raise ValueError(f"kind must be one of {sorted(CONTEXT_KINDS)}, got {kind!r}")
    rng = _rng(seed)
    params = {
        "cell_type_key": str(cell_type_key),
        "target_line": str(target_line),
        "lines": [str(line) for line in lines],
        "test_fraction": _fraction("test_fraction", test_fraction, zero_ok=False, one_ok=True),
        "val_fraction": _fraction("val_fraction", val_fraction, zero_ok=True, one_ok=False),
    }
    # Sorted, so that the split depends on which conditions exist, not on the order of cells.
    other = {n: g for n, g in sorted(_named_genes(other_conditions).items()) if g}
    target = {n: g for n, g in sorted(_named_genes(target_conditions).items()) if g}
    if not target:
        raise ValueError(
            f"cell line {target_line!r} has no perturbation conditions besides control; "
            "choose another target line"
        )
    n_test = max(_count(params["test_fraction"], len(target)), 1)
    if params["test_fraction"] < 1:
        n_test = min(n_test, max(len(target) - 1, 1))
    test = _sample(list(target), n_test, rng)
    held_out = frozenset(test)
    perturbations = dict(sorted({**other, **target}.items()))
    trained = [n for n in perturbations if n in other or n not in held_out]
    if not trained:
        raise ValueError(
            f"a {kind!r} split of {len(target)} target-context perturbation(s) with "
            f"test_fraction={params['test_fraction']} leaves no training perturbation"
        )
    pool = [name for name in trained if name not in held_out]
    val = _carve_validation(pool, perturbations, rng, params["val_fraction"])
    in_val = frozenset(val)
    subgroups = {
        name: "val_single" if len(perturbations[name]) == 1 else "val_combo" for name in val
    }
    subgroups.update({name: f"{_CONTEXT_SUBGROUP[kind]}_{target_line}" for name in test})
    split = Split(
        kind=kind,
        seed=int(seed),
        train=(CONTROL_NAME, *(name for name in trained if name not in in_val)),
        val=tuple(val),
        test=tuple(test),
        subgroups=subgroups,
        params=params,
    )
    logger.info(
        "%s split (seed %d, target %s): %d train, %d val, %d test conditions",
        kind,
        split.seed,
        target_line,
        len(split.train),
        len(split.val),
        len(split.test),
    )
    return split


def _named_genes(conditions: Iterable[str]) -> dict[str, Condition]:
    """Distinct canonical names (control included) mapped to their gene sets."""
    if isinstance(conditions, str):
        raise TypeError(f"conditions must be an iterable of names, not the string {conditions!r}")
    return {name: _canonical_genes(name) for name in dict.fromkeys(conditions)}


SPLITS: dict[str, Callable[..., Split]] = {
    "simulation": simulation_split,
    "combo": combo_split,
    "unseen_single": unseen_single_split,
    "random": random_split,
}
# Kinds that need the dataset's guide → gene map (``guide_map=``) besides condition names.
GUIDE_SPLITS: dict[str, Callable[..., Split]] = {
    "unseen_guide": unseen_guide_split,
    "unseen_guide_gene": unseen_guide_gene_split,
}
GUIDE_KINDS: frozenset[str] = frozenset(GUIDE_SPLITS)


def make_split(kind: str, conditions: Iterable[str], *, seed: int, **params: object) -> Split:
    """Make a split of ``kind`` (a key of :data:`SPLITS` or :data:`GUIDE_SPLITS`, which also take
    ``guide_map=``) with the function's ``params``.

    Context kinds (:data:`CONTEXT_KINDS`) need cells, not names, and raise a ``ValueError`` that
    points to :func:`perturbflow.data.contexts.cross_cell_line_task`.
    """
    if kind in CONTEXT_KINDS:
        raise ValueError(
            f"a {kind!r} split holds out a condition's cells in one cell line, so it is made from "
            "the cells, not from condition names: use "
            "perturbflow.data.contexts.cross_cell_line_task(dataset, seed=...)"
        )
    if kind not in SPLITS and kind not in GUIDE_SPLITS:
        raise ValueError(
            f"unknown split kind {kind!r}; valid kinds: {', '.join(sorted(SPLITS))} "
            f"(and {', '.join(sorted(CONTEXT_KINDS))}, made from cells by "
            f"perturbflow.data.contexts; {', '.join(sorted(GUIDE_SPLITS))} with guide_map=)"
        )
    function = SPLITS.get(kind) or GUIDE_SPLITS[kind]
    accepted = [
        p for p in inspect.signature(function).parameters if p not in ("conditions", "seed")
    ]
    unknown = sorted(set(params) - set(accepted))
    if unknown:
        raise ValueError(
            f"split kind {kind!r} does not take {', '.join(unknown)}; it takes: "
            f"{', '.join(accepted)}"
        )
    return function(conditions, seed=seed, **params)
