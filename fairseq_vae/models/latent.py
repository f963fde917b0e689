"""The latent's parts: pooling, the posterior heads, BN-VAE, the reparameterised sample, word
dropout and the z-to-embedding injection.

They sit below both the model and its hub interface (``bart_vae`` imports ``hub_interface``,
``from_pretrained`` returns one), so the dependency stays one-way.
"""

from typing import List, Optional

import torch
import torch.distributed as dist
import torch.nn as nn
from torch import Tensor

# log-variances are clamped to this range (in fp32) so exp(logvar) can neither overflow nor
# underflow to a zero variance whose log is -inf; e^-30 and e^20 are far outside the range a
# trained posterior uses, so the clamp never binds in normal training.
LOGVAR_MIN, LOGVAR_MAX = -30.0, 20.0

# The VAE's own modules, with the option that adds each: they compute z, and the decoder's
# memory and inputs from it. A checkpoint may lack their parameters (a plain BART, fine-tuned
# into a VAE): these, and only these, may keep their fresh initialisation at load
# (checkpoint_compat.upgrade_vae_state_dict says when).
LATENT_MODULE_OPTIONS = {
    "mlp_mu": "every bart_vae --arch",
    "mlp_logvar": "every bart_vae --arch",
    "mu_batch_norm": "--bn-vae-gamma",
    "latent_attn": "--latent-fusion attention",
    "latent_memory": "--latent-fusion memory",
    "latent_layer_memory": "--latent-layer-memory",
    "latent_to_embed": "--latent-to-embeddings",
    "latent_to_output": "--latent-to-output",
    "latent_bow": "--bow-loss-weight",
    "prior_mu": "bart_cvae --cvae-prior conditional",
    "prior_logvar": "bart_cvae --cvae-prior conditional",
}
LATENT_MODULES = set(LATENT_MODULE_OPTIONS)
# latent modules that keep BART's small N(0, 0.02) init (see BARTVAEModel.__init__)
BART_INIT_MODULES = {"latent_to_embed", "latent_to_output"}


def worker_generator(device) -> Optional[torch.Generator]:
    """The generator for this worker's own noise in a multi-worker run; None with one worker.

    fairseq seeds every worker with --seed + the update number, so all workers would draw the
    same posterior noise and word-dropout masks for their different sentences. Here each draw
    takes one number from the shared generator (so the workers stay in step and a rerun
    repeats itself) and folds the worker's rank into it. A one-worker run draws from torch's
    global generator exactly as before.
    """
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() < 2:
        return None
    # base * 2^16 + rank: distinct for every (draw, rank) pair, within manual_seed's 64 bits.
    # The global rank is the data-parallel rank: bart_vae has no model parallelism.
    base = int(torch.randint(0, 2**47, ()))
    generator = torch.Generator(device=device)
    generator.manual_seed(base * 2**16 + dist.get_rank() % 2**16)
    return generator


def reparameterize(
    mu: Tensor, logvar: Tensor, generator: Optional[torch.Generator] = None
) -> Tensor:
    """z = mu + sigma * eps, eps ~ N(0, I) (from ``generator`` if given, see worker_generator)."""
    if generator is None:
        eps = torch.randn_like(mu)
    else:
        eps = torch.randn(mu.shape, generator=generator, dtype=mu.dtype, device=mu.device)
    return mu + torch.exp(0.5 * logvar) * eps


def latent_draws(seed: int, ids: List[int], n: int, dim: int, prior=None) -> Tensor:
    """Standard normal draws, n x dim for each sentence id, fixed by (seed, id) alone: the k-th
    latent of sentence i is the same whatever the batching, the device or the other sentences
    (fairseq-generate --latent-samples and the conditional hub share them). (len(ids) * n) x
    dim, sentence i's rows i*n .. i*n+n-1, on the CPU. ``prior``: a fitted prior (its
    ``sample(n, generator)``) to draw from instead of N(0, I), from the same generators."""
    draws = []
    for i in ids:
        generator = torch.Generator().manual_seed(seed * 1_000_003 + int(i))
        if prior is None:
            draws.append(torch.randn(n, dim, generator=generator))
        else:
            draws.append(prior.sample(n, generator=generator).float())
    return torch.cat(draws) if draws else torch.zeros(0, dim)


