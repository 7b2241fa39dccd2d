"""Condition labels: how "A+B", "B+A", "A+ctrl" and friends are parsed, and what is rejected."""

from __future__ import annotations

import string

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from perturbflow.data.conditions import (
    CONTROL,
    DEFAULT_CONTROL_LABELS,
    ConditionError,
    ConditionParser,
    canonical,
    format_condition,
    genes_of,
    n_genes,
    parse_condition,
)

# --- reference cases -------------------------------------------------------------------------


def test_combination_is_unordered():
    assert parse_condition("A+B") == parse_condition("B+A") == frozenset({"A", "B"})


@pytest.mark.parametrize("label", ["A+ctrl", "ctrl+A", "A+control", "non-targeting+A"])
def test_control_inside_a_combination_is_dropped(label):
    assert parse_condition(label) == frozenset({"A"})


@pytest.mark.parametrize(
    "label", ["ctrl", "control", "non-targeting", "non_targeting", "CTRL", "Control", " ctrl "]
)
def test_control_labels_parse_to_the_empty_set(label):
    assert parse_condition(label) == CONTROL == frozenset()


def test_scperturb_underscore_separator():
    parser = ConditionParser(separator="_")
    assert parser.parse("A_B") == parser.parse("B_A") == frozenset({"A", "B"})
    assert parser.parse("control") == CONTROL
    assert canonical("B_A", parser) == "A+B"


def test_plus_is_not_a_gene_character_with_underscore_separator():
    with pytest.raises(ConditionError, match=r"contains '\+'"):
        ConditionParser(separator="_").parse("A+B")


def test_custom_control_labels_replace_the_defaults():
    parser = ConditionParser(control_labels=("NTC", "safe-targeting"))
    assert parser.parse("ntc") == CONTROL
    assert parser.parse("safe-targeting+A") == frozenset({"A"})
    # "ctrl" is no longer a control label, so it is a gene symbol like any other.
    assert parser.parse("ctrl") == frozenset({"ctrl"})


def test_whitespace_around_genes_is_ignored():
    assert parse_condition(" A + B ") == frozenset({"A", "B"})
    assert parse_condition("\tA\n") == frozenset({"A"})


def test_gene_symbols_keep_their_case():
    assert parse_condition("Cd4+CD8A") == frozenset({"Cd4", "CD8A"})


# --- rejected labels: ConditionError names the problem ------------------------------------------


@pytest.mark.parametrize(
    ("label", "problem"),
    [
        ("", "empty"),
        ("   ", "empty"),
        ("A++B", "empty gene between separators"),
        ("+A", "empty gene between separators"),
        ("A+", "empty gene between separators"),
        ("A+A", "same gene twice"),
        ("A + a + A", "same gene twice"),
        ("A B", r"gene 'A B' contains ' '"),
        ("A,B", r"contains ','"),
        (None, "must be a string, got NoneType"),
        (3.0, "must be a string, got float"),
    ],
)
def test_bad_labels_are_rejected_with_a_message_naming_the_problem(label, problem):
    with pytest.raises(ConditionError, match=problem):
        parse_condition(label)


def test_condition_error_is_a_value_error():
    # Callers that only know the standard library can still catch it.
    assert issubclass(ConditionError, ValueError)


def test_error_names_the_offending_label():
    with pytest.raises(ConditionError, match=r"'KRAS\+\+TP53'"):
        parse_condition("KRAS++TP53")


@pytest.mark.parametrize(
    ("kwargs", "problem"),
    [
        ({"separator": ""}, "separator must be a non-blank string"),
        ({"separator": " "}, "separator must be a non-blank string"),
        ({"control_labels": ()}, "at least one control label"),
        ({"control_labels": ("ctrl", " ")}, "empty label"),
    ],
)
def test_bad_parser_settings_are_rejected(kwargs, problem):
    with pytest.raises(ConditionError, match=problem):
        ConditionParser(**kwargs)


# --- canonical names ------------------------------------------------------------------------


def test_format_condition_spells_control_ctrl():
    assert format_condition(frozenset()) == "ctrl"
    assert format_condition([]) == "ctrl"


def test_format_condition_sorts_genes():
    assert format_condition({"TP53", "KRAS", "B2M"}) == "B2M+KRAS+TP53"


@pytest.mark.parametrize(
    ("label", "name"),
    [("B+A", "A+B"), ("A+ctrl", "A"), ("control", "ctrl"), ("NON-TARGETING", "ctrl")],
)
def test_canonical_name_of_a_label(label, name):
    assert canonical(label) == name


def test_gene_counts_and_gene_union_of_canonical_names():
    assert n_genes("ctrl") == 0
    assert n_genes("A") == 1
    assert n_genes("A+B") == 2
    assert genes_of(["ctrl", "A", "A+B", "C"]) == {"A", "B", "C"}


def test_parse_many_parses_each_distinct_label_once():
    parsed = ConditionParser().parse_many(["A+B", "ctrl", "B+A", "A+B"])
    assert parsed == {"A+B": {"A", "B"}, "ctrl": CONTROL, "B+A": {"A", "B"}}


# --- properties ---------------------------------------------------------------------------------

_CONTROL_LOWER = {label.lower() for label in DEFAULT_CONTROL_LABELS}
gene_symbols = st.text(
    alphabet=string.ascii_letters + string.digits + "-.",
    min_size=1,
    max_size=8,
).filter(lambda gene: gene.lower() not in _CONTROL_LOWER)
gene_sets = st.frozensets(gene_symbols, min_size=0, max_size=5)


@settings(max_examples=200, deadline=None)
@given(gene_sets)
def test_round_trip_parse_of_format_is_identity(genes):
    assert parse_condition(format_condition(genes)) == genes


@settings(max_examples=100, deadline=None)
@given(st.frozensets(gene_symbols, min_size=1, max_size=5), st.randoms(use_true_random=False))
def test_order_of_genes_does_not_matter(genes, rng):
    ordered = list(genes)
    rng.shuffle(ordered)
    assert parse_condition("+".join(ordered)) == genes
    assert canonical(" + ".join(ordered)) == format_condition(genes)


@settings(max_examples=100, deadline=None)
@given(gene_sets)
def test_canonical_is_idempotent(genes):
    name = canonical("+".join(sorted(genes, reverse=True)) or "control")
    assert canonical(name) == name


@settings(max_examples=100, deadline=None)
@given(
    st.lists(gene_symbols, min_size=1, max_size=4, unique=True),
    st.data(),
)
def test_a_label_with_an_empty_token_is_always_rejected(genes, data):
    tokens = list(genes)
    empty_at = data.draw(st.integers(min_value=0, max_value=len(tokens)), label="empty_at")
    tokens.insert(empty_at, data.draw(st.sampled_from(["", " ", "  "]), label="blank"))
    with pytest.raises(ConditionError, match="empty gene between separators"):
        parse_condition("+".join(tokens))
