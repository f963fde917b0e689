"""BART as a sentence-level variational autoencoder (``--arch bart_vae``).

The encoder pools BART's encoder states into one vector per sentence, maps it to a diagonal
Gaussian posterior q(z|x) and samples z; the decoder sees nothing of x but a memory computed
from z. Because z lives in the encoder's output dict, fairseq's ``SequenceGenerator`` (which
calls the encoder and decoder directly, never ``model.forward``) decodes from z too, and
``reorder_encoder_out`` carries the latent through beam search.
"""

import functools
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

from ..text.subword import corpus_bpe_options
from .checkpoint_compat import (
    DECODER_RESET_MARKER,
    DICTIONARY_CHECKSUM,
    dictionary_sha256,
    rename_wrapped_positions,
    upgrade_vae_state_dict,
)
from .hub_interface import BARTVAEHubInterface
from .latent import (
    BART_INIT_MODULES,
    LATENT_MODULES,
    LOGVAR_MAX,
    LOGVAR_MIN,
    LatentBatchNorm,
    LatentPlusPositions,
    bag_of_words_head,
    gaussian_head,
    masked_mean,
    reparameterize,
    word_dropout,
    worker_generator,
)

logger = logging.getLogger(__name__)

LATENT_KEYS = ("mu", "logvar", "z")


class VAEEncoder(TransformerEncoder):
    """BART's encoder followed by the posterior q(z|x) and the z -> memory fusion.

    ``latent_source`` decides what z is: ``sample`` (the reparameterised sample used by the
    ELBO, the default), ``mean`` (the posterior mean, for deterministic reconstruction), or
    ``prior`` (z ~ N(0, I), the source only fixes the batch size). A ``z`` passed to
    ``forward`` (as an extra ``net_input`` key, which fairseq hands to the encoder unchanged)
    overrides all three: that is how the hub interface decodes chosen latents.
    """

    latent_keys = LATENT_KEYS  # what the encoder-out dict carries of the latent
    conditional = False  # a sentence VAE: no source besides the sentence itself

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
            self.latent_bow = bag_of_words_head(args, self.latent_dim, len(dictionary))
        if self.latent_fusion == "attention":
            # With z as the only key, every attention weight is 1 and the output is
            # out_proj(v_proj(z)) whatever the query: the T-position memory of the
            # simple_vae_bart snippet (the encoder states as queries, z as the key) holds T
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
            raise ValueError(
                f"--latent-fusion must be attention or memory, got {self.latent_fusion}"
            )

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
        if z is not None or self.latent_source in ("prior", "prior-mean"):
            if z is None:
                z = torch.randn(src_tokens.size(0), self.latent_dim, device=src_tokens.device)
                z = z if self.latent_source == "prior" else torch.zeros_like(z)  # N(0, I)'s mean
            z = z.float()
            # the prior's parameters: with a given z there is no posterior to report
            return self.latent_encoder_out(torch.zeros_like(z), torch.zeros_like(z), z)
        mu, logvar = self.posterior(src_tokens, src_lengths, token_embeddings)
        if self.latent_source == "sample":
            z = reparameterize(mu, logvar, generator=worker_generator(mu.device))
        else:
            z = mu
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
        reordered["encoder_out"] = [
            t.index_select(1, new_order) for t in encoder_out["encoder_out"]
        ]
        for key in self.latent_keys:
            reordered[key] = [t.index_select(0, new_order) for t in encoder_out[key]]
        return reordered

    def bow_logits(self, encoder_out, output_embeddings: Tensor) -> Tensor:
        """--bow-loss-weight: the sentence's words scored from z alone (B x V); with
        --bow-head shared against ``output_embeddings``, the decoder's output layer."""
        z = encoder_out["z"][0].to(output_embeddings.dtype)
        return self.latent_bow(z, output_embeddings)


