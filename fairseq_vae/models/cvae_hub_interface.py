"""bart_cvae from Python: sources (and targets) in, targets out.

>>> from fairseq_vae.models.bart_cvae import BARTCVAEModel
>>> cvae = BARTCVAEModel.from_pretrained("checkpoints/pairs", "checkpoint_best.pt", "data-bin/p")
>>> cvae.sample(["a man rides a horse ."], n=5, seed=1)  # 5 targets, from 5 draws of p(z|c)
>>> cvae.sample(["a man rides a horse ."], mean=True, beam=5)  # the prior's mean, beam search
>>> cvae.sample(["a man rides a horse ."], n=5, prior="checkpoints/pairs/prior-gmm.pt")
>>> cvae.reconstruct(["a man rides a horse ."], ["a person on a horse ."])  # q(z|c, x)'s mean
>>> cvae.transfer(["positive"], ["the soup was great ."], ["negative"])  # z of (c, x), under c'

The draws of ``sample(n=..., seed=...)`` are those of ``fairseq-generate --latent-source prior
--latent-samples n --seed``: the k-th latent of the i-th source is fixed by the seed and i; with
``prior`` (a fitted prior of the standardised latent, fairseq-vae-fit-prior), those of
``--prior-file`` too.
"""

from typing import List, Optional, Sequence, Tuple, Union

import torch
from torch import Tensor

from ..latent_space.prior import Prior
from .hub_interface import BARTVAEHubInterface
from .latent import latent_draws


class BARTCVAEHubInterface(BARTVAEHubInterface):
    """The sentence VAE's hub (tokens, batching, fairseq's search) with a source beside z."""

    @torch.no_grad()
    def source_means(self, rows: List[Tensor]) -> Tensor:
        """The masked mean of the encoder's states of each token row: N x C, fp32."""
        dim = self.model.encoder.embed_tokens.embedding_dim
        means = [torch.empty(0, dim, device=self.device)]
        for start in range(0, len(rows), self.batch_size):
            batch = self.batch(rows[start : start + self.batch_size])
            means.append(self.model.encoder.sentence_mean(*batch))
        return torch.cat(means)

    def prior(self, sources: Sequence[str]) -> Tuple[Tensor, Tensor]:
        """p(z|c) of each source: (mu, logvar), each N x latent, fp32."""
        return self.model.encoder.prior(self.source_means(self.tokens_of(list(sources))))

    @torch.no_grad()
    def encode(self, sources: Sequence[str], targets: Sequence[str]) -> Tuple[Tensor, Tensor]:
        """q(z|c, x) of each (source, target) pair: (mu, logvar), each N x latent, fp32."""
        sources, targets = list(sources), list(targets)
        if len(sources) != len(targets):
            raise ValueError(f"{len(sources)} sources but {len(targets)} targets: give pairs")
        means = self.source_means(self.tokens_of(sources))
        target_rows = self.tokens_of(targets)
        mus, logvars = [], []
        for start in range(0, len(target_rows), self.batch_size):
            end = start + self.batch_size
            mu, logvar = self.model.encoder.conditional_posterior(
                means[start:end], *self.batch(target_rows[start:end])
            )
            mus.append(mu)
            logvars.append(logvar)
        empty = torch.empty(0, self.latent_dim, device=self.device)
        return torch.cat([empty, *mus]), torch.cat([empty, *logvars])

    def decode_under(self, z: Tensor, sources: Sequence[str], **generation_options) -> List[str]:
        """The best target decoded from each latent (N x latent) beside its source (N)."""
        rows = self.tokens_of(list(sources))
        hypotheses = self.decode_hypotheses(z, sources=rows, **generation_options)
        return [self.to_text(h[0]["tokens"]) for h in hypotheses]

    def sample(
        self,
        sources: Sequence[str],
        n: int = 1,
        seed: Optional[int] = None,
        mean: bool = False,
        prior: Union[Prior, str, None] = None,
        **generation_options,
    ) -> List[List[str]]:
        """n targets for each source, each decoded from its own z ~ p(z|c) (``mean``: the
        prior's mean, once); ``seed`` fixes the draws as fairseq-generate's --seed does.
        ``prior``: a fitted prior of the standardised latent (or its file's path): z =
        mu_p(c) + sigma_p(c) * eps with eps drawn from it instead of N(0, I)."""
        sources = list(sources)
        if n < 1:
            raise ValueError(f"n must be at least 1, got {n}")
        if isinstance(prior, str):
            prior = self.load_prior(prior)
        elif prior is not None:
            self.check_prior(prior)
        mu, logvar = self.prior(sources)
        if mean:
            return [[text] for text in self.decode_under(mu, sources, **generation_options)]
        if seed is not None:
            eps = latent_draws(seed, list(range(len(sources))), n, self.latent_dim, prior)
        elif prior is not None:
            eps = prior.sample(len(sources) * n).float()
        else:
            eps = torch.randn(len(sources) * n, self.latent_dim)
        sigma = torch.exp(0.5 * logvar)
        z = mu.repeat_interleave(n, 0) + sigma.repeat_interleave(n, 0) * eps.to(mu)
        repeated = [s for s in sources for _ in range(n)]
        texts = self.decode_under(z, repeated, seed=seed, **generation_options)
        return [texts[i * n : (i + 1) * n] for i in range(len(sources))]

    def reconstruct(
        self, sources: Sequence[str], targets: Sequence[str], **generation_options
    ) -> List[str]:
        """Each target decoded from q(z|c, x)'s mean beside its source."""
        mu, _ = self.encode(sources, targets)
        return self.decode_under(mu, sources, **generation_options)

    def transfer(
        self,
        sources: Sequence[str],
        targets: Sequence[str],
        new_sources: Sequence[str],
        **generation_options,
    ) -> List[str]:
        """z of each (source, target) pair, q(z|c, x)'s mean, decoded under another source
        c' (a label written as text swapped for another, say)."""
        mu, _ = self.encode(sources, targets)
        new_sources = list(new_sources)
        if len(new_sources) != len(mu):
            raise ValueError(f"{len(mu)} pairs but {len(new_sources)} new sources")
        return self.decode_under(mu, new_sources, **generation_options)

    def latent(self, *args, **kwargs):
        raise NotImplementedError(
            "bart_cvae's z depends on a source: encode(sources, targets) or prior(sources)"
        )

    interpolate = directions = analogy = latent