def masked_mean(states: Tensor, padding_mask: Optional[Tensor]) -> Tensor:
    """Mean of T x B x C ``states`` over the non-pad positions of each sentence -> B x C."""
    # B x T x C (never .view: that mixes sentences); summed in fp32, as an fp16 sum over a
    # long sentence can pass 65504 even when the mean is small
    states = states.transpose(0, 1).float()
    if padding_mask is None:
        return states.mean(dim=1)
    keep = (~padding_mask).unsqueeze(-1).float()  # B x T x 1
    return (states * keep).sum(dim=1) / keep.sum(dim=1).clamp(min=1.0)


# the dtypes LatentBatchNorm's running statistics may be cast to
FULL_PRECISION = (torch.float32, torch.float64)


def fixed_scale_batch_norm(
    mu: Tensor, mean: Tensor, var: Tensor, gamma: float, shift: Tensor, eps: float
) -> Tensor:
    """gamma * (mu - mean) / sqrt(var + eps) + shift, per dimension, in fp32."""
    return gamma * (mu - mean.float()) / torch.sqrt(var.float() + eps) + shift.float()


class LatentBatchNorm(nn.Module):
    """BN-VAE (Zhu et al. 2020): batch norm of the posterior means with a FIXED scale gamma.

    In training, each dimension of mu is normalised with its batch mean and variance, scaled by
    gamma and shifted by a learned beta_d, so over a batch mean_b(mu_bd^2) = gamma^2 + beta_d^2
    (up to eps): the expected KL of every dimension is at least gamma^2 / 2, and the KL cannot
    vanish. Evaluation uses running statistics (saved in checkpoints as buffers). Written out
    rather than nn.BatchNorm1d because the statistics must stay fp32 when --fp16 halves the
    model's buffers.

    eps is far below torch's 1e-5 on purpose: with var ~ eps the output shrinks with the scale
    of the raw means, and once the decoder ignores z the KL's only gradient on the posterior
    head is that shrinking direction, which Adam's per-coordinate normalisation turns into full
    steps: the raw means' variance drops below eps within a few hundred updates and the floor
    breaks (docs/design.md). At 1e-10 the output is scale-invariant to fp32 precision, so the
    floor holds.
    """

    def __init__(self, dim: int, gamma: float, eps: float = 1e-10, momentum: float = 0.1):
        super().__init__()
        self.gamma, self.eps, self.momentum = gamma, eps, momentum
        self.shift = nn.Parameter(torch.zeros(dim))
        self.register_buffer("running_mean", torch.zeros(dim))
        self.register_buffer("running_var", torch.ones(dim))

    def _apply(self, fn, recurse=True):
        # Module.half() and .to(torch.bfloat16), which fairseq's trainer calls for --fp16 and
        # --bf16, cast every floating buffer: the running statistics would then be kept in half
        # precision, where lerp_ with momentum 0.1 rounds small updates away (near 1, fp16
        # resolves 1e-3 and bf16 8e-3). Keep them fp32 through such a cast, from the fp32 values
        # themselves (a round trip through half would already lose them); device moves and
        # wider casts (.double()) apply as usual.
        before = {name: buf for name, buf in self._buffers.items() if buf is not None}
        super()._apply(fn, recurse)
        for name, old in before.items():
            new = self._buffers[name]
            if new.is_floating_point() and new.dtype not in FULL_PRECISION:
                self._buffers[name] = old.to(device=new.device, dtype=torch.float32)
        return self

    def forward(self, mu: Tensor) -> Tensor:
        if not self.training:
            return fixed_scale_batch_norm(
                mu, self.running_mean, self.running_var, self.gamma, self.shift, self.eps
            )
        mean, var = mu.mean(dim=0), mu.var(dim=0, unbiased=False)  # B x D -> D
        with torch.no_grad():
            # running variance unbiased, as torch's batch norm keeps it; one sentence has none
            n = mu.size(0)
            self.running_mean.lerp_(mean.to(self.running_mean.dtype), self.momentum)
            if n > 1:
                unbiased = (var * n / (n - 1)).to(self.running_var.dtype)
                self.running_var.lerp_(unbiased, self.momentum)
        return fixed_scale_batch_norm(mu, mean, var, self.gamma, self.shift, self.eps)


