"""BART as a sentence-level variational autoencoder (``--arch bart_vae``).

The encoder pools BART's encoder states into one vector per sentence, maps it to a diagonal
Gaussian posterior q(z|x) and samples z; the decoder sees nothing of x but a memory computed
from z. Because z lives in the encoder's output dict, fairseq's ``SequenceGenerator`` (which
calls the encoder and decoder directly, never ``model.forward``) decodes from z too, and
``reorder_encoder_out`` carries the latent through beam search.
"""

import functools
import hashlib
import logging
import os
from typing import Dict, List, Optional

import torch
import torch.nn as nn
from fairseq import hub_utils
from fairseq.models import register_model, register_model_architecture
from fairseq.models.bart.model import (
    BARTModel,
    bart_base_architecture,
    bart_large_architecture,
)
from fairseq.models.transformer import TransformerDecoder, TransformerEncoder
from fairseq.modules import MultiheadAttention
from torch import Tensor

from ..subword import corpus_bpe_options
from .hub_interface import BARTVAEHubInterface
from .latent import reparameterize

logger = logging.getLogger(__name__)

# log-variances are clamped to this range (in fp32) so exp(logvar) can neither overflow nor
# underflow to a zero variance whose log is -inf; e^-30 and e^20 are far outside the range a
# trained posterior uses, so the clamp never binds in normal training.
LOGVAR_MIN, LOGVAR_MAX = -30.0, 20.0

LATENT_KEYS = ("mu", "logvar", "z")
# The VAE's own modules: they compute z, and the decoder's memory and inputs from it. A
# checkpoint may lack their parameters (a plain BART, fine-tuned into a VAE): these, and only
# these, keep their fresh initialisation at load (BARTVAEModel.upgrade_state_dict_named).
LATENT_MODULES = {
    "mlp_mu",
    "mlp_logvar",
    "mu_batch_norm",
    "latent_attn",
    "latent_memory",
    "latent_layer_memory",
    "latent_to_embed",
    "latent_bow",
}
# latent modules that keep BART's small N(0, 0.02) init (see BARTVAEModel.__init__)
BART_INIT_MODULES = {"latent_to_embed"}


# a buffer holding the SHA-256 of the training dictionary's symbols, in order: a dictionary of
# the same size in another order (fairseq-preprocess run on other text) is refused at load
DICTIONARY_CHECKSUM = "dictionary_sha256"


def dictionary_sha256(dictionary) -> Tensor:
    """The SHA-256 of a fairseq Dictionary's symbols in index order, as 32 uint8 values."""
    digest = hashlib.sha256("\n".join(dictionary.symbols).encode("utf-8")).digest()
    return torch.tensor(list(digest), dtype=torch.uint8)


def is_latent_parameter(key: str) -> bool:
    """Whether a state-dict key belongs to one of the LATENT_MODULES."""
    return not LATENT_MODULES.isdisjoint(key.split("."))
# what --reset-decoder re-initialises (Li et al. 2019): the decoder and the z -> memory fusion,
# everything that reads z; the encoder, the posterior heads and the embeddings the decoder
# shares with the encoder keep the checkpoint's weights
DECODER_SIDE = ("decoder.", "encoder.latent_attn.", "encoder.latent_memory.")
SHARED_EMBEDDINGS = ("decoder.embed_tokens.weight", "decoder.output_projection.weight")
# a buffer whose presence in a checkpoint says "this decoder was trained in this setting":
# loading a checkpoint without it under --reset-decoder re-initialises the decoder once
DECODER_RESET_MARKER = "decoder_reset_done"


