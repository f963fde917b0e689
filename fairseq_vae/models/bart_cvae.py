"""BART as a conditional VAE (``--arch bart_cvae``): a source c in, a target x out, and a latent
z that decides which of the targets c allows (Sohn et al. 2015; Zhao et al. 2017).

The BART encoder reads c; the decoder cross-attends to the memory built from z (its slot or
slots) placed beside c's states, so z adds to the source and never replaces it. Two diagonal
Gaussians come from masked means of encoder states:

* the prior p(z|c) from mean(enc(c)) (``prior_mu``, ``prior_logvar`` heads), or N(0, I) with
  ``--cvae-prior standard``;
* the posterior q(z|c, x) from [mean(enc(c)); mean(enc(x))]: the same encoder reads the target
  too (``mlp_mu``, ``mlp_logvar``, on twice the width).

Training needs the target in ``net_input`` (``tgt_tokens``, ``tgt_lengths``: the text_vae task
puts them there for paired data); generation decodes z from the posterior when the target is
given, and from the prior otherwise (``--latent-source prior``). The ELBO criterion's KL is
KL(q(z|c, x) || p(z|c)) in closed form (``gaussian_kl`` with the prior's parameters).

A prior fitted after training (``fairseq-vae-fit-prior``) is, for bart_cvae, a density r of the
standardised latent eps = (z - mu_p(c)) / sigma_p(c): q(z|c, x) seen through p(z|c)
(``standardised``). It keeps the source's say and reshapes the noise: z = mu_p(c) + sigma_p(c)
* eps with eps ~ r, and log p'(z|c) = log r(eps) - sum log sigma_p(c)
(``standardised_log_density``). With r = N(0, I) it is p(z|c) itself.
"""

from typing import Dict, List, Optional

import torch
from fairseq.models import register_model, register_model_architecture
from fairseq.models.transformer import TransformerEncoder
from torch import Tensor

from .bart_vae import (
    BARTVAEModel,
    VAEEncoder,
    bart_vae_architecture,
    bart_vae_large_architecture,
    bart_vae_small_architecture,
)
from .cvae_hub_interface import BARTCVAEHubInterface
from .latent import (
    LOGVAR_MAX,
    LOGVAR_MIN,
    bag_of_words_head,
    gaussian_head,
    masked_mean,
    reparameterize,
    worker_generator,
)

CVAE_PRIORS = ("conditional", "standard")
# what the encoder-out dict carries of the latent, each B x latent (reordered with the beam)
CVAE_LATENT_KEYS = ("mu", "logvar", "z", "prior_mu", "prior_logvar", "source_mean")


def sample_from(mu: Tensor, logvar: Tensor, eps: Optional[Tensor]) -> Tensor:
    """z = mu + sigma * eps with the given draws, or reparameterised from this worker's noise."""
    if eps is None:
        return reparameterize(mu, logvar, generator=worker_generator(mu.device))
    return mu + torch.exp(0.5 * logvar) * eps.to(mu)


def standardised(mu: Tensor, logvar: Tensor, prior_mu: Tensor, prior_logvar: Tensor):
    """(mu, logvar) of eps = (z - prior_mu) / prior_sigma for z ~ N(mu, exp(logvar)): a
    Gaussian again, its mean shifted and scaled and its variance divided by the prior's."""
    return (mu - prior_mu) * torch.exp(-0.5 * prior_logvar), logvar - prior_logvar


def standardised_log_density(log_density, z: Tensor, prior_mu: Tensor, prior_logvar: Tensor):
    """log p'(z|c) for a density ``log_density`` of eps = (z - mu_p) / sigma_p (... x D -> ...),
    by the change of variables: log r(eps) - sum(logvar_p) / 2. ``prior_mu`` and
    ``prior_logvar`` broadcast against z (B x 1 x D for B x n x D samples)."""
    eps = (z - prior_mu) * torch.exp(-0.5 * prior_logvar)
    return log_density(eps) - 0.5 * prior_logvar.sum(dim=-1).to(z.dtype)


