"""Fit models on a split, predict its held-out conditions and evaluate them — one seed at a time.

The same loop serves the demo and user benchmarks; no model is special-cased.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass

import pandas as pd

from perturbflow.data.io import PerturbationDataset
from perturbflow.data.splits import Split
from perturbflow.eval.de import de_genes
from perturbflow.eval.evaluate import evaluate, noise_ceiling
from perturbflow.models.base import MODELS, get_model, make_config, model_class

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class RunResult:
    """Long-format metrics of every model plus the noise ceiling, and fit/predict timings."""

    results: pd.DataFrame
    timings: pd.DataFrame


def resolve_models(models: str | Sequence[str]) -> list[str]:
    """Validated model names from a comma list or sequence; ``all`` → every built-in model.

    Peers from other packages (``gears``) are slow and need their extra, so ``all`` leaves them
    out; name them next to it (``all,gears``) to run them in the same benchmark.
    """
    from perturbflow.models.peers import PEERS

    tokens = [m.strip() for m in models.split(",")] if isinstance(models, str) else list(models)
    builtin = sorted(name for name in MODELS if name not in PEERS)
    names = [name for token in tokens for name in (builtin if token == "all" else [token])]
    not_installed = [name for name in names if name in PEERS and name not in MODELS]
    if not_installed:
        raise KeyError(
            f"peer model(s) {not_installed} are not installed; pip install 'perturbflow[peers]'"
        )
    unknown = [name for name in names if not _known(name)]
    if unknown or not names:
        raise KeyError(
            f"unknown model(s) {unknown}; registered models: {', '.join(sorted(MODELS))} "
            "(or 'all' for every built-in model)"
        )
    return list(dict.fromkeys(names))


def _known(name: str) -> bool:
    try:
        make_config(name, {})
    except (KeyError, ValueError):
        return False
    return True


def seeded_config(name: str, seed: int, options: dict | None = None):
    """Model ``name``'s config from ``options`` (e.g. parsed YAML) with its ``seed`` set.

    Returns ``None`` for a model without a config class (and without options).
    """
    config_class = getattr(model_class(name), "config_class", None)
    values = dict(options or {})
    if config_class is not None and "seed" in {f.name for f in dataclasses.fields(config_class)}:
        values.setdefault("seed", seed)
    return make_config(name, values)


def run_models(
    dataset: PerturbationDataset,
    split: Split,
    models: str | Sequence[str] = "all",
    *,
    seed: int = 0,
    n_cells: int = 100,
    with_noise_ceiling: bool = True,
    progress=None,
) -> RunResult:
    """Fit each model on ``split.train``, predict ``split.test``, evaluate; add the noise ceiling.

    ``progress`` is an optional callable ``progress(description)`` called before each step (the CLI
    passes a rich progress bar's updater); the library itself never prints.
    """
    names = resolve_models(models)
    test = list(split.test)
    de = de_genes(dataset, test)
    frames, timings = [], []
    for name in names:
        if progress is not None:
            progress(f"fitting {name}")
        start = time.perf_counter()
        model = get_model(name, seeded_config(name, seed)).fit(dataset, split)
        fitted = time.perf_counter()
        predictions = model.predict(test, n_cells=n_cells, seed=seed)
        predicted = time.perf_counter()
        frames.append(evaluate(predictions, dataset, split, model=name, seed=seed, de=de))
        timings.append(
            {"model": name, "seed": seed, "fit_s": fitted - start, "predict_s": predicted - fitted}
        )
        logger.info("%s: fit %.2fs, predict %.2fs", name, fitted - start, predicted - fitted)
    if with_noise_ceiling:
        if progress is not None:
            progress("noise ceiling")
        frames.append(noise_ceiling(dataset, split, seed=seed, de=de))
    return RunResult(results=pd.concat(frames, ignore_index=True), timings=pd.DataFrame(timings))
