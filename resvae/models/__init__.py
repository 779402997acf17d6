"""Lightning modules (VAE, AE), pixel likelihoods and the on-device training guards."""

from resvae.models.ae import AE
from resvae.models.base import LatentModel, NonFiniteTrainingError
from resvae.models.likelihoods import make_likelihood
from resvae.models.vae import VAE

__all__ = ["AE", "VAE", "LatentModel", "NonFiniteTrainingError", "make_likelihood"]