class CVAEEncoder(VAEEncoder):
    """BART's encoder over the source, the prior p(z|c), the posterior q(z|c, x) and the memory
    [z's slots; source states].

    ``latent_source``: ``sample`` (training: z ~ q(z|c, x)), ``mean`` (the posterior mean),
    ``prior`` (z ~ p(z|c)) or ``prior-mean`` (the prior's mean). A ``z`` given to ``forward``
    is decoded as it is, beside the source.
    """

    latent_keys = CVAE_LATENT_KEYS
    conditional = True

    def __init__(self, args, dictionary, embed_tokens):
        super().__init__(args, dictionary, embed_tokens)
        dim = args.encoder_embed_dim
        # the posterior reads the source's and the target's means side by side
        self.mlp_mu = gaussian_head(2 * dim, self.latent_dim)
        self.mlp_logvar = gaussian_head(2 * dim, self.latent_dim)
        self.cvae_prior = args.cvae_prior
        if self.cvae_prior == "conditional":
            self.prior_mu = gaussian_head(dim, self.latent_dim)
            self.prior_logvar = gaussian_head(dim, self.latent_dim)
        if self.latent_bow is not None:
            # Zhao et al.: the target's words predicted from z and the source
            self.latent_bow = bag_of_words_head(args, self.latent_dim + dim, len(dictionary))

    def sentence_mean(self, tokens: Tensor, lengths: Optional[Tensor]) -> Tensor:
        """The masked mean of the encoder's states over a batch of sentences: B x C, fp32."""
        out = TransformerEncoder.forward(self, tokens, lengths)
        mask = out["encoder_padding_mask"][0] if out["encoder_padding_mask"] else None
        return masked_mean(out["encoder_out"][0], mask)

    def source_context(self, src_tokens: Tensor, src_lengths: Optional[Tensor] = None):
        """(states T x B x C, padding mask B x T or None, masked mean B x C in fp32)."""
        source = TransformerEncoder.forward(self, src_tokens, src_lengths)
        mask = source["encoder_padding_mask"][0] if source["encoder_padding_mask"] else None
        states = source["encoder_out"][0]
        return states, mask, masked_mean(states, mask)

    def encoder_out_for(self, states: Tensor, mask: Optional[Tensor], source_mean: Tensor):
        """A function of (mu, logvar, z) for B * n rows, sentence b's at b*n .. b*n+n-1, that
        gives the decoder's encoder-out dict with each source repeated n times: what the
        importance-weighted estimator decodes its samples with (estimators'
        ``encoder_out_of``)."""

        def encoder_out(mu: Tensor, logvar: Tensor, z: Tensor):
            n = z.size(0) // states.size(1)
            mean = source_mean.repeat_interleave(n, dim=0)
            prior_mu, prior_logvar = self.prior(mean)
            latent = {"mu": mu, "logvar": logvar, "z": z.float(), "prior_mu": prior_mu,
                      "prior_logvar": prior_logvar, "source_mean": mean}  # fmt: skip
            rows_mask = None if mask is None else mask.repeat_interleave(n, dim=0)
            return self.conditional_encoder_out(
                states.repeat_interleave(n, dim=1), rows_mask, latent
            )

        return encoder_out

    def prior(self, source_mean: Tensor):
        """(mu, logvar) of p(z|c), each B x latent in fp32; zeros for N(0, I)."""
        if self.cvae_prior == "standard":
            zeros = source_mean.new_zeros(source_mean.size(0), self.latent_dim)
            return zeros, zeros.clone()
        pooled = source_mean.to(self.prior_mu[0].weight.dtype)
        mu = self.prior_mu(pooled).float()
        logvar = self.prior_logvar(pooled).float().clamp(LOGVAR_MIN, LOGVAR_MAX)
        return mu, logvar

    def conditional_posterior(self, source_mean: Tensor, tgt_tokens, tgt_lengths=None):
        """(mu, logvar) of q(z|c, x), each B x latent in fp32."""
        pooled = torch.cat([source_mean, self.sentence_mean(tgt_tokens, tgt_lengths)], dim=-1)
        pooled = pooled.to(self.mlp_mu[0].weight.dtype)
        mu = self.mlp_mu(pooled).float()
        logvar = self.mlp_logvar(pooled).float().clamp(LOGVAR_MIN, LOGVAR_MAX)
        return mu, logvar

    def standardised_posterior(self, src_tokens, src_lengths, tgt_tokens, tgt_lengths=None):
        """q(z|c, x) of each pair seen through p(z|c) (``standardised``): what a fitted prior of
        bart_cvae is a density of."""
        _, _, source_mean = self.source_context(src_tokens, src_lengths)
        mu, logvar = self.conditional_posterior(source_mean, tgt_tokens, tgt_lengths)
        return standardised(mu, logvar, *self.prior(source_mean))

    def forward(
        self,
        src_tokens,
        src_lengths: Optional[Tensor] = None,
        return_all_hiddens: bool = False,
        token_embeddings: Optional[Tensor] = None,
        z: Optional[Tensor] = None,
        tgt_tokens: Optional[Tensor] = None,
        tgt_lengths: Optional[Tensor] = None,
        eps: Optional[Tensor] = None,
    ):
        """``eps`` (B x latent): the standard normal draws of a sampled z, when the caller
        fixes them (``latent_draws``); else they come from the random state."""
        states, mask, source_mean = self.source_context(src_tokens, src_lengths)
        prior_mu, prior_logvar = self.prior(source_mean)
        if z is not None or self.latent_source in ("prior", "prior-mean"):
            mu, logvar = prior_mu, prior_logvar  # no target: nothing but the prior to report
            if z is None and self.latent_source == "prior-mean":
                z = prior_mu
            elif z is None:
                z = sample_from(prior_mu, prior_logvar, eps)
        else:
            if tgt_tokens is None:
                raise ValueError(
                    "bart_cvae: the posterior q(z|c, x) needs the target; without one, decode "
                    "from the prior (--latent-source prior)"
                )
            mu, logvar = self.conditional_posterior(source_mean, tgt_tokens, tgt_lengths)
            if self.latent_source == "sample":
                z = sample_from(mu, logvar, eps)
            else:
                z = mu
        latent = {
            "mu": mu,
            "logvar": logvar,
            "z": z.float(),
            "prior_mu": prior_mu,
            "prior_logvar": prior_logvar,
            "source_mean": source_mean,
        }
        return self.conditional_encoder_out(states, mask, latent)

    def conditional_encoder_out(
        self, states: Tensor, mask: Optional[Tensor], latent: Dict[str, Tensor]
    ) -> Dict[str, List[Tensor]]:
        """The decoder's memory: z's slots (S x B x C), then the source states (T x B x C),
        with a padding mask that never hides a slot."""
        memory = self.memory(latent["z"]).to(states.dtype)
        slots = memory.size(0)
        if mask is None:
            mask = states.new_zeros(states.size(1), states.size(0), dtype=torch.bool)
        full_mask = torch.cat([mask.new_zeros(mask.size(0), slots), mask], dim=1)  # B x (S + T)
        return {
            "encoder_out": [torch.cat([memory, states], dim=0)],  # (S + T) x B x C
            "encoder_padding_mask": [full_mask],
            "encoder_embedding": [],
            "encoder_states": [],
            "src_tokens": [],
            "src_lengths": [],
            **{key: [value] for key, value in latent.items()},
        }

    def bow_logits(self, encoder_out, output_embeddings: Tensor) -> Tensor:
        """Zhao et al.: the target's words scored from z and the source's mean (B x V)."""
        features = torch.cat([encoder_out["z"][0], encoder_out["source_mean"][0]], dim=-1)
        return self.latent_bow(features.to(output_embeddings.dtype), output_embeddings)

    def reorder_encoder_out(self, encoder_out: Dict[str, List[Tensor]], new_order):
        reordered = super().reorder_encoder_out(encoder_out, new_order)
        reordered["encoder_padding_mask"] = [
            t.index_select(0, new_order) for t in encoder_out["encoder_padding_mask"]
        ]
        return reordered


