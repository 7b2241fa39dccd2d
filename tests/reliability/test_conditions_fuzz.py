"""Hypothesis fuzzing of the one condition parser: any input is a condition or a ConditionError."""

from __future__ import annotations

from hypothesis import example, given
from hypothesis import strategies as st

from perturbflow.data.conditions import (
    ConditionError,
    ConditionParser,
    canonical,
    format_condition,
    parse_condition,
)

GENE = st.from_regex(r"[A-Za-z0-9][A-Za-z0-9\-\.]{0,7}", fullmatch=True).filter(
    lambda g: g.lower() not in {"ctrl", "control", "non-targeting", "non_targeting"}
)
GENES = st.sets(GENE, min_size=1, max_size=4)


@given(st.text(max_size=30))
@example("\r0+0")  # errors name the label as parsed, without its surrounding whitespace
@example("\r0+;")
def test_any_text_is_a_condition_or_a_condition_error(label):
    try:
        condition = parse_condition(label)
    except ConditionError as error:
        assert repr(label.strip()) in str(error) or "empty" in str(error)
        return
    assert isinstance(condition, frozenset)
    assert all(gene and gene == gene.strip() and "+" not in gene for gene in condition)


@given(st.one_of(st.none(), st.integers(), st.floats(), st.binary(), st.lists(st.text())))
def test_non_string_labels_are_a_condition_error(label):
    try:
        parse_condition(label)
    except ConditionError as error:
        assert "must be a string" in str(error)
    else:
        raise AssertionError(f"{label!r} was accepted")


@given(st.text(max_size=30))
def test_canonical_name_is_a_fixed_point(label):
    try:
        name = canonical(label)
    except ConditionError:
        return
    assert canonical(name) == name
    assert parse_condition(name) == parse_condition(label)


@given(GENES, st.randoms(use_true_random=False), st.sampled_from(["+", " + ", "+ "]))
def test_order_spacing_and_control_do_not_change_a_condition(genes, random, separator):
    ordered = sorted(genes)
    random.shuffle(ordered)
    label = separator.join([*ordered, "ctrl"])
    assert parse_condition(label) == frozenset(genes)
    assert canonical(label) == "+".join(sorted(genes))
    assert parse_condition(format_condition(genes)) == frozenset(genes)


@given(st.sampled_from(["ctrl", "CTRL", " Control ", "non-targeting", "NON_TARGETING"]))
def test_control_labels_in_any_case_are_control(label):
    assert parse_condition(label) == frozenset()
    assert canonical(label) == "ctrl"


@given(GENES.filter(lambda genes: not any("_" in g for g in genes)))
def test_a_scperturb_separator_parses_the_same_conditions(genes):
    scperturb = ConditionParser(separator="_")
    assert scperturb.parse("_".join(sorted(genes))) == parse_condition("+".join(sorted(genes)))


@given(GENE, st.sampled_from(["{0}+{0}", "{0}++", "+{0}", "{0}+ +B"]))
def test_repeated_or_empty_genes_are_refused_by_name(gene, template):
    label = template.format(gene)
    try:
        parse_condition(label)
    except ConditionError as error:
        assert repr(label) in str(error)
    else:
        raise AssertionError(f"{label!r} was accepted")
