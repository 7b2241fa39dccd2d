"""A seeded Perturb-seq simulator with planted gene programs and genetic interactions.

Genes belong to ``n_programs`` ground-truth programs. Programs regulate each other through a
random upper-triangular (acyclic) matrix, so perturbing one gene shifts its program and the
shift propagates downstream. Every perturbation also moves program 0, a
generic response shared by all perturbations, as real screens show (Viñas Torné et al. 2025,
"systematic variation"); ``common_response=0`` turns it off. Counts are negative binomial (gamma–Poisson) around a log-rate
that carries cell-level program activity (co-expression), then normalised to log1p CP10k, as
real data would be. Doubles interact additively, synergistically, by buffering or epistatically.

The ground truth lands in the AnnData: ``var["program"]``, ``var["loading"]``,
``uns["synthetic"]["true_delta"]`` (noise-free mean log-expression change per condition),
``uns["synthetic"]["interactions"]`` (type of every double), ``uns["synthetic"]["responses"]``
(how each perturbation changes the cell distribution: ``shift`` of every cell, ``subpopulation``
— only a ``responder_fraction`` of cells respond — or ``variance`` — program activity fluctuates
``variance_factor`` times more) and the config used. Sub-population and variance responses make
distribution metrics (energy distance) separate a generative model from a mean shift.

Contexts (``n_contexts > 1``): cells come from several contexts (cell lines, stimulation states,
batches), each with its own baseline — every gene's log-rate moves by a context offset drawn
with sd ``context_effect`` — and the same perturbation effects. ``obs["context"]`` names each
cell's context (``ctx0``, ``ctx1``, …). Each perturbed cell's context is an even random draw;
control cells follow ``control_context_fractions`` exactly (default: even random draws too). Uneven control composition is the
confounding of a real two-context screen: a naive delta (perturbed mean minus pooled control
mean) then carries the context difference, the same artefact for every perturbation.
``context_response`` (sd of a log-normal factor per context and gene, first context 1) makes
contexts respond to the same perturbation differently, as cell lines do.
``uns["synthetic"]["true_delta"]`` is the change within a context (the first one's).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

import anndata as ad
import numpy as np
import pandas as pd
import scipy.sparse as sp

from perturbflow.data.conditions import CONTROL_NAME, format_condition

INTERACTION_TYPES = ("additive", "synergistic", "buffering", "epistatic")
RESPONSE_TYPES = ("shift", "subpopulation", "variance")
# How much each interaction type scales the summed program shift of the two singles.
_SYNERGY_FACTOR = 1.8
_BUFFERING_FACTOR = 0.4


@dataclass(frozen=True)
class SyntheticConfig:
    """Size and biology of a simulated screen; defaults run the demo in well under 2 minutes."""

    n_genes: int = 200
    n_programs: int = 8
    n_perturbed: int = 24
    n_unmeasured: int = 2
    n_doubles: int = 40
    n_control_cells: int = 1000
    n_cells_per_condition: int = 100
    library_size: float = 4000.0
    dispersion: float = 8.0
    program_noise: float = 0.25
    direct_effect: float = -1.5
    common_response: float = 0.6
    interaction_mix: tuple[tuple[str, float], ...] = field(
        default=(("additive", 0.4), ("synergistic", 0.2), ("buffering", 0.2), ("epistatic", 0.2))
    )
    response_mix: tuple[tuple[str, float], ...] = field(
        default=(("shift", 0.5), ("subpopulation", 0.25), ("variance", 0.25))
    )
    responder_fraction: float = 0.5
    variance_factor: float = 2.5
    n_contexts: int = 1
    context_effect: float = 0.8
    context_response: float = 0.0
    control_context_fractions: tuple[float, ...] | None = None
    # X and layers["counts"] as CSR, built one condition at a time: a screen of a million cells
    # at a low library size fits in memory. The same seed gives the same values either way.
    sparse: bool = False
    seed: int = 0

    def __post_init__(self) -> None:
        if self.n_contexts < 1:
            raise ValueError(f"n_contexts must be at least 1, got {self.n_contexts}")
        fractions = self.control_context_fractions
        if fractions is not None and (
            len(fractions) != self.n_contexts
            or any(f < 0 for f in fractions)
            or not np.isclose(sum(fractions), 1.0)
        ):
            raise ValueError(
                f"control_context_fractions must be {self.n_contexts} non-negative numbers "
                f"summing to 1 (one per context), got {fractions}"
            )
        if self.n_perturbed > self.n_genes:
            raise ValueError(
                f"n_perturbed ({self.n_perturbed}) cannot exceed n_genes ({self.n_genes})"
            )
        if self.n_programs < 1 or self.n_programs > self.n_genes:
            raise ValueError(f"n_programs must be in [1, n_genes], got {self.n_programs}")
        n_genes_perturbed = self.n_perturbed + self.n_unmeasured
        max_doubles = n_genes_perturbed * (n_genes_perturbed - 1) // 2
        if self.n_doubles > max_doubles:
            raise ValueError(
                f"n_doubles ({self.n_doubles}) exceeds the {max_doubles} possible pairs of "
                f"{n_genes_perturbed} perturbed genes"
            )
        unknown = {name for name, _ in self.interaction_mix} - set(INTERACTION_TYPES)
        if unknown:
            raise ValueError(
                f"interaction_mix has unknown interaction type(s) {sorted(unknown)}; "
                f"choose from {INTERACTION_TYPES}"
            )
        if sum(weight for _, weight in self.interaction_mix) <= 0:
            raise ValueError("interaction_mix weights must sum to a positive number")
        unknown = {name for name, _ in self.response_mix} - set(RESPONSE_TYPES)
        if unknown:
            raise ValueError(
                f"response_mix: unknown response type(s) {sorted(unknown)}; "
                f"choose from {RESPONSE_TYPES}"
            )
        if sum(weight for _, weight in self.response_mix) <= 0:
            raise ValueError("response_mix weights must sum to a positive number")
        if not 0.0 < self.responder_fraction <= 1.0:
            raise ValueError(f"responder_fraction must be in (0, 1], got {self.responder_fraction}")


def simulate(config: SyntheticConfig | None = None, **overrides) -> ad.AnnData:
    """Simulate a Perturb-seq screen (control, singles, doubles) as log-normalised AnnData.

    ``simulate(seed=1, n_genes=100)`` is a shortcut for ``simulate(SyntheticConfig(...))``.
    ``obs["condition"]`` holds canonical names (``ctrl``, ``A``, ``A+B``); raw counts are kept in
    ``layers["counts"]``.
    """
    config = dataclasses.replace(config or SyntheticConfig(), **overrides)
    rng = np.random.default_rng(config.seed)
    genes = [f"G{i:04d}" for i in range(config.n_genes)]

    program = rng.permutation(np.arange(config.n_genes) % config.n_programs)  # (G,)
    loading = rng.uniform(0.6, 1.4, config.n_genes) * rng.choice(
        [1.0, -1.0], config.n_genes, p=[0.8, 0.2]
    )
    base_log_rate = rng.normal(0.0, 1.0, config.n_genes)  # (G,)
    regulation = np.triu(rng.normal(0.0, 0.6, (config.n_programs,) * 2), k=1)
    regulation *= rng.random(regulation.shape) < 0.35  # (K, K) sparse, acyclic
    propagate = np.linalg.inv(np.eye(config.n_programs) - regulation.T)  # (K, K)

    measured_targets = sorted(rng.choice(config.n_genes, config.n_perturbed, replace=False))
    targets = [genes[i] for i in measured_targets] + [
        f"U{i:03d}" for i in range(config.n_unmeasured)
    ]
    target_index = {genes[i]: i for i in measured_targets}
    target_program = {
        gene: int(program[target_index[gene]])
        if gene in target_index
        else int(rng.integers(config.n_programs))
        for gene in targets
    }
    program_shift: dict[str, np.ndarray] = {}
    for gene in targets:
        shock = np.zeros(config.n_programs)
        shock[target_program[gene]] = rng.choice([-1.0, 1.0]) * rng.uniform(0.8, 1.6)
        if rng.random() < 0.3:
            shock[rng.integers(config.n_programs)] += rng.normal(0.0, 0.5)
        # Real screens share a generic response to any perturbation (stress, proliferation).
        shock[0] += config.common_response * rng.uniform(0.5, 1.5)
        program_shift[gene] = propagate @ shock  # (K,)

    # How each perturbation changes the cell distribution beyond its mean shift.
    kinds, kind_weights = zip(*config.response_mix, strict=True)
    kind_probabilities = np.asarray(kind_weights, dtype=float) / np.sum(kind_weights)
    response = {gene: str(rng.choice(kinds, p=kind_probabilities)) for gene in targets}

    types, weights = zip(*config.interaction_mix, strict=True)
    probabilities = np.asarray(weights, dtype=float) / np.sum(weights)
    pairs = _choose_pairs(targets, config.n_doubles, rng)
    interactions = []
    for gene_a, gene_b in pairs:
        kind = str(rng.choice(types, p=probabilities))
        interactions.append((format_condition({gene_a, gene_b}), kind, gene_a, gene_b))
        response[format_condition({gene_a, gene_b})] = response[gene_a]

    # Log-rate shift per condition: program effects through gene loadings + direct target effect.
    shifts: dict[str, np.ndarray] = {CONTROL_NAME: np.zeros(config.n_genes)}
    for gene in targets:
        shifts[gene] = _log_rate_shift(
            program_shift[gene], [gene], program, loading, target_index, config
        )
    for name, kind, gene_a, gene_b in interactions:
        summed = program_shift[gene_a] + program_shift[gene_b]
        combined = {
            "additive": summed,
            "synergistic": _SYNERGY_FACTOR * summed,
            "buffering": _BUFFERING_FACTOR * summed,
            "epistatic": program_shift[gene_a],
        }[kind]
        shifts[name] = _log_rate_shift(
            combined, [gene_a, gene_b], program, loading, target_index, config
        )

    # Contexts draw from their own generator: a one-context screen is the same for every setting.
    context_rng = np.random.default_rng([config.seed, 1])
    context_offset = context_rng.normal(
        0.0, config.context_effect, (config.n_contexts, config.n_genes)
    )
    context_offset[0] = 0.0  # the first context is the reference baseline (true_delta's)
    # How strongly each context expresses each gene's response (1 everywhere by default).
    context_scale = np.ones((config.n_contexts, config.n_genes))
    if config.n_contexts > 1 and config.context_response > 0:
        context_scale = np.exp(
            context_rng.normal(0.0, config.context_response, (config.n_contexts, config.n_genes))
        )
        context_scale[0] = 1.0
    blocks, labels, contexts = [], [], []
    for name, shift in shifts.items():
        n_cells = config.n_control_cells if name == CONTROL_NAME else config.n_cells_per_condition
        kind = response.get(name, "shift")
        fractions = config.control_context_fractions if name == CONTROL_NAME else None
        context = _assign_contexts(n_cells, config.n_contexts, fractions, context_rng)  # (n,)
        block = _sample_counts(
            base_log_rate,
            shift,
            kind,
            n_cells,
            program,
            loading,
            config,
            rng,
            offset=context_offset[context] if config.n_contexts > 1 else None,
            scale=context_scale[context] if config.context_response > 0 else None,
        ).astype(np.float32)  # (n, G)
        blocks.append(sp.csr_matrix(block) if config.sparse else block)
        labels += [name] * n_cells
        contexts.append(context)
    if config.sparse:
        counts = sp.vstack(blocks, format="csr", dtype=np.float32)  # (N, G)
        del blocks
        totals = np.asarray(counts.sum(axis=1), dtype=np.float32)  # (N, 1)
        expression = counts.copy()
        # Zeros stay zero; each stored count is normalised as the dense path does it.
        expression.data = np.log1p(
            expression.data
            / np.repeat(np.maximum(totals.ravel(), 1.0), np.diff(counts.indptr))
            * 1e4
        ).astype(np.float32)
    else:
        counts = np.vstack(blocks)  # (N, G)
        totals = counts.sum(axis=1, keepdims=True)
        expression = np.log1p(counts / np.maximum(totals, 1.0) * 1e4).astype(np.float32)

    obs = pd.DataFrame(
        {"condition": pd.Categorical(labels), "n_counts": totals.ravel()},
        index=[f"cell{i}" for i in range(len(labels))],
    )
    if config.n_contexts > 1:
        obs["context"] = pd.Categorical([f"ctx{c}" for c in np.concatenate(contexts)])
    var = pd.DataFrame(
        {
            "program": program.astype(int),
            "loading": loading,
            "is_target": [gene in target_index for gene in genes],
        },
        index=genes,
    )
    true_delta = {
        name: _responding(response[name], config)
        * (
            _expected_log_expression(base_log_rate + shift)
            - _expected_log_expression(base_log_rate)
        )
        for name, shift in shifts.items()
        if name != CONTROL_NAME
    }
    adata = ad.AnnData(X=expression, obs=obs, var=var, layers={"counts": counts})
    adata.uns["synthetic"] = {
        "config": _config_dict(config),
        "true_delta": pd.DataFrame(true_delta, index=genes).T,
        "interactions": pd.DataFrame(
            interactions, columns=["condition", "interaction", "gene_a", "gene_b"]
        ).set_index("condition"),
        "responses": pd.DataFrame(
            {"response": [response[name] for name in true_delta]}, index=list(true_delta)
        ),
        "unmeasured_targets": [gene for gene in targets if gene not in target_index],
        "context_offset": pd.DataFrame(
            context_offset, index=[f"ctx{c}" for c in range(config.n_contexts)], columns=genes
        ),
        "context_response_scale": pd.DataFrame(
            context_scale, index=[f"ctx{c}" for c in range(config.n_contexts)], columns=genes
        ),
        "program_regulation": regulation,
    }
    adata.uns["perturbflow"] = {"normalization": "log1p_cp10k", "source": "synthetic"}
    return adata


def _choose_pairs(
    targets: list[str], n_pairs: int, rng: np.random.Generator
) -> list[tuple[str, str]]:
    all_pairs = [(a, b) for i, a in enumerate(targets) for b in targets[i + 1 :]]
    chosen = rng.choice(len(all_pairs), n_pairs, replace=False)
    pairs = [all_pairs[i] for i in sorted(chosen)]
    # Which gene dominates an epistatic pair is random, not alphabetical.
    return [pair if rng.random() < 0.5 else pair[::-1] for pair in pairs]


def _log_rate_shift(
    program_shift: np.ndarray,
    perturbed: list[str],
    program: np.ndarray,
    loading: np.ndarray,
    target_index: dict[str, int],
    config: SyntheticConfig,
) -> np.ndarray:
    shift = loading * program_shift[program]  # (G,)
    for gene in perturbed:
        if gene in target_index:
            shift[target_index[gene]] += config.direct_effect
    return shift


def _assign_contexts(
    n_cells: int, n_contexts: int, fractions: tuple[float, ...] | None, rng: np.random.Generator
) -> np.ndarray:
    """Context index of each of ``n_cells`` cells: exact counts from ``fractions`` in random
    order, or, without ``fractions``, an independent even draw per cell (a perturbation's mix
    then varies by chance, as guide-level assignment does in real screens)."""
    if n_contexts == 1:
        return np.zeros(n_cells, dtype=int)
    if fractions is None:  # perturbed cells: each cell's context drawn independently
        return rng.integers(n_contexts, size=n_cells)
    weights = np.asarray(fractions)
    counts = np.floor(weights * n_cells).astype(int)
    counts[np.argsort(-(weights * n_cells - counts))[: n_cells - counts.sum()]] += 1
    return rng.permutation(np.repeat(np.arange(n_contexts), counts))


def _responding(kind: str, config: SyntheticConfig) -> float:
    """Expected fraction of cells that respond (only sub-population responses are partial)."""
    return config.responder_fraction if kind == "subpopulation" else 1.0


def _sample_counts(
    base_log_rate: np.ndarray,
    shift: np.ndarray,
    kind: str,
    n_cells: int,
    program: np.ndarray,
    loading: np.ndarray,
    config: SyntheticConfig,
    rng: np.random.Generator,
    offset: np.ndarray | None = None,
    scale: np.ndarray | None = None,
) -> np.ndarray:
    """Counts of ``n_cells`` cells; ``offset`` ``(n, G)`` moves each cell's baseline and ``scale``
    ``(n, G)`` multiplies its response (both by context)."""
    noise = config.program_noise * (config.variance_factor if kind == "variance" else 1.0)
    activity = rng.normal(0.0, noise, (n_cells, config.n_programs))  # (n, K)
    responds = rng.random((n_cells, 1)) < _responding(kind, config)  # (n, 1)
    response = shift[None, :] if scale is None else shift[None, :] * scale  # (1 or n, G)
    cell_log_rate = (
        base_log_rate[None, :] + responds * response + loading[None, :] * activity[:, program]
    )  # (n, G)
    if offset is not None:
        cell_log_rate = cell_log_rate + offset
    proportions = np.exp(cell_log_rate - cell_log_rate.max(axis=1, keepdims=True))
    proportions /= proportions.sum(axis=1, keepdims=True)
    library = config.library_size * rng.lognormal(0.0, 0.3, (n_cells, 1))  # (n, 1)
    mean = proportions * library  # (n, G)
    rate = rng.gamma(config.dispersion, mean / config.dispersion)  # NB = gamma–Poisson
    return rng.poisson(rate)


def _expected_log_expression(log_rate: np.ndarray) -> np.ndarray:
    proportions = np.exp(log_rate - log_rate.max())
    proportions /= proportions.sum()
    return np.log1p(proportions * 1e4)


def _config_dict(config: SyntheticConfig) -> dict:
    values = dataclasses.asdict(config)
    values["interaction_mix"] = {name: float(weight) for name, weight in config.interaction_mix}
    values["response_mix"] = {name: float(weight) for name, weight in config.response_mix}
    fractions = config.control_context_fractions
    values["control_context_fractions"] = (
        [1.0 / config.n_contexts] * config.n_contexts if fractions is None else list(fractions)
    )
    return values
