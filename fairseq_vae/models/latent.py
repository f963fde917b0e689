"""The Gaussian latent's reparameterised sample, below both the model and its hub interface.

``bart_vae`` imports ``hub_interface`` (``from_pretrained`` returns one), so what both need lives
here and the dependency stays one-way.
"""

import torch
from torch import Tensor


def reparameterize(mu: Tensor, logvar: Tensor) -> Tensor:
    """z = mu + sigma * eps, eps ~ N(0, I)."""
    return mu + torch.exp(0.5 * logvar) * torch.randn_like(mu)
