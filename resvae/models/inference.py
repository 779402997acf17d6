"""A trained model for notebooks and tools: `resvae.load(...)` returns one (see README).

    m = resvae.load("outputs/smoke/default")          # a run folder, or a .ckpt
    images = m.sample(16, temperature=0.8)            # [16, 3, 32, 32] in [0, 1]
    m.bpd(test_images)                                # bits/dim per image (the negative ELBO's)

Images go in as uint8 [0, 255] or float [0, 1], [B, C, H, W], on any device; everything runs in
eval mode (BatchNorm's running statistics) without gradients, and the model's own mode is
restored afterwards, so the Lightning module it wraps can go on training.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import torch

from resvae.models.likelihoods import bits_per_dim
from resvae.models.objectives import LatentObjective

Temperature = float | Sequence[float]  # one std multiplier, or one per latent group (hierarchical VAE)


class Inference:
    def __init__(
        self, objective: LatentObjective, bpd_is_likelihood: bool, channels_last: bool = False
    ) -> None:
        """objective: the model's maths (weights included); bpd_is_likelihood: whether bits/dim
        is a code length of the data (a VAE under a discrete likelihood)."""
        self.objective = objective
        self.bpd_is_likelihood = bpd_is_likelihood
        self.channels_last = channels_last

    @property
    def device(self) -> torch.device:
        return next(self.objective.parameters()).device

    @property
    def latent_shape(self) -> tuple[int, ...]:
        return self.objective.latent_shape

    @contextmanager
    def _eval(self) -> Iterator[None]:
        was_training = self.objective.training
        self.objective.eval()
        try:
            with torch.no_grad():
                yield
        finally:
            self.objective.train(was_training)

    def to_input(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 [0, 255] or float [0, 1] images -> float [-1, 1] on the model's device."""
        return self.objective.to_input(images.to(self.device), self.channels_last)

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """Images -> the latent that represents them (the posterior mean, or the AE's code)."""
        with self._eval():
            return self.objective.encode_mean(self.to_input(images))

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Latents -> images in [0, 1] (the likelihood's point estimate)."""
        with self._eval():
            return self.objective.decode_images(z.to(self.device))

    def reconstruct(self, images: torch.Tensor) -> torch.Tensor:
        return self.decode(self.encode(images))

    def latent_from_noise(self, eps: torch.Tensor, temperature: Temperature = 1.0) -> torch.Tensor:
        """Standard-normal noise of the latent shape -> a latent (prior std times `temperature`;
        for a hierarchical VAE one number, or one per latent group in top-down order)."""
        return self.objective.latent_from_noise(eps.to(self.device), temperature)

    def sample(
        self, n: int, temperature: Temperature = 1.0, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        """`n` images in [0, 1] decoded from the prior at `temperature` (its std multiplier; 0: the
        prior's mean, the same images every time; per group for a hierarchical VAE)."""
        if n < 1:
            raise ValueError(f"number of samples must be >= 1, got {n}")
        temps = [temperature] if isinstance(temperature, (int, float)) else list(temperature)
        if not temps or not all(t >= 0 for t in temps):
            raise ValueError(f"temperatures must be >= 0, got {temperature}")
        if len(temps) > 1 and not hasattr(self.objective, "num_groups"):
            raise ValueError(f"one temperature per latent group needs a hierarchical VAE, got {temperature}")
        eps = torch.randn((n, *self.latent_shape), generator=generator)
        return self.decode(self.latent_from_noise(eps, temperature))

    def elbo(self, images: torch.Tensor) -> torch.Tensor:
        """The loss per image in nats [B]: the negative ELBO of a VAE (one posterior sample), the
        reconstruction NLL of an AE."""
        with self._eval():
            return self.objective(self.to_input(images)).loss.float()

    def nll_iw(self, images: torch.Tensor, samples: int = 100) -> torch.Tensor:
        """The importance-weighted bound on -log p(x) per image in nats [B], `samples` draws."""
        with self._eval():
            return self.objective.nll_iw(self.to_input(images), samples).float()

    def bpd(self, images: torch.Tensor) -> torch.Tensor:
        """`elbo` in bits per dimension [B]; refused where it is no code length of the data."""
        if not self.bpd_is_likelihood:
            raise ValueError(
                "bits/dim is not a likelihood for this model (an AE, or a likelihood that is not a "
                "discrete one of 8-bit pixels): use elbo() for its loss in nats"
            )
        return bits_per_dim(self.elbo(images), images[0].numel())