def masked_mean(states: Tensor, padding_mask: Optional[Tensor]) -> Tensor:
    """Mean of T x B x C ``states`` over the non-pad positions of each sentence -> B x C."""
    # B x T x C (never .view: that mixes sentences); summed in fp32, as an fp16 sum over a
    # long sentence can pass 65504 even when the mean is small
    states = states.transpose(0, 1).float()
    if padding_mask is None:
        return states.mean(dim=1)
    keep = (~padding_mask).unsqueeze(-1).float()  # B x T x 1
    return (states * keep).sum(dim=1) / keep.sum(dim=1).clamp(min=1.0)


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
    steps: the raw means' variance drops below eps within a few hundred updates (measured: KL
    4.4 nats under a floor of 7.8 at update 100). At 1e-10 the output is scale-invariant to
    fp32 precision, so the floor holds.
    """

    def __init__(self, dim: int, gamma: float, eps: float = 1e-10, momentum: float = 0.1):
        super().__init__()
        self.gamma, self.eps, self.momentum = gamma, eps, momentum
        self.shift = nn.Parameter(torch.zeros(dim))
        self.register_buffer("running_mean", torch.zeros(dim))
        self.register_buffer("running_var", torch.ones(dim))

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
    """The seed's posterior head: Linear C -> C/2, ReLU, Linear C/2 -> latent."""
    return nn.Sequential(nn.Linear(dim, dim // 2), nn.ReLU(), nn.Linear(dim // 2, latent_dim))


class VAEEncoder(TransformerEncoder):
    """BART's encoder followed by the posterior q(z|x) and the z -> memory fusion.

    ``latent_source`` decides what z is: ``sample`` (the reparameterised sample used by the
    ELBO, the default), ``mean`` (the posterior mean, for deterministic reconstruction), or
    ``prior`` (z ~ N(0, I), the source only fixes the batch size). A ``z`` passed to
    ``forward`` (as an extra ``net_input`` key, which fairseq hands to the encoder unchanged)
    overrides all three: that is how the hub interface decodes chosen latents.
    """

    def __init__(self, args, dictionary, embed_tokens):
        super().__init__(args, dictionary, embed_tokens)
        dim = args.encoder_embed_dim
        self.latent_dim = args.latent_dim
        self.latent_fusion = args.latent_fusion
        self.latent_source = "sample"
        self.mlp_mu = gaussian_head(dim, self.latent_dim)
        self.mlp_logvar = gaussian_head(dim, self.latent_dim)
        self.mu_batch_norm = None
        if args.bn_vae_gamma > 0:
            self.mu_batch_norm = LatentBatchNorm(self.latent_dim, args.bn_vae_gamma)
        # --bow-loss-weight: z's prediction of the sentence's words, order-free (training only)
        self.latent_bow = None
        if args.bow_loss_weight > 0:
            self.latent_bow = nn.Linear(self.latent_dim, len(dictionary))
        if self.latent_fusion == "attention":
            # With z as the only key, every attention weight is 1 and the output is
            # out_proj(v_proj(z)) whatever the query: the seed's T-position memory holds T
            # copies of one vector, so a one-position memory is identical and T times cheaper.
            # The head count cannot change the output; one head keeps it simple.
            self.latent_attn = MultiheadAttention(
                dim,
                1,
                kdim=self.latent_dim,
                vdim=self.latent_dim,
                encoder_decoder_attention=True,
            )
        elif self.latent_fusion == "memory":
            self.memory_slots = args.latent_memory_slots
            self.latent_memory = nn.Linear(self.latent_dim, self.memory_slots * dim)
        else:
            raise ValueError(f"--latent-fusion must be attention or memory, got {self.latent_fusion}")

    def posterior(self, src_tokens, src_lengths=None, token_embeddings=None):
        """Returns (mu, logvar), each B x latent in fp32, for a batch of sentences."""
        out = super().forward(src_tokens, src_lengths, token_embeddings=token_embeddings)
        padding_mask = out["encoder_padding_mask"][0] if out["encoder_padding_mask"] else None
        states = out["encoder_out"][0]
        pooled = masked_mean(states, padding_mask).to(states.dtype)  # B x C
        # fp32 from here on: KL and log-densities must not be computed in half precision
        mu = self.mlp_mu(pooled).float()
        if self.mu_batch_norm is not None:
            mu = self.mu_batch_norm(mu)
        logvar = self.mlp_logvar(pooled).float().clamp(LOGVAR_MIN, LOGVAR_MAX)
        return mu, logvar

    def memory(self, z: Tensor) -> Tensor:
        """The decoder's cross-attention memory built from z alone: S x B x C."""
        z = z.to(self.mlp_mu[0].weight.dtype)[None]  # 1 x B x latent
        if self.latent_fusion == "attention":
            # the query only fixes the output length (one position) and dtype
            query = z.new_zeros(1, z.size(1), self.latent_attn.embed_dim)
            return self.latent_attn(query=query, key=z, value=z, need_weights=False)[0]
        slots = self.latent_memory(z[0])  # B x (S * C)
        return slots.view(z.size(1), self.memory_slots, -1).transpose(0, 1)  # S x B x C

    def forward(
        self,
        src_tokens,
        src_lengths: Optional[Tensor] = None,
        return_all_hiddens: bool = False,
        token_embeddings: Optional[Tensor] = None,
        z: Optional[Tensor] = None,
    ):
        if z is not None or self.latent_source == "prior":
            if z is None:
                z = torch.randn(src_tokens.size(0), self.latent_dim, device=src_tokens.device)
            z = z.float()
            # the prior's parameters: with a given z there is no posterior to report
            return self.latent_encoder_out(torch.zeros_like(z), torch.zeros_like(z), z)
        mu, logvar = self.posterior(src_tokens, src_lengths, token_embeddings)
        z = reparameterize(mu, logvar) if self.latent_source == "sample" else mu
        return self.latent_encoder_out(mu, logvar, z)

    def latent_encoder_out(self, mu: Tensor, logvar: Tensor, z: Tensor) -> Dict[str, List[Tensor]]:
        """The encoder-out dict the decoder reads: the memory from z, and nothing else of x."""
        return {
            "encoder_out": [self.memory(z)],  # S x B x C
            "encoder_padding_mask": [],  # no padding in the memory
            "encoder_embedding": [],
            "encoder_states": [],
            "src_tokens": [],
            "src_lengths": [],
            "mu": [mu],  # B x latent
            "logvar": [logvar],  # B x latent
            "z": [z],  # B x latent
        }

    def reorder_encoder_out(self, encoder_out: Dict[str, List[Tensor]], new_order):
        reordered = {k: v for k, v in encoder_out.items()}
        reordered["encoder_out"] = [t.index_select(1, new_order) for t in encoder_out["encoder_out"]]
        for key in LATENT_KEYS:
            reordered[key] = [t.index_select(0, new_order) for t in encoder_out[key]]
        return reordered


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


class VAEDecoder(TransformerDecoder):
    """BART's decoder; with ``--latent-to-embeddings`` it also adds z to its input embeddings,
    and with ``--latent-layer-memory`` every layer gets its own projection of z as one more
    memory slot (Optimus' z in every layer)."""

    def __init__(self, args, dictionary, embed_tokens):
        super().__init__(args, dictionary, embed_tokens)
        if args.latent_to_embeddings:
            self.embed_positions = LatentPlusPositions(
                self.embed_positions, args.latent_dim, args.decoder_embed_dim
            )
        self.latent_layer_memory = None
        self.layer_memories: List[Tensor] = []
        if args.latent_layer_memory:
            self.latent_layer_memory = nn.ModuleList(
                nn.Linear(args.latent_dim, args.decoder_embed_dim) for _ in self.layers
            )
            # fairseq's layer loop hands every layer the same memory; a pre-hook per layer
            # appends that layer's slot without copying the loop
            for idx, layer in enumerate(self.layers):
                layer.register_forward_pre_hook(functools.partial(self.add_layer_memory, idx))

    def add_layer_memory(self, idx: int, layer, args):
        # args: (x, memory S x B x C, memory padding mask B x S or None, ...)
        memory = torch.cat([args[1], self.layer_memories[idx]], dim=0)  # (S + 1) x B x C
        mask = args[2]
        if mask is not None:
            mask = torch.cat([mask, mask.new_zeros(mask.size(0), 1)], dim=1)  # B x (S + 1)
        return (args[0], memory, mask, *args[3:])

    def extract_features(self, prev_output_tokens, encoder_out=None, **kwargs):
        z = encoder_out["z"][0]
        if isinstance(self.embed_positions, LatentPlusPositions):
            self.embed_positions.latent_bias = self.embed_positions.latent_to_embed(
                z.to(self.embed_positions.latent_to_embed.weight.dtype)
            )
        if self.latent_layer_memory is not None:
            z = z.to(self.latent_layer_memory[0].weight.dtype)
            self.layer_memories = [proj(z)[None] for proj in self.latent_layer_memory]  # 1 x B x C
        return super().extract_features(prev_output_tokens, encoder_out=encoder_out, **kwargs)


def check_shapes(checkpoint: Dict[str, Tensor], own: Dict[str, Tensor], prefix: str, n_dict: int):
    """Raises a ValueError naming both sizes when a checkpoint's tensors do not fit the model."""
    for key, tensor in own.items():
        theirs = checkpoint.get(prefix + key)
        if theirs is None or theirs.shape == tensor.shape:
            continue
        if key.endswith("embed_tokens.weight") and theirs.size(1) == tensor.size(1):
            raise ValueError(
                f"the checkpoint's dictionary has {theirs.size(0)} entries but this task's has "
                f"{n_dict} ({key}): preprocess the data with the checkpoint's dict.txt "
                "(fairseq-preprocess --srcdict, or scripts/prepare_data.sh --bart)"
            )
        raise ValueError(
            f"checkpoint tensor {key} has shape {tuple(theirs.shape)} but the model's is "
            f"{tuple(tensor.shape)}: the checkpoint was trained with other dimensions "
            f"(width {theirs.size(-1)} vs {tensor.size(-1)}); choose the matching --arch"
        )


def check_keys(checkpoint: Dict[str, Tensor], own: Dict[str, Tensor], prefix: str):
    """Raises a ValueError naming the keys when the checkpoint lacks a parameter that is not
    one of the LATENT_MODULES', or holds one the model does not have."""
    theirs = {key[len(prefix):] for key in checkpoint if key.startswith(prefix)}
    filled = [key for key in own if is_latent_parameter(key) or key == DICTIONARY_CHECKSUM]
    missing = sorted(key for key in own if key not in theirs and key not in filled)
    unexpected = sorted(key for key in theirs if key not in own)
    problems = []
    if missing:
        problems.append(f"{len(missing)} missing from the checkpoint: {', '.join(missing)}")
    if unexpected:
        problems.append(f"{len(unexpected)} not in the model: {', '.join(unexpected)}")
    if problems:
        raise ValueError(
            f"the checkpoint's parameters do not fit this model: {'; '.join(problems)} (was it "
            "trained with other --encoder-layers, --decoder-layers or latent options?)"
        )


def word_dropout(tokens: Tensor, p: float, unk: int, keep: List[int]) -> Tensor:
    """Bowman et al. (2016): replace each decoder input token by ``unk`` with probability p,
    never touching the special tokens in ``keep`` (padding, the leading eos/bos)."""
    drop = torch.rand(tokens.shape, device=tokens.device) < p
    for idx in keep:
        drop &= tokens.ne(idx)
    return tokens.masked_fill(drop, unk)


@register_model("bart_vae")
class BARTVAEModel(BARTModel):
    """BART with a Gaussian sentence latent between its encoder and decoder."""

    def __init__(self, args, encoder, decoder):
        super().__init__(args, encoder, decoder)
        self.register_buffer(DICTIONARY_CHECKSUM, dictionary_sha256(encoder.dictionary))
        self.dictionary_file = None  # the task's dict.txt, named in load errors
        # BART re-initialises every Linear with N(0, 0.02). For the latent path that makes
        # mu ~ 1e-2 against posterior noise of scale 1 and a memory ~ 1e-2 where BART's
        # decoder expects layer-normed, unit-scale encoder states: the decoder learns to
        # ignore z before the encoder can make it informative (posterior collapse). These
        # modules keep PyTorch's scale-preserving defaults instead. The z-to-embedding
        # projection keeps BART's small init: it is added to token embeddings of that scale,
        # and a unit-scale vector there would drown which token the decoder is reading.
        pytorch_init = LATENT_MODULES - BART_INIT_MODULES
        for name, module in self.named_modules():
            if isinstance(module, nn.Linear) and pytorch_init.intersection(name.split(".")):
                module.reset_parameters()
        if args.reset_decoder:
            self.register_buffer(DECODER_RESET_MARKER, torch.ones(()))

    @staticmethod
    def add_args(parser):
        BARTModel.add_args(parser)
        # no defaults here: the architecture functions below fill them (fairseq's convention)
        parser.add_argument("--latent-dim", type=int, metavar="N",
                            help="size of the latent z (default: --encoder-embed-dim)")
        parser.add_argument("--latent-fusion", choices=["attention", "memory"],
                            help="how the decoder sees z: 'attention' (the seed's attention "
                            "with z as its only key: one memory position), or 'memory' "
                            "(z projected to --latent-memory-slots positions) (default: "
                            "attention)")
        parser.add_argument("--latent-memory-slots", type=int, metavar="K",
                            help="memory positions z is projected to with --latent-fusion "
                            "memory (default: 1)")
        parser.add_argument("--latent-to-embeddings", action="store_true",
                            help="also add a projection of z to every decoder input "
                            "embedding, as Optimus does")
        parser.add_argument("--latent-layer-memory", action="store_true",
                            help="also give every decoder layer its own projection of z as "
                            "one more memory slot (Optimus' z in every layer)")
        parser.add_argument("--word-dropout", type=float, metavar="P",
                            help="replace decoder input tokens by <unk> with this probability "
                            "during training (Bowman et al. 2016) (default: 0)")
        parser.add_argument("--bn-vae-gamma", type=float, metavar="G",
                            help="BN-VAE (Zhu et al. 2020): batch-normalise each dimension of "
                            "the posterior mean with this fixed scale and a learned shift, so "
                            "every dimension's expected KL is at least G^2/2; evaluation uses "
                            "running statistics (default: 0, off)")
        parser.add_argument("--bow-loss-weight", type=float, metavar="W",
                            help="Zhao et al. (2017)'s bag-of-words loss: a linear layer reads "
                            "every word of the sentence, in any order, from z alone, and W "
                            "times its NLL is added to the training loss, so the encoder puts "
                            "the words into z from the first updates; training only: the "
                            "validation loss, evaluation and generation are the plain model "
                            "(default: 0, off)")
        parser.add_argument("--untie-encoder-embeddings", action="store_true",
                            help="give the encoder its own token embeddings instead of BART's "
                            "one table shared with the decoder: a language model's embeddings "
                            "make words that can stand in each other's place nearly equal "
                            "('great' and 'horrible'), and the encoder then can hardly tell them "
                            "apart (the decoder's input and output embeddings stay tied)")
        parser.add_argument("--reset-decoder", action="store_true",
                            help="Li et al. (2019): with --finetune-from-model, keep the "
                            "checkpoint's encoder and posterior heads but re-initialise the "
                            "decoder and the z-to-decoder fusion (embeddings shared with the "
                            "encoder are kept); done once: checkpoints of this run then load "
                            "as they are")

    @classmethod
    def build_model(cls, args, task):
        bart_vae_architecture(args)
        model = super().build_model(args, task)
        model.dictionary_file = getattr(task, "dictionary_file", None)
        return model

    @classmethod
    def build_encoder(cls, args, src_dict, embed_tokens):
        return VAEEncoder(args, src_dict, embed_tokens)

    @classmethod
    def build_decoder(cls, args, tgt_dict, embed_tokens):
        return VAEDecoder(args, tgt_dict, embed_tokens)

    def forward(
        self,
        src_tokens,
        src_lengths,
        prev_output_tokens,
        features_only: bool = False,
        **kwargs,
    ):
        encoder_out = self.encoder(src_tokens, src_lengths=src_lengths)
        if self.training and self.args.word_dropout > 0:
            dictionary = self.decoder.dictionary
            prev_output_tokens = word_dropout(
                prev_output_tokens,
                self.args.word_dropout,
                dictionary.unk(),
                keep=[dictionary.pad(), dictionary.eos(), dictionary.bos()],
            )
        x, extra = self.decoder(
            prev_output_tokens, encoder_out=encoder_out, features_only=features_only
        )
        for key in LATENT_KEYS:
            extra[key] = encoder_out[key][0]
        if self.training and self.encoder.latent_bow is not None:
            extra["bow_logits"] = self.encoder.latent_bow(
                extra["z"].to(self.encoder.latent_bow.weight.dtype)
            )  # B x V
        return x, extra

    def upgrade_state_dict_named(self, state_dict, name):
        """Loads plain BART checkpoints: fills the VAE parameters they lack.

        Encoder and decoder weights come from the checkpoint; the parameters of the
        LATENT_MODULES that it does not have (the posterior heads, the fusion, the
        z-to-embedding projection) keep their fresh initialisation, and a log line lists them.
        Any other parameter missing from the checkpoint, or a checkpoint parameter the model
        does not have (another number of layers, say), is an error naming the keys;
        checkpoints of other dimensions or dictionary size are refused with both sizes named.
        """
        prefix = name + "." if name else ""
        positions = prefix + "decoder.embed_positions."
        if isinstance(self.decoder.embed_positions, LatentPlusPositions):
            # BART keeps its learned positions at decoder.embed_positions.weight; we wrap them
            for key in [k for k in state_dict if k.startswith(positions)]:
                if not key[len(positions):].startswith(("positions.", "latent_to_embed.")):
                    state_dict[positions + "positions." + key[len(positions):]] = state_dict.pop(key)
        super().upgrade_state_dict_named(state_dict, name)
        own = self.state_dict()
        try:
            check_shapes(state_dict, own, prefix, len(self.encoder.dictionary))
            self.check_dictionary(state_dict.get(prefix + DICTIONARY_CHECKSUM), state_dict)
            if self.args.reset_decoder:
                self.reset_decoder_weights(state_dict, prefix)
            elif prefix + DECODER_RESET_MARKER in state_dict:
                del state_dict[prefix + DECODER_RESET_MARKER]  # fine-tuning such a checkpoint on
            check_keys(state_dict, own, prefix)
        except ValueError as error:
            # fairseq's trainer replaces this with a generic "architectures must match"
            # message (keeping ours only in the traceback), so also log it plainly
            logger.error(str(error))
            raise
        fresh = [key for key in own if prefix + key not in state_dict]
        for key in fresh:
            state_dict[prefix + key] = own[key]
        if fresh:
            logger.info(
                f"{len(fresh)} parameters not in the checkpoint keep their fresh "
                f"initialisation: {', '.join(fresh)}"
            )

    def check_dictionary(self, checksum: Optional[Tensor], state_dict):
        """Raises a ValueError naming both files when the checkpoint's dictionary checksum is
        not this task's (a checkpoint without one, older or a plain BART, is not checked)."""
        if checksum is None or torch.equal(checksum.cpu(), self.dictionary_sha256.cpu()):
            return
        # checkpoint_safety's loader notes the file on the state dict it returns
        checkpoint = getattr(state_dict, "checkpoint_file", "the checkpoint")
        dictionary = self.dictionary_file or "this task's dictionary"
        raise ValueError(
            f"checkpoint {checkpoint} was trained with another dictionary than {dictionary}: "
            "the same size, but other symbols or another order, so every token id would mean "
            "another word. Use the data-bin the model was trained on, or binarise with the "
            "checkpoint's dict.txt (fairseq-preprocess --srcdict)"
        )

    def reset_decoder_weights(self, state_dict, prefix: str):
        """--reset-decoder: the first time a checkpoint without the marker is loaded (phase 1
        of Li et al.'s recipe), its decoder-side tensors are replaced by this model's fresh
        initialisation; this run's own checkpoints carry the marker and load unchanged."""
        if prefix + DECODER_RESET_MARKER in state_dict:
            return
        shared = self.args.share_all_embeddings  # then the decoder's embeddings are the encoder's
        own = self.state_dict()
        reset = [
            key
            for key in own
            if key.startswith(DECODER_SIDE) and not (shared and key in SHARED_EMBEDDINGS)
        ]
        for key in reset:
            state_dict[prefix + key] = own[key]
        state_dict[prefix + DECODER_RESET_MARKER] = own[DECODER_RESET_MARKER]
        logger.info(f"--reset-decoder: {len(reset)} decoder-side tensors re-initialised")

    @classmethod
    def from_pretrained(
        cls,
        model_name_or_path,
        checkpoint_file="checkpoint_best.pt",
        data_name_or_path=".",
        **kwargs,
    ):
        """A :class:`BARTVAEHubInterface` for a checkpoint in ``model_name_or_path``.

        ``data_name_or_path`` is the data-bin folder: its dict.txt, and its own subword files
        (spm.model, or GPT-2's encoder.json and vocab.bpe as ``prepare_data.sh --bart`` leaves
        them) unless ``bpe=...`` says otherwise. Nothing is downloaded.
        """
        data = data_name_or_path
        if data.startswith("."):
            data = os.path.join(model_name_or_path, data)
        if "bpe" not in kwargs:
            kwargs.update(corpus_bpe_options(data))
        # the checkpoint records the --user-dir it was trained with, which may not exist here
        kwargs.setdefault("user_dir", os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
        x = hub_utils.from_pretrained(
            model_name_or_path, checkpoint_file, data_name_or_path, archive_map={}, **kwargs
        )
        return BARTVAEHubInterface(x["args"], x["task"], x["models"][0])

    def set_beam_size(self, beam):
        # BART's version swaps in a reorder that leaves the encoder output alone, for its
        # "beamable" cross-attention; z must follow the beam, and a one-position memory
        # gains nothing from that trick, so we keep the ordinary reorder.
        pass


@register_model_architecture("bart_vae", "bart_vae")
def bart_vae_architecture(args):
    bart_base_architecture(args)
    vae_defaults(args)


@register_model_architecture("bart_vae", "bart_vae_large")
def bart_vae_large_architecture(args):
    bart_large_architecture(args)
    vae_defaults(args)


@register_model_architecture("bart_vae", "bart_vae_small")
def bart_vae_small_architecture(args):
    """A model that trains in minutes on 2 CPU cores (the demo)."""
    args.encoder_embed_dim = getattr(args, "encoder_embed_dim", 128)
    args.encoder_ffn_embed_dim = getattr(args, "encoder_ffn_embed_dim", 512)
    args.encoder_layers = getattr(args, "encoder_layers", 2)
    args.encoder_attention_heads = getattr(args, "encoder_attention_heads", 4)
    args.decoder_layers = getattr(args, "decoder_layers", 2)
    args.decoder_attention_heads = getattr(args, "decoder_attention_heads", 4)
    args.max_source_positions = getattr(args, "max_source_positions", 256)
    args.max_target_positions = getattr(args, "max_target_positions", 256)
    bart_vae_architecture(args)


def vae_defaults(args):
    args.latent_dim = getattr(args, "latent_dim", None) or args.encoder_embed_dim
    args.latent_fusion = getattr(args, "latent_fusion", "attention")
    args.latent_memory_slots = getattr(args, "latent_memory_slots", 1)
    args.latent_to_embeddings = getattr(args, "latent_to_embeddings", False)
    args.latent_layer_memory = getattr(args, "latent_layer_memory", False)
    args.word_dropout = getattr(args, "word_dropout", 0.0)
    args.bn_vae_gamma = getattr(args, "bn_vae_gamma", 0.0)
    args.bow_loss_weight = getattr(args, "bow_loss_weight", 0.0)
    args.reset_decoder = getattr(args, "reset_decoder", False)
    args.untie_encoder_embeddings = getattr(args, "untie_encoder_embeddings", False)
    if args.untie_encoder_embeddings:
        # the decoder keeps its input embeddings tied to its output layer
        args.share_all_embeddings = False
