"""scBIG's two training objectives: stage 1 the autoencoder, stage 2 the latent flow.

Each is an ``nn.Module`` holding the networks it trains and drawing its own batches from the step
number (:func:`~perturbflow.train.step_generator`); :func:`~perturbflow.train.fit_objective` runs
it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn

from perturbflow.models.alignment import cluster_correlation_loss, pathway_ot_loss
from perturbflow.models.condition_encoder import ConditionEncoder
from perturbflow.models.flow import flow_matching_loss, integrate, ot_pair, random_pair
from perturbflow.train import step_generator


class AutoencoderObjective(nn.Module):
    """Stage 1: MSE reconstruction of control + training cells; validation on val cells."""

    def __init__(
        self,
        autoencoder: nn.Module,
        train_cells: torch.Tensor,
        val_cells: torch.Tensor | None,
        *,
        batch_size: int,
        seed: int,
    ) -> None:
        super().__init__()
        self.autoencoder = autoencoder
        self.train_cells = train_cells  # (N, G)
        self.val_cells = val_cells  # (N_val, G) or None
        self.batch_size = min(batch_size, len(train_cells))
        self.seed = seed
        self.steps_per_epoch = math.ceil(len(train_cells) / self.batch_size)

    def trainable(self) -> nn.Module:
        return self.autoencoder

    def training_loss(self, step, epoch, batch_index, rank, device, log) -> torch.Tensor:
        # One permutation per epoch, cut into batches.
        order = torch.randperm(
            len(self.train_cells), generator=step_generator(self.seed, epoch, 0, 1)
        )  # (N,)
        index = order[batch_index * self.batch_size : (batch_index + 1) * self.batch_size]
        cells = self.train_cells[index].to(device)  # (B, G)
        recon, _ = self.autoencoder(cells)  # (B, G)
        loss = torch.mean((recon - cells) ** 2)
        log("train_loss", loss, len(index))
        return loss

    def validation_loss(self, device) -> torch.Tensor:
        cells = self.val_cells.to(device)  # (N_val, G)
        recon, _ = self.autoencoder(cells)
        return torch.mean((recon - cells) ** 2)


class FlowObjective(nn.Module):
    """Stage 2: conditional flow matching from (shifted) control latents to each condition's.

    ``source_latent[c]`` holds latent codes of control cells already shifted by condition ``c``'s
    additive prior (or unshifted when the prior is off); ``target_latent[c]`` those of its real
    cells. Each step draws ``conditions_per_batch`` training conditions and
    ``cells_per_condition`` source and target cells for each, pairs them *within* the condition
    by exact OT (or randomly), and regresses the velocity. Every ``align_every`` steps the
    alignment losses are added on cells decoded from a differentiable ODE rollout. Validation
    integrates the sources of every validation condition and scores the predicted mean
    expression (start + decoded change, as prediction does) against the real mean (MSE).
    """

    def __init__(
        self,
        velocity: nn.Module,
        encoder: ConditionEncoder,
        decoder: nn.Module,
        source_latent: Sequence[torch.Tensor],
        target_latent: Sequence[torch.Tensor],
        target_cells: Sequence[torch.Tensor],
        conditions: Sequence[str],
        membership: torch.Tensor,
        hidden_views: Sequence[Sequence[tuple[frozenset[str], torch.Tensor]]],
        val_conditions: Sequence[str],
        val_source_latent: Sequence[torch.Tensor],
        val_start_means: torch.Tensor | None,
        val_means: torch.Tensor | None,
        *,
        conditions_per_batch: int,
        cells_per_condition: int,
        ot_pairing: bool,
        sigma: float,
        unseen_rate: float,
        alignment: bool,
        align_every: int,
        cluster_corr_weight: float,
        pathway_ot_weight: float,
        align_ode_steps: int,
        steps_per_epoch: int,
        seed: int,
        pathway_membership: torch.Tensor | None = None,
    ) -> None:
        super().__init__()
        self.velocity = velocity
        self.encoder = encoder
        self.decoder = decoder  # frozen autoencoder (decode only)
        for parameter in self.decoder.parameters():
            parameter.requires_grad_(False)
        self.source_latent = list(source_latent)  # per condition (n_src, L)
        self.target_latent = list(target_latent)  # per condition (n_c, L)
        self.target_cells = list(target_cells)  # per condition (n_c, G)
        self.conditions = list(conditions)
        self.membership = membership  # (K, G)
        # Pathways of the Sinkhorn loss: gene sets when given, else the programs.
        self.pathway_membership = (
            pathway_membership if pathway_membership is not None else membership
        )
        # hidden_views[c]: (genes treated as unseen, source latents shifted accordingly)
        self.hidden_views = [list(views) for views in hidden_views]
        self.unseen_rate = unseen_rate
        self.val_conditions = list(val_conditions)
        self.val_source_latent = list(val_source_latent)  # per val condition (n_src, L)
        self.val_start_means = val_start_means  # (V, G) mean of the shifted control cells
        self.val_means = val_means  # (V, G) real mean expression
        self.conditions_per_batch = min(conditions_per_batch, len(self.conditions))
        self.cells_per_condition = cells_per_condition
        self.ot_pairing = ot_pairing
        self.sigma = sigma
        self.alignment = alignment and (cluster_corr_weight > 0 or pathway_ot_weight > 0)
        self.align_every = align_every
        self.cluster_corr_weight = cluster_corr_weight
        self.pathway_ot_weight = pathway_ot_weight
        self.align_ode_steps = align_ode_steps
        self.steps_per_epoch = steps_per_epoch
        self.seed = seed

    def trainable(self) -> nn.ModuleDict:
        return nn.ModuleDict({"velocity": self.velocity, "encoder": self.encoder})

    def _batch(self, generator: torch.Generator):
        chosen = torch.randperm(len(self.conditions), generator=generator)[
            : self.conditions_per_batch
        ]  # (C,)
        x0, x1, labels, hidden = [], [], [], []
        m = self.cells_per_condition
        for c in chosen.tolist():
            # Sometimes present a condition as if some of its genes were never perturbed in
            # training, so the flow also learns the unseen-gene case it meets at test time.
            hide, sources = frozenset(), self.source_latent[c]
            views = self.hidden_views[c]
            if views and float(torch.rand((), generator=generator)) < self.unseen_rate:
                hide, sources = views[int(torch.randint(len(views), (), generator=generator))]
            hidden.append(hide)
            source = torch.randint(len(sources), (m,), generator=generator)  # (m,)
            target = torch.randint(len(self.target_latent[c]), (m,), generator=generator)  # (m,)
            pair = (ot_pair if self.ot_pairing else random_pair)(
                sources[source],
                self.target_latent[c][target],
                target_labels=(target,),
                generator=generator,
            )
            x0.append(pair.x0)
            x1.append(pair.x1)
            labels += [c] * m
        return chosen, hidden, torch.cat(x0), torch.cat(x1), torch.tensor(labels)

    def training_loss(self, step, epoch, batch_index, rank, device, log) -> torch.Tensor:
        generator = step_generator(self.seed, step, rank, 2)
        chosen, hidden, x0, x1, labels = self._batch(generator)  # (B, L), (B, L), (B,)
        x0, x1 = x0.to(device), x1.to(device)
        names = [self.conditions[c] for c in chosen.tolist()]
        embedding = self.encoder.encode(names, hidden=hidden)  # (C, E)
        position = {c: i for i, c in enumerate(chosen.tolist())}
        per_sample = embedding[torch.tensor([position[c] for c in labels.tolist()])]  # (B, E)
        loss = flow_matching_loss(
            self.velocity, x0, x1, per_sample, sigma=self.sigma, generator=generator
        )
        log("flow_loss", loss, len(x0))
        if self.alignment and step % self.align_every == 0:
            align = self._alignment_loss(x0, embedding[0], chosen[0].item(), generator)
            log("align_loss", align, self.cells_per_condition)
            loss = loss + align
        return loss

    def _alignment_loss(
        self, x0: torch.Tensor, embedding: torch.Tensor, condition: int, generator: torch.Generator
    ) -> torch.Tensor:
        device = x0.device
        m = self.cells_per_condition
        source = x0[:m]  # (m, L): the first condition's source latents
        condition_batch = embedding.expand(m, -1)  # (m, E)
        latent = integrate(
            self.velocity, source, condition_batch, n_steps=self.align_ode_steps, method="euler"
        )  # (m, L)
        predicted = self.decoder.decode(latent)  # (m, G)
        cells = self.target_cells[condition]
        real = cells[torch.randint(len(cells), (m,), generator=generator)].to(device)
        membership = self.membership.to(device)
        loss = predicted.new_zeros(())
        if self.cluster_corr_weight > 0:
            loss = loss + self.cluster_corr_weight * cluster_correlation_loss(
                predicted, real, membership
            )
        if self.pathway_ot_weight > 0:
            pathways = self.pathway_membership.to(device)  # (P, G)
            loss = loss + self.pathway_ot_weight * pathway_ot_loss(predicted, real, pathways)
        return loss

    def validation_loss(self, device) -> torch.Tensor:
        embeddings = self.encoder.encode(self.val_conditions)  # (V, E)
        errors = []
        for i, source in enumerate(self.val_source_latent):
            source = source.to(device)  # (n, L)
            latent = integrate(
                self.velocity,
                source,
                embeddings[i].expand(len(source), -1),
                n_steps=10,
                method="midpoint",
            )  # (n, L)
            change = self.decoder.decode(latent).mean(dim=0) - self.decoder.decode(source).mean(
                dim=0
            )  # (G,)
            predicted = self.val_start_means[i].to(device) + change  # (G,)
            errors.append(torch.mean((predicted - self.val_means[i].to(device)) ** 2))
        return torch.stack(errors).mean()