@register_model("bart_cvae")
class BARTCVAEModel(BARTVAEModel):
    """BART with a Gaussian latent between a source and its target: p(x|z, c) p(z|c)."""

    hub_interface = BARTCVAEHubInterface

    @staticmethod
    def add_args(parser):
        BARTVAEModel.add_args(parser)
        parser.add_argument(
            "--cvae-prior",
            choices=CVAE_PRIORS,
            help="the prior of z: 'conditional', p(z|c), a diagonal Gaussian from the source's "
            "mean encoder state (Sohn et al. 2015), or 'standard', N(0, I) whatever the source "
            "(default: conditional)",
        )

    @classmethod
    def build_model(cls, args, task):
        bart_cvae_architecture(args)
        if args.bn_vae_gamma > 0:
            raise ValueError(
                "--bn-vae-gamma normalises the posterior means towards N(0, I); bart_cvae's "
                "KL is to p(z|c): use --free-bits against collapse instead"
            )
        return super().build_model(args, task)

    @classmethod
    def build_encoder(cls, args, src_dict, embed_tokens):
        return CVAEEncoder(args, src_dict, embed_tokens)


def cvae_defaults(args):
    args.cvae_prior = getattr(args, "cvae_prior", None) or "conditional"


@register_model_architecture("bart_cvae", "bart_cvae")
def bart_cvae_architecture(args):
    cvae_defaults(args)
    bart_vae_architecture(args)


@register_model_architecture("bart_cvae", "bart_cvae_large")
def bart_cvae_large_architecture(args):
    cvae_defaults(args)
    bart_vae_large_architecture(args)


@register_model_architecture("bart_cvae", "bart_cvae_small")
def bart_cvae_small_architecture(args):
    """A model that trains in minutes on 2 CPU cores."""
    cvae_defaults(args)
    bart_vae_small_architecture(args)
