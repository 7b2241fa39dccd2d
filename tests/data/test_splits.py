"""Tests for perturbflow.data.splits: determinism, disjointness, GEARS subgroups, JSON files."""

from __future__ import annotations

import itertools
import json
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from perturbflow.data.conditions import format_condition, parse_condition
from perturbflow.data.splits import (
    SPLITS,
    Split,
    SplitFormatError,
    SplitLeakageError,
    check_no_leakage,
    make_split,
    simulation_split,
)

GENES = [f"G{i:02d}" for i in range(12)]
ALL_DOUBLES = [format_condition(pair) for pair in itertools.combinations(GENES, 2)]
DOUBLES = random.Random(0).sample(ALL_DOUBLES, 20)
CONDITIONS = ["ctrl", *GENES, *DOUBLES]
KINDS = sorted(SPLITS)


def train_single_genes(split: Split) -> set[str]:
    """Genes whose single is in train, counted independently of the module under test."""
    return {name for name in split.train if len(parse_condition(name)) == 1}


def assert_valid(split: Split, conditions: list[str]) -> None:
    parts = [set(split.train), set(split.val), set(split.test)]
    assert sum(len(p) for p in parts) == len(set().union(*parts)), "parts overlap"
    assert set().union(*parts) == set(conditions) | {"ctrl"}, "parts do not cover the conditions"
    assert "ctrl" in split.train
    assert set(split.subgroups) == parts[1] | parts[2]
    check_no_leakage(split)


# --- determinism -------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
def test_same_seed_same_split_whatever_the_input_order(kind: str) -> None:
    shuffled = random.Random(1).sample(CONDITIONS, len(CONDITIONS))
    repeated = CONDITIONS + CONDITIONS  # e.g. a per-cell obs column
    first = make_split(kind, CONDITIONS, seed=3)
    assert make_split(kind, shuffled, seed=3) == first
    assert make_split(kind, repeated, seed=3) == first
    assert make_split(kind, [c for c in CONDITIONS if c != "ctrl"], seed=3) == first


@pytest.mark.parametrize("kind", KINDS)
def test_different_seeds_give_different_splits(kind: str) -> None:
    splits = {make_split(kind, CONDITIONS, seed=seed).test for seed in range(5)}
    assert len(splits) > 1


@pytest.mark.parametrize("kind", KINDS)
def test_parts_are_disjoint_cover_everything_and_keep_ctrl_in_train(kind: str) -> None:
    split = make_split(kind, CONDITIONS, seed=0)
    assert_valid(split, CONDITIONS)
    assert split.kind == kind and split.seed == 0
    assert split.val, "validation should not be empty for 32 perturbations"


# --- subgroup definitions ----------------------------------------------------------------------


@pytest.mark.parametrize("seed", range(5))
def test_simulation_subgroups_follow_gears_definitions(seed: int) -> None:
    split = simulation_split(CONDITIONS, seed=seed)
    seen = train_single_genes(split)
    for name, group in split.subgroups.items():
        genes = parse_condition(name)
        if name in split.val:
            assert group == ("val_single" if len(genes) == 1 else "val_combo")
        elif len(genes) == 1:
            assert group == "unseen_single"
        else:
            assert group == f"combo_seen{len(genes & seen)}"
    assert set(split.test_subgroups()) <= {"unseen_single", *(f"combo_seen{k}" for k in range(3))}


@pytest.mark.parametrize("seed", range(5))
def test_simulation_unseen_genes_never_appear_in_train(seed: int) -> None:
    split = simulation_split(CONDITIONS, seed=seed)
    unseen = set().union(*(parse_condition(n) for n in split.test_subgroups()["unseen_single"]))
    train_genes = set().union(*(parse_condition(n) for n in split.train))
    assert unseen and not unseen & train_genes
    # 0.75 of 12 single genes are seen; validation may take some of their singles away.
    assert len(train_single_genes(split) | unseen) <= 12


def test_simulation_records_its_parameters() -> None:
    split = simulation_split(CONDITIONS, seed=1, train_gene_fraction=0.5)
    assert split.params == {
        "train_gene_fraction": 0.5,
        "combo_seen2_train_fraction": 0.75,
        "val_fraction": 0.1,
    }
    assert len(split.test_subgroups()["unseen_single"]) == 6


@pytest.mark.parametrize("kind", KINDS)
def test_test_combos_count_seen_genes_against_train_singles(kind: str) -> None:
    split = make_split(kind, CONDITIONS, seed=2)
    seen = train_single_genes(split)
    for name in split.test:
        genes = parse_condition(name)
        if len(genes) > 1:
            assert split.subgroups[name] == f"combo_seen{len(genes & seen)}"


def test_combo_split_keeps_singles_in_train_and_validates_on_combos() -> None:
    split = make_split("combo", CONDITIONS, seed=0)
    assert set(GENES) <= set(split.train)
    assert len(split.test) == 10
    assert set(split.test_subgroups()) == {"combo_seen2"}
    assert {split.subgroups[name] for name in split.val} == {"val_combo"}


def test_unseen_single_split_sends_combos_of_test_genes_to_test() -> None:
    split = make_split("unseen_single", CONDITIONS, seed=0)
    held_out = set().union(*(parse_condition(n) for n in split.test_subgroups()["unseen_single"]))
    for name in DOUBLES:
        assert (name in split.test) == bool(parse_condition(name) & held_out)


def test_random_split_labels_singles_and_combos() -> None:
    split = make_split("random", CONDITIONS, seed=0, test_fraction=0.5)
    assert set(split.test_subgroups()) <= {"single", "combo_seen0", "combo_seen1", "combo_seen2"}


# --- errors ------------------------------------------------------------------------------------