def gaussian_head(dim: int, latent_dim: int) -> nn.Sequential:
    """simple_vae_bart's posterior head: Linear C -> C/2, ReLU, Linear C/2 -> latent."""
    return nn.Sequential(nn.Linear(dim, dim // 2), nn.ReLU(), nn.Linear(dim // 2, latent_dim))


class SharedEmbeddingBagOfWords(nn.Module):
    """``--bow-head shared``: the bag-of-words output layer without a matrix of its own.

    The features (z; for bart_cvae z and the source's mean) go to the model's width and are
    scored against the decoder's output embeddings, plus one bias a word. A head of its own
    is a features x V matrix: 40 million parameters at BART's 50,265 types, whose gradient
    and Adam step every update pays (benchmarks/results/overhead.md); this one holds
    features x width + V. The loss's gradient reaches the embeddings too: which words occur
    together is what they are trained on anyway (on the shipped grammar this did better than
    holding them constant for this loss: docs/results.md).
    """

    def __init__(self, in_dim: int, dim: int, num_words: int):
        super().__init__()
        self.proj = nn.Linear(in_dim, dim)
        self.bias = nn.Parameter(torch.zeros(num_words))

    def forward(self, features: Tensor, output_embeddings: Tensor) -> Tensor:
        return nn.functional.linear(self.proj(features), output_embeddings, self.bias)


class OwnBagOfWords(nn.Linear):
    """``--bow-head linear``: Zhao et al.'s output layer of its own, features x V (the
    output embeddings it is handed are not used)."""

    def forward(self, features: Tensor, output_embeddings: Optional[Tensor] = None) -> Tensor:
        return super().forward(features)


def bag_of_words_head(args, in_dim: int, num_words: int) -> nn.Module:
    """--bow-loss-weight's output layer from ``in_dim`` features to one score a word, called
    as ``head(features, output_embeddings)``."""
    if args.bow_head == "shared":
        return SharedEmbeddingBagOfWords(in_dim, args.decoder_embed_dim, num_words)
    return OwnBagOfWords(in_dim, num_words)


def word_dropout(
    tokens: Tensor,
    p: float,
    unk: int,
    keep: List[int],
    generator: Optional[torch.Generator] = None,
) -> Tensor:
    """Bowman et al. (2016): replace each decoder input token by ``unk`` with probability p,
    never touching the special tokens in ``keep`` (padding, the leading eos/bos)."""
    drop = torch.rand(tokens.shape, device=tokens.device, generator=generator) < p
    for idx in keep:
        drop &= tokens.ne(idx)
    return tokens.masked_fill(drop, unk)


class LatentPlusPositions(nn.Module):
    """Adds a projection of z to the decoder's positional embeddings (Optimus' injection).

    fairseq's decoder adds ``embed_positions(tokens)`` to every input embedding before its
    embedding layer norm; wrapping that module is the one place to add a per-sentence vector
    without copying the decoder's forward. ``VAEDecoder`` sets ``latent_bias`` (B x C) before
    each call; the same bias is right at every incremental step because beam reordering
    reorders z with the encoder output.
    """

    def __init__(self, positions: Optional[nn.Module], latent_dim: int, dim: int):
        super().__init__()
        self.positions = positions
        self.latent_to_embed = nn.Linear(latent_dim, dim)
        self.latent_bias: Optional[Tensor] = None
        # the decoder reads this attribute for its maximum length
        self.max_positions = positions.max_positions if positions is not None else int(1e5)

    def forward(self, tokens, incremental_state=None):
        bias = self.latent_bias[:, None, :]  # B x 1 x C
        if self.positions is None:
            return bias.expand(tokens.size(0), tokens.size(1), bias.size(-1))
        return self.positions(tokens, incremental_state=incremental_state) + bias
