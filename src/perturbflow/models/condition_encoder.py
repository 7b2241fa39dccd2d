"""Permutation-invariant encoder of a condition (a set of perturbed genes) → one vector.

Each gene's vector is a projection of a *prior* embedding (a table covering genes never perturbed
in training: data-derived, GO, text, …) plus a learned residual for genes seen perturbed in
training. A set is pooled DeepSets-style (sum of per-gene features, then an MLP), so ``A+B`` and
``B+A`` give identical embeddings by construction. A gene with neither a prior vector nor a learned
one raises :class:`UnknownGeneError` instead of silently becoming a zero vector.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch
from torch import nn

from perturbflow.data.conditions import parse_condition

logger = logging.getLogger(__name__)


class UnknownGeneError(KeyError):
    """A perturbed gene has no embedding in any source."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


@dataclass(frozen=True)
class ConditionEncoderConfig:
    """``embedding_dim``: per-gene feature size; ``output_dim``: condition embedding size."""

    embedding_dim: int = 128
    output_dim: int = 256
    hidden_dim: int = 256
    missing: str = "error"

    def __post_init__(self) -> None:
        if self.missing not in ("error", "mean"):
            raise ValueError(f"missing must be 'error' or 'mean', got {self.missing!r}")


class ConditionEncoder(nn.Module):
    """Encode sets of genes; genes index a vocabulary = prior-table genes ∪ seen genes.

    Parameters
    ----------
    prior
        ``(genes, d)`` DataFrame of prior gene embeddings (may be empty of columns: ``d = 0``).
    seen_genes
        Genes perturbed in training: they get a learned residual vector.
    """

    def __init__(
        self,
        prior: pd.DataFrame,
        seen_genes: Iterable[str],
        config: ConditionEncoderConfig | None = None,
    ) -> None:
        super().__init__()
        self.config = config or ConditionEncoderConfig()
        self._warned: set[str] = set()  # genes already named in a missing-vector warning
        seen = sorted(set(seen_genes))
        vocabulary = list(dict.fromkeys([*map(str, prior.index), *seen]))
        self.vocabulary = vocabulary
        self.index = {gene: i for i, gene in enumerate(vocabulary)}
        prior_matrix = np.zeros((len(vocabulary) + 1, prior.shape[1]), dtype=np.float32)
        prior_matrix[: len(prior)] = prior.to_numpy(dtype=np.float32)
        has_prior = np.zeros(len(vocabulary) + 1, dtype=bool)
        has_prior[: len(prior)] = True
        is_seen = np.zeros(len(vocabulary) + 1, dtype=bool)
        is_seen[[self.index[gene] for gene in seen]] = True
        # Row len(vocabulary) is padding: zero prior, never learned, masked out of the pool.
        self.register_buffer("prior", torch.from_numpy(prior_matrix))  # (V+1, d)
        self.register_buffer("is_seen", torch.from_numpy(is_seen))  # (V+1,)
        self.register_buffer("has_prior", torch.from_numpy(has_prior))  # (V+1,)
        self.padding_index = len(vocabulary)
        d, e = prior.shape[1], self.config.embedding_dim
        self.prior_projection = nn.Linear(d, e) if d > 0 else None
        self.learned = nn.Embedding(len(vocabulary) + 1, e)
        nn.init.normal_(self.learned.weight, std=0.1)
        self.phi = nn.Sequential(nn.Linear(e, self.config.hidden_dim), nn.SiLU())
        self.rho = nn.Sequential(
            nn.Linear(self.config.hidden_dim, self.config.hidden_dim),
            nn.SiLU(),
            nn.Linear(self.config.hidden_dim, self.config.output_dim),
        )

    def covered(self, gene: str) -> bool:
        """Whether ``gene`` has a prior vector or a learned one."""
        i = self.index.get(gene)
        return i is not None and bool(self.has_prior[i] or self.is_seen[i])

    def tokenize(self, conditions: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """Canonical condition names → padded gene indices ``(B, L)`` and a mask ``(B, L)``."""
        gene_sets = [sorted(parse_condition(name)) for name in conditions]
        missing = sorted({g for genes in gene_sets for g in genes if not self.covered(g)})
        if missing and self.config.missing == "error":
            raise UnknownGeneError(
                f"no embedding for perturbed gene(s) {missing}: they were never perturbed in "
                "training and are absent from the prior embedding; supply a prior table that "
                "covers them (or set missing='mean' to use the mean embedding, with a warning)"
            )
        unwarned = [gene for gene in missing if gene not in self._warned]
        if unwarned:
            self._warned.update(unwarned)
            logger.warning(
                "no vector for perturbed gene(s) %s: never perturbed in training and absent from "
                "the prior embedding; using the mean vector of the seen genes (missing='error' "
                "refuses instead)",
                unwarned,
            )
        length = max([len(genes) for genes in gene_sets] + [1])
        indices = torch.full((len(gene_sets), length), self.padding_index, dtype=torch.long)
        mask = torch.zeros((len(gene_sets), length), dtype=torch.bool)
        for row, genes in enumerate(gene_sets):
            for column, gene in enumerate(genes):
                if self.covered(gene):
                    indices[row, column] = self.index[gene]
                    mask[row, column] = True
                else:  # missing='mean': an explicit mean-of-seen-genes token
                    indices[row, column] = -1
                    mask[row, column] = True
        return indices, mask

    def gene_features(
        self, indices: torch.Tensor, use_learned: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Per-gene vectors ``(..., e)``; index -1 means 'the mean of the seen genes'.

        ``use_learned`` (same shape as ``indices``, bool) can switch off the learned residual of
        individual entries, which then look exactly like a gene never perturbed in training.
        """
        mean_token = indices < 0
        safe = indices.clamp(min=0)  # (B, L)
        learned = self.is_seen[safe]  # (B, L)
        if use_learned is not None:
            learned = learned & use_learned
        vectors = self.learned(safe) * learned.unsqueeze(-1)  # (B, L, e)
        if self.prior_projection is not None:
            vectors = vectors + self.prior_projection(self.prior[safe]) * self.has_prior[
                safe
            ].unsqueeze(-1)
        if mean_token.any():
            seen = self.is_seen.nonzero().squeeze(-1)  # (S,)
            mean_vector = self.gene_features(seen).mean(dim=0)  # (e,)
            vectors = torch.where(mean_token.unsqueeze(-1), mean_vector, vectors)
        return vectors

    def forward(
        self, indices: torch.Tensor, mask: torch.Tensor, use_learned: torch.Tensor | None = None
    ) -> torch.Tensor:
        features = self.phi(self.gene_features(indices, use_learned))  # (B, L, h)
        pooled = (features * mask.unsqueeze(-1)).sum(dim=1)  # (B, h): order-free sum
        return self.rho(pooled)  # (B, output_dim)

    def encode(
        self, conditions: Sequence[str], hidden: Sequence[frozenset[str]] | None = None
    ) -> torch.Tensor:
        """Condition names → embeddings ``(B, output_dim)``.

        ``hidden[i]`` names genes of condition ``i`` to encode *as if never perturbed in
        training* (prior vector only, or the mean token without one) — training uses it to
        teach the flow the unseen-gene case.
        """
        indices, mask = self.tokenize(conditions)
        use_learned = None
        if hidden is not None:
            use_learned = torch.ones_like(mask)
            for row, (name, genes) in enumerate(zip(conditions, hidden, strict=True)):
                for column, gene in enumerate(sorted(parse_condition(name))):
                    if gene in genes:
                        use_learned[row, column] = False
                        if not bool(self.has_prior[indices[row, column].clamp(min=0)]):
                            indices[row, column] = -1
            use_learned = use_learned.to(self.learned.weight.device)
        device = self.learned.weight.device
        return self(indices.to(device), mask.to(device), use_learned)
