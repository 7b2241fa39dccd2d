"""Condition encoder: order-free sets, prior vectors for unseen genes, no silent zero vectors."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from perturbflow.models.condition_encoder import (
    ConditionEncoder,
    ConditionEncoderConfig,
    UnknownGeneError,
)


def _prior(genes=("A", "B", "C", "D"), dim=6, seed=0):
    rng = np.random.default_rng(seed)
    return pd.DataFrame(rng.normal(size=(len(genes), dim)), index=list(genes))


def _encoder(**config):
    torch.manual_seed(0)
    return ConditionEncoder(
        _prior(), seen_genes=["A", "B", "X"], config=ConditionEncoderConfig(**config)
    )


def test_order_of_genes_does_not_matter():
    encoder = _encoder()
    ab, ba = encoder.encode(["A+B", "B+A"])
    assert torch.equal(ab, ba)
    # Pooling itself is order-free, not only the tokenizer's sorting: feed reversed indices.
    indices, mask = encoder.tokenize(["A+B"])
    reversed_out = encoder(indices.flip(-1), mask.flip(-1))
    assert torch.allclose(reversed_out, encoder(indices, mask), atol=1e-6)


def test_output_shape_and_distinct_conditions():
    encoder = _encoder(output_dim=16)
    out = encoder.encode(["A", "B", "A+B", "C", "X"])
    assert out.shape == (5, 16)
    assert not torch.allclose(out[0], out[1])
    assert not torch.allclose(out[2], out[0] + out[1])  # pooled through a nonlinear MLP


def test_unseen_gene_uses_its_prior_vector():
    encoder = _encoder()
    c, d = encoder.encode(["C", "D"])
    assert not torch.allclose(c, d)  # different priors → different embeddings
    # The learned residual only exists for seen genes: C's vector is its prior projection.
    index = torch.tensor([encoder.index["C"]])
    expected = encoder.prior_projection(encoder.prior[index])
    assert torch.allclose(encoder.gene_features(index), expected)


def test_seen_gene_without_prior_is_learned():
    encoder = _encoder()
    assert encoder.covered("X")
    x = encoder.encode(["X"])
    assert torch.isfinite(x).all()


def test_unknown_gene_raises_naming_it():
    encoder = _encoder()
    with pytest.raises(UnknownGeneError, match="'Z'") as error:
        encoder.encode(["A+Z"])
    assert "prior" in str(error.value)


def test_unknown_gene_mean_fallback_when_asked():
    encoder = _encoder(missing="mean")
    z, a = encoder.encode(["Z", "A"])
    assert torch.isfinite(z).all() and not torch.allclose(z, a)
    seen = torch.tensor([encoder.index[g] for g in ("A", "B", "X")])
    mean_vector = encoder.gene_features(seen).mean(dim=0)
    assert torch.allclose(encoder.gene_features(torch.tensor([-1])), mean_vector[None])


def test_the_mean_fallback_warns_once_per_gene(caplog):
    encoder = _encoder(missing="mean")
    with caplog.at_level("WARNING", logger="perturbflow.models.condition_encoder"):
        encoder.encode(["Z", "A+Z"])
        encoder.encode(["Z+Y"])
    warnings = [r.getMessage() for r in caplog.records]
    assert len(warnings) == 2
    assert "['Z']" in warnings[0] and "mean vector" in warnings[0]
    assert "['Y']" in warnings[1]  # Z is not named again


def test_invalid_missing_option():
    with pytest.raises(ValueError, match="missing"):
        ConditionEncoderConfig(missing="zero")


def test_gradients_reach_learned_and_prior_projection():
    encoder = _encoder()
    encoder.encode(["A+C"]).sum().backward()
    assert encoder.learned.weight.grad[encoder.index["A"]].abs().sum() > 0
    assert encoder.learned.weight.grad[encoder.index["C"]].abs().sum() == 0  # C is unseen
    assert encoder.prior_projection.weight.grad.abs().sum() > 0


def test_hidden_gene_is_encoded_like_an_unseen_gene():
    encoder = _encoder()
    # Hiding A drops its learned residual: A then looks like a gene known only from its prior.
    index = torch.tensor([[encoder.index["A"]]])
    prior_only = encoder(
        index, torch.ones_like(index, dtype=torch.bool), torch.zeros_like(index, dtype=torch.bool)
    )
    hidden = encoder.encode(["A"], hidden=[frozenset({"A"})])
    assert torch.allclose(hidden, prior_only)
    assert not torch.allclose(hidden, encoder.encode(["A"]))
    # X has no prior: hidden, it becomes the mean-of-seen-genes token.
    x_hidden = encoder.encode(["X"], hidden=[frozenset({"X"})])
    mean_token = encoder(torch.tensor([[-1]]), torch.tensor([[True]]))
    assert torch.allclose(x_hidden, mean_token)
