"""The per-batch evaluation: its reconstruction is the posterior mean's (the AE's code) decoded,
for every model kind, whether or not the forward's own latent stands in for a second encoder pass."""

from __future__ import annotations

import pytest
import torch

from resvae.models import AE
from resvae.models.hvae import HVAE
from resvae.models.keras2018 import Keras2018VAE
from resvae.nn import ArchConfig, Keras2018Config
from resvae.nn.hvae import HVAEArchConfig
from tests.helpers.models import python_bound_vae

MODELS = {
    "vae": python_bound_vae,
    "ae": lambda: AE(arch=ArchConfig(depth=28, width=2, latent_dim=4, image_size=8), n_mix=2),
    "keras2018": lambda: Keras2018VAE(arch=Keras2018Config(width=2, head_units=16, latent_dim=4)),
    "hvae": lambda: HVAE(
        arch=HVAEArchConfig(depth=28, width=8, latent_dim=2, groups=(1, 1, 1, 1), image_size=8),
        likelihood="gaussian",
    ),
}
ENCODER_PASSES = {"vae": 1, "keras2018": 1, "ae": 2, "hvae": 2}  # forward's, and encode_mean's


@pytest.mark.parametrize("kind", list(MODELS))
def test_the_reconstruction_is_the_decoded_posterior_mean(kind: str) -> None:
    torch.manual_seed(0)
    model = MODELS[kind]().eval()
    size = model.arch.image_size
    x = torch.rand(3, 3, size, size) * 2 - 1
    objective, calls = model.objective, []
    encode = objective.net.encode
    objective.net.encode = lambda images: calls.append(1) or encode(images)
    with torch.no_grad():
        torch.manual_seed(1)
        values, reconstruction, mu, _ = objective.evaluate(x)
        passes = len(calls)
        expected = objective.decode_images(objective.encode_mean(x))
    torch.testing.assert_close(reconstruction, expected, rtol=1e-5, atol=1e-6)
    assert values.shape == (3, len(objective.metric_names))
    assert passes == ENCODER_PASSES[kind]
    assert (mu is None) == (kind == "ae")
