"""The only place where condition strings are parsed.

A *condition* is a ``frozenset`` of perturbed gene symbols. Control is the empty set, ``A+B`` and
``B+A`` are the same condition and ``A+ctrl`` (GEARS spelling) is ``A``. Every other module receives
conditions either as frozensets or as their *canonical name* (:func:`format_condition`): genes
sorted and joined by ``+``, control spelled ``ctrl``.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass

Condition = frozenset[str]

CONTROL: Condition = frozenset()
CONTROL_NAME = "ctrl"
CANONICAL_SEPARATOR = "+"
DEFAULT_CONTROL_LABELS: tuple[str, ...] = ("ctrl", "control", "non-targeting", "non_targeting")

# Characters that may never appear inside a gene symbol: separators we know and whitespace.
_FORBIDDEN_IN_GENE = re.compile(r"[\s+,;|/]")


class ConditionError(ValueError):
    """A condition string cannot be parsed into a set of gene symbols."""


@dataclass(frozen=True)
class ConditionParser:
    """Parse condition labels written in GEARS, scPerturb or perturbflow spelling.

    Parameters
    ----------
    separator
        String separating genes in a combination: ``"+"`` (GEARS, perturbflow) or e.g. ``"_"``
        (scPerturb). Whitespace around genes is ignored.
    control_labels
        Labels meaning "no perturbation", compared case-insensitively. A control label inside a
        combination (``A+ctrl``) is dropped.
    """

    separator: str = CANONICAL_SEPARATOR
    control_labels: tuple[str, ...] = DEFAULT_CONTROL_LABELS

    def __post_init__(self) -> None:
        if not self.separator or self.separator.isspace():
            raise ConditionError(f"separator must be a non-blank string, got {self.separator!r}")
        if not self.control_labels:
            raise ConditionError("control_labels must name at least one control label")
        labels = tuple(str(label).strip() for label in self.control_labels)
        if any(not label for label in labels):
            raise ConditionError(f"control_labels contains an empty label: {self.control_labels!r}")
        object.__setattr__(self, "control_labels", labels)

    @property
    def _control_lower(self) -> frozenset[str]:
        return frozenset(label.lower() for label in self.control_labels)

    def is_control_label(self, token: str) -> bool:
        return token.strip().lower() in self._control_lower

    def parse(self, label: object) -> Condition:
        """Parse one label into a frozenset of gene symbols (empty for control)."""
        if not isinstance(label, str):
            raise ConditionError(
                f"condition label must be a string, got {type(label).__name__} {label!r}; "
                "empty or missing labels are not allowed"
            )
        text = label.strip()
        if not text:
            raise ConditionError("condition label is empty; label control cells explicitly")
        if self.is_control_label(text):
            return CONTROL
        tokens = [token.strip() for token in text.split(self.separator)]
        if any(not token for token in tokens):
            raise ConditionError(
                f"condition {text!r} has an empty gene between separators {self.separator!r}"
            )
        genes: list[str] = []
        for token in tokens:
            if self.is_control_label(token):
                continue
            bad = _FORBIDDEN_IN_GENE.search(token)
            if bad:
                raise ConditionError(
                    f"condition {text!r}: gene {token!r} contains {bad.group()!r}; "
                    f"genes are separated by {self.separator!r}"
                )
            genes.append(token)
        if len(set(genes)) != len(genes):
            raise ConditionError(f"condition {text!r} names the same gene twice")
        return frozenset(genes)

    def parse_many(self, labels: Iterable[object]) -> dict[object, Condition]:
        """Parse distinct labels; the error names the first label that fails."""
        return {label: self.parse(label) for label in dict.fromkeys(labels)}


def parse_condition(label: object, parser: ConditionParser | None = None) -> Condition:
    """Parse ``label`` with ``parser`` (default: ``+`` separator, usual control labels)."""
    return (parser or ConditionParser()).parse(label)


def format_condition(condition: Iterable[str]) -> str:
    """Canonical name of a condition: sorted genes joined by ``+``; control is ``ctrl``."""
    genes = sorted(condition)
    return CANONICAL_SEPARATOR.join(genes) if genes else CONTROL_NAME


def canonical(label: object, parser: ConditionParser | None = None) -> str:
    """Canonical name of any label, e.g. ``canonical("B+A") == "A+B"``."""
    return format_condition(parse_condition(label, parser))


def n_genes(condition_name: str) -> int:
    """Number of perturbed genes in a canonical condition name (0 for control)."""
    return len(parse_condition(condition_name))


def genes_of(condition_names: Iterable[str]) -> set[str]:
    """All genes named by a collection of canonical condition names."""
    genes: set[str] = set()
    for name in condition_names:
        genes |= parse_condition(name)
    return genes