def test_unknown_kind_lists_valid_kinds() -> None:
    with pytest.raises(ValueError, match="combo, random, simulation, unseen_single"):
        make_split("gears", CONDITIONS, seed=0)


def test_unknown_parameter_lists_accepted_ones() -> None:
    with pytest.raises(ValueError, match="train_gene_fraction"):
        make_split("combo", CONDITIONS, seed=0, train_gene_fraction=0.5)


@pytest.mark.parametrize(
    ("kind", "conditions", "message"),
    [
        ("combo", ["ctrl", *GENES], "two or more genes"),
        ("random", ["ctrl", "G00"], "at least 2 perturbation"),
        ("unseen_single", ["G00", *DOUBLES], "at least 2 single"),
        ("simulation", DOUBLES, "single-gene"),
    ],
)
def test_impossible_splits_raise_clear_errors(kind: str, conditions: list, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        make_split(kind, conditions, seed=0)


def test_non_canonical_input_is_rejected() -> None:
    with pytest.raises(ValueError, match="'G01\\+G00' is not a canonical name"):
        make_split("random", [*GENES, "G01+G00"], seed=0)


def test_bad_fraction_is_rejected() -> None:
    with pytest.raises(ValueError, match="test_fraction"):
        make_split("random", CONDITIONS, seed=0, test_fraction=1.5)


def test_leakage_in_any_gene_order_is_caught() -> None:
    with pytest.raises(SplitLeakageError, match="'B\\+A'"):
        Split("custom", 0, ("ctrl", "A+B"), (), ("B+A",), {"B+A": "combo_seen0"})


def test_test_condition_in_val_is_leakage() -> None:
    with pytest.raises(SplitLeakageError, match="also in val"):
        Split("custom", 0, ("ctrl", "A"), ("B",), ("B",), {"B": "x"})


def test_split_constructor_validates() -> None:
    with pytest.raises(ValueError, match="must be in train"):
        Split("custom", 0, ("A",), (), ("B",), {"B": "x"})
    with pytest.raises(ValueError, match="never be in test"):
        Split("custom", 0, ("ctrl", "A"), (), ("ctrl", "B"), {"B": "x"})
    with pytest.raises(ValueError, match="not a canonical name"):
        Split("custom", 0, ("ctrl", "B+A"), (), ("C",), {"C": "x"})
    with pytest.raises(ValueError, match="without subgroup"):
        Split("custom", 0, ("ctrl", "A"), (), ("B",), {})


# --- files -------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
def test_json_round_trip(kind: str, tmp_path) -> None:
    split = make_split(kind, CONDITIONS, seed=4)
    assert Split.from_dict(json.loads(json.dumps(split.to_dict()))) == split
    path = split.save(tmp_path / "sub" / "split.json")
    loaded = Split.load(path)
    assert loaded == split
    assert loaded.subgroups == split.subgroups and loaded.params == split.params
    assert [p.name for p in path.parent.iterdir()] == ["split.json"], "temporary file left behind"


def test_save_refuses_to_overwrite(tmp_path) -> None:
    path = tmp_path / "split.json"
    make_split("random", CONDITIONS, seed=0).save(path)
    original = path.read_text()
    with pytest.raises(FileExistsError, match="overwrite=True"):
        make_split("random", CONDITIONS, seed=1).save(path)
    assert path.read_text() == original
    make_split("random", CONDITIONS, seed=1).save(path, overwrite=True)
    assert Split.load(path).seed == 1


def test_load_errors_name_the_file(tmp_path) -> None:
    missing = tmp_path / "absent.json"
    with pytest.raises(FileNotFoundError, match="absent.json"):
        Split.load(missing)
    broken = tmp_path / "broken.json"
    broken.write_text("{not json")
    with pytest.raises(SplitFormatError, match="broken.json.*not valid JSON"):
        Split.load(broken)
    data = make_split("random", CONDITIONS, seed=0).to_dict()
    del data["test"]
    partial = tmp_path / "partial.json"
    partial.write_text(json.dumps(data))
    with pytest.raises(SplitFormatError, match="partial.json.*missing key.*test"):
        Split.load(partial)
    data = make_split("random", CONDITIONS, seed=0).to_dict() | {"seed": "zero"}
    typed = tmp_path / "typed.json"
    typed.write_text(json.dumps(data))
    with pytest.raises(SplitFormatError, match="typed.json.*'seed' must be an integer"):
        Split.load(typed)


def test_summary_counts_every_condition() -> None:
    split = make_split("simulation", CONDITIONS, seed=0)
    table = split.summary()
    assert list(table.columns) == ["part", "subgroup", "n_conditions"]
    totals = table.groupby("part")["n_conditions"].sum()
    assert totals.to_dict() == {p: len(split.conditions(p)) for p in ("test", "train", "val")}
    assert table["n_conditions"].sum() == len(CONDITIONS)


# --- property ----------------------------------------------------------------------------------

singles_strategy = st.sets(st.sampled_from(GENES), max_size=len(GENES))
combos_strategy = st.sets(st.sampled_from(ALL_DOUBLES), max_size=30)


@settings(max_examples=60, deadline=None)
@given(
    singles=singles_strategy,
    combos=combos_strategy,
    kind=st.sampled_from(KINDS),
    seed=st.integers(0, 2**16),
)
def test_every_split_is_disjoint_and_leak_free(
    singles: set[str], combos: set[str], kind: str, seed: int
) -> None:
    conditions = sorted(singles | combos)
    try:
        split = make_split(kind, conditions, seed=seed)
    except ValueError as err:
        assert "split" in str(err)  # only the documented "cannot make a split" errors
        return
    assert_valid(split, conditions)
    assert split.test
