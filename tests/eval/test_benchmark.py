"""Model-name resolution of the benchmark: built-ins by 'all', peers only when named."""

from __future__ import annotations

import pytest

from perturbflow.eval.benchmark import resolve_models
from perturbflow.models import MODELS
from perturbflow.models.peers import PEERS


def test_all_is_every_builtin_model_without_peers():
    names = resolve_models("all")
    assert names == sorted(name for name in MODELS if name not in PEERS)
    assert {"additive", "control_mean", "scbig"} <= set(names)
    assert not set(names) & set(PEERS)


def test_all_can_be_extended_and_duplicates_collapse():
    assert resolve_models("additive, all") == ["additive"] + [
        name for name in resolve_models("all") if name != "additive"
    ]
    assert resolve_models(["ridge", "ridge"]) == ["ridge"]


def test_unknown_and_empty_names_are_rejected():
    with pytest.raises(KeyError, match=r"unknown model\(s\) \['nope'\]"):
        resolve_models("additive,nope")
    with pytest.raises(KeyError, match="unknown model"):
        resolve_models([])


def test_a_missing_peer_names_the_extra(monkeypatch):
    registered = {name: cls for name, cls in MODELS.items() if name not in PEERS}
    monkeypatch.setattr("perturbflow.eval.benchmark.MODELS", registered)
    with pytest.raises(KeyError, match=r"perturbflow\[peers\]"):
        resolve_models("all,gears")