class VAEDecoder(TransformerDecoder):
    """BART's decoder; with ``--latent-to-embeddings`` it also adds z to its input embeddings,
    with ``--latent-layer-memory`` every layer gets its own projection of z as one more
    memory slot (Optimus' z in every layer), and with ``--latent-to-output`` a projection of z
    is added to its last hidden states, the features every word is chosen from."""

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
        self.latent_to_output = None
        if args.latent_to_output:
            self.latent_to_output = nn.Linear(args.latent_dim, args.decoder_embed_dim)

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
        x, extra = super().extract_features(prev_output_tokens, encoder_out=encoder_out, **kwargs)
        if self.latent_to_output is not None:
            # B x T x C (one step of T = 1 in incremental decoding): the same vector at every
            # position, as beam search reorders z with the encoder output
            z = encoder_out["z"][0].to(self.latent_to_output.weight.dtype)
            x = x + self.latent_to_output(z)[:, None, :].to(x.dtype)
        return x, extra


@register_model("bart_vae")
class BARTVAEModel(BARTModel):
    """BART with a Gaussian sentence latent between its encoder and decoder."""

    hub_interface = BARTVAEHubInterface  # what from_pretrained returns

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
        # and a unit-scale vector there would drown which token the decoder is reading. So
        # does the z-to-output one: at full scale it would outweigh the features the decoder
        # computed before it learns anything.
        pytorch_init = LATENT_MODULES - BART_INIT_MODULES
        for name, module in self.named_modules():
            if isinstance(module, nn.Linear) and pytorch_init.intersection(name.split(".")):
                module.reset_parameters()
        if args.cross_attention_init == "fairseq":
            # the one path from z into the decoder passes two of these layers (v_proj and
            # out_proj): at N(0, 0.02) it carries z at about 1/20 of the residual's scale,
            # with fairseq's own (Xavier) init about 14 times more (docs/design.md)
            for layer in self.decoder.layers:
                layer.encoder_attn.reset_parameters()
        if args.reset_decoder:
            self.register_buffer(DECODER_RESET_MARKER, torch.ones(()))

    @staticmethod
    def add_args(parser):
        BARTModel.add_args(parser)
        # no defaults here: the architecture functions below fill them (fairseq's convention)
        parser.add_argument(
            "--latent-dim",
            type=int,
            metavar="N",
            help="size of the latent z (default: --encoder-embed-dim)",
        )
        parser.add_argument(
            "--latent-fusion",
            choices=["attention", "memory"],
            help="how the decoder sees z: 'attention' (an attention "
            "with z as its only key: one memory position), or 'memory' "
            "(z projected to --latent-memory-slots positions) (default: "
            "attention)",
        )
        parser.add_argument(
            "--latent-memory-slots",
            type=int,
            metavar="K",
            help="memory positions z is projected to with --latent-fusion memory (default: 1)",
        )
        parser.add_argument(
            "--latent-to-embeddings",
            action="store_true",
            help="also add a projection of z to every decoder input embedding, as Optimus does",
        )
        parser.add_argument(
            "--latent-to-output",
            action="store_true",
            help="also add a projection of z to the decoder's last hidden states, before the "
            "output layer: z then shifts every word choice directly, not only through "
            "cross-attention (what a greedy decoder needs to follow z where the sentence "
            "branches)",
        )
        parser.add_argument(
            "--latent-layer-memory",
            action="store_true",
            help="also give every decoder layer its own projection of z as "
            "one more memory slot (Optimus' z in every layer)",
        )
        parser.add_argument(
            "--word-dropout",
            type=float,
            metavar="P",
            help="replace decoder input tokens by <unk> with this probability "
            "during training (Bowman et al. 2016) (default: 0)",
        )
        parser.add_argument(
            "--bn-vae-gamma",
            type=float,
            metavar="G",
            help="BN-VAE (Zhu et al. 2020): batch-normalise each dimension of "
            "the posterior mean with this fixed scale and a learned shift, so "
            "every dimension's expected KL is at least G^2/2; evaluation uses "
            "running statistics (default: 0, off)",
        )
        parser.add_argument(
            "--bow-loss-weight",
            type=float,
            metavar="W",
            help="Zhao et al. (2017)'s bag-of-words loss: a linear layer reads "
            "every word of the sentence, in any order, from z alone, and W "
            "times its NLL is added to the training loss, so the encoder puts "
            "the words into z from the first updates; training only: the "
            "validation loss, evaluation and generation are the plain model "
            "(default: 0, off)",
        )
        parser.add_argument(
            "--bow-head",
            choices=["linear", "shared"],
            help="the bag-of-words loss's output layer: 'linear', one of its own (latent x V, "
            "paid for in every update); 'shared', a projection to the width scored against "
            "the decoder's output embeddings, nearly free (default: linear)",
        )
        parser.add_argument(
            "--untie-encoder-embeddings",
            action="store_true",
            help="give the encoder its own token embeddings instead of BART's "
            "one table shared with the decoder: a language model's embeddings "
            "make words that can stand in each other's place nearly equal "
            "('great' and 'horrible'), and the encoder then can hardly tell them "
            "apart (the decoder's input and output embeddings stay tied)",
        )
        parser.add_argument(
            "--cross-attention-init",
            choices=["bart", "fairseq"],
            help="how the decoder's cross-attention, z's way into the decoder, is initialised "
            "in a model trained from scratch: BART's N(0, 0.02) ('bart'), or fairseq's "
            "MultiheadAttention init ('fairseq', Xavier), which lets z reach the decoder at "
            "full scale from the first update; a --finetune-from-model checkpoint's own "
            "weights replace either (default: bart)",
        )
        parser.add_argument(
            "--reset-decoder",
            action="store_true",
            help="Li et al. (2019): with --finetune-from-model, keep the "
            "checkpoint's encoder and posterior heads but re-initialise the "
            "decoder and the z-to-decoder fusion (embeddings shared with the "
            "encoder are kept); done once: checkpoints of this run then load "
            "as they are",
        )

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
        # the conditional model's encoder also reads the target (tgt_tokens, tgt_lengths)
        latent_inputs = {k: kwargs[k] for k in ("tgt_tokens", "tgt_lengths") if k in kwargs}
        encoder_out = self.encoder(src_tokens, src_lengths=src_lengths, **latent_inputs)
        if self.training and self.args.word_dropout > 0:
            dictionary = self.decoder.dictionary
            prev_output_tokens = word_dropout(
                prev_output_tokens,
                self.args.word_dropout,
                dictionary.unk(),
                keep=[dictionary.pad(), dictionary.eos(), dictionary.bos()],
                generator=worker_generator(prev_output_tokens.device),
            )
        x, extra = self.decoder(
            prev_output_tokens, encoder_out=encoder_out, features_only=features_only
        )
        for key in self.encoder.latent_keys:
            extra[key] = encoder_out[key][0]
        if self.training and self.encoder.latent_bow is not None:
            output_embeddings = self.decoder.output_projection.weight
            extra["bow_logits"] = self.encoder.bow_logits(encoder_out, output_embeddings)
        return x, extra

    def upgrade_state_dict_named(self, state_dict, name):
        """Loads bart_vae and plain BART checkpoints (fairseq_vae.models.checkpoint_compat)."""
        prefix = name + "." if name else ""
        if isinstance(self.decoder.embed_positions, LatentPlusPositions):
            rename_wrapped_positions(state_dict, prefix)
        super().upgrade_state_dict_named(state_dict, name)
        upgrade_vae_state_dict(self, state_dict, prefix)

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
        BARTVAEHubInterface.check_pretrained_paths(model_name_or_path, data_name_or_path)
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
        return cls.hub_interface(x["args"], x["task"], x["models"][0])

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
    args.latent_to_output = getattr(args, "latent_to_output", False)
    args.word_dropout = getattr(args, "word_dropout", 0.0)
    args.bn_vae_gamma = getattr(args, "bn_vae_gamma", 0.0)
    args.bow_loss_weight = getattr(args, "bow_loss_weight", 0.0)
    args.bow_head = getattr(args, "bow_head", None) or "linear"
    args.reset_decoder = getattr(args, "reset_decoder", False)
    args.cross_attention_init = getattr(args, "cross_attention_init", None) or "bart"
    args.untie_encoder_embeddings = getattr(args, "untie_encoder_embeddings", False)
    if args.untie_encoder_embeddings:
        # the decoder keeps its input embeddings tied to its output layer
        args.share_all_embeddings = False
