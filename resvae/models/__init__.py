"""Lightning modules (VAE, AE, HVAE) around the pure-torch objectives, pixel likelihoods and the step."""

from resvae.models.ae import AE
from resvae.models.base import LatentModel, NonFiniteTrainingError, StepOptions
from resvae.models.hvae import HVAE
from resvae.models.keras2018 import Keras2018VAE
from resvae.models.likelihoods import make_likelihood
from resvae.models.objectives import AEObjective, LatentObjective, VAEObjective
from resvae.models.vae import VAE

MODELS = {
    "VAE": VAE,
    "AE": AE,
    "Keras2018VAE": Keras2018VAE,
    "HVAE": HVAE,
}  # checkpoints name their class; loading looks it up here

__all__ = [
    "AE",
    "MODELS",
    "VAE",
    "HVAE",
    "AEObjective",
    "Keras2018VAE",
    "LatentModel",
    "LatentObjective",
    "NonFiniteTrainingError",
    "StepOptions",
    "VAEObjective",
    "make_likelihood",
]
