"""Raw text in, latents out, and back: the Python interface to a trained bart_vae.

>>> vae = BARTVAEModel.from_pretrained("checkpoints/demo", "checkpoint_last.pt", "data-bin/synth")
>>> mu, logvar = vae.encode(["the team won the match ."])      # 1 x latent each
>>> vae.reconstruct(["the team won the match ."])             # greedy from the posterior mean
>>> vae.sample(3, sampling=True, sampling_topp=0.9)            # from the prior N(0, I)
>>> vae.sample(3, seed=1, prior="checkpoints/demo/prior-gmm.pt")  # from a fitted prior
>>> vae.interpolate("our soup was dull at home .", "a dish will be wonderful at the market .")
>>> d = vae.directions(sentences, "corpus/synth/train.labels.tsv", factor="tense")
>>> vae.transfer(["the team won the match ."], d, to="present")  # along the class means
>>> vae.analogy("the team won .", "the team wins .", "a man ate bread .")

Subword segmentation (the corpus's sentencepiece model, or GPT-2 BPE for BART data) is applied
and removed for the caller. Generation options are fairseq's (``beam``, ``sampling``,
``sampling_topk``, ``sampling_topp``, ``max_len_b``, ``nbest``...), passed as keywords; a name
fairseq's generation config lacks is an error. A sentence longer than the model's positions, or
an empty one, is an error naming its index (fairseq-interactive and the scripts skip such an
input line, naming it; cutting it would decode another sentence). ``seed=`` makes the prior
draw and ``sampling=True``'s word draws reproducible
without touching the global random state.
"""

import contextlib
import copy
import difflib
import logging
import os
from typing import List, Optional, Sequence, Tuple, Union

import torch
import torch.nn as nn
from fairseq import utils
from omegaconf import open_dict
from torch import Tensor

from ..latent_space.prior import Prior, StandardNormalPrior
from ..latent_space.prior_file import check_model, load_prior
from ..latent_space.steering import (
    Directions,
    analogy_latents,
    fit_directions,
    load_directions,
    move_latents,
)
from ..text.subword import UNKNOWN_WARNING_SHARE, unknown_share, unknown_warning
from .latent import reparameterize

logger = logging.getLogger(__name__)


def interpolate_latents(z_a: Tensor, z_b: Tensor, steps: int, spherical: bool = False) -> Tensor:
    """``steps`` latents from z_a to z_b inclusive (steps x D): linear, or spherical.

    The spherical path turns z_a's direction into z_b's at a constant angular speed (slerp of
    the directions) while the norm moves linearly from |z_a| to |z_b|: for latents of equal
    norm this is the usual slerp, and unequal norms never make the path bulge or, near
    antiparallel latents, blow up (the usual formula divides by sin(angle)).
    """
    if steps < 2:
        raise ValueError(f"interpolation needs at least 2 steps, got {steps}")
    t = torch.linspace(0.0, 1.0, steps, dtype=z_a.dtype, device=z_a.device)[:, None]
    path = (1 - t) * z_a + t * z_b
    if spherical:
        path = spherical_path(z_a, z_b, t)
    path[0], path[-1] = z_a, z_b  # the endpoints are exactly the given latents
    return path


def spherical_path(z_a: Tensor, z_b: Tensor, t: Tensor) -> Tensor:
    """The points of slerp at the fractions t (steps x 1), each with the interpolated norm."""
    norm_a, norm_b = z_a.norm(), z_b.norm()
    if float(norm_a) == 0 or float(norm_b) == 0:  # no direction to turn: the norm alone moves
        return (1 - t) * z_a + t * z_b
    u = z_a / norm_a
    cos = torch.dot(u, z_b / norm_b).clamp(-1.0, 1.0)
    # v: the unit direction orthogonal to u in the plane of the turn
    v = z_b / norm_b - cos * u
    if float(v.norm()) < 1e-6:
        if float(cos) > 0 or u.numel() == 1:  # parallel, or a line (1-D): nowhere to turn
            return (1 - t) * z_a + t * z_b
        # antiparallel: every half great circle from u to -u is a slerp; take the one through
        # the axis least aligned with u, made orthogonal to it (reproducible, and finite)
        v = torch.zeros_like(u)
        v[u.abs().argmin()] = 1.0
        v = v - torch.dot(v, u) * u
        cos = torch.tensor(-1.0, dtype=u.dtype, device=u.device)
    angle = torch.arccos(cos) * t  # steps x 1
    directions = torch.cos(angle) * u + torch.sin(angle) * (v / v.norm())  # steps x D
    return ((1 - t) * norm_a + t * norm_b) * directions


def generate_from_latents(
    generator, model, z: Tensor, batch_size: int, batch_sources=None
) -> List[List[dict]]:
    """fairseq's hypotheses for each latent in z (N x latent, on the model's device), decoded
    ``batch_size`` at a time by ``generator`` (a task's ``build_generator``).

    The encoder takes the given z and ignores the source; the search reads the source's length
    only (``max_len_a``, ``match_source_len``). ``batch_sources(start, end)`` gives the
    (src_tokens, src_lengths) of rows start..end-1; without it each source is one </s>.
    """
    eos = model.decoder.dictionary.eos()
    results = []
    for start in range(0, z.size(0), batch_size):
        z_batch = z[start : start + batch_size]
        n = z_batch.size(0)
        if batch_sources is None:
            src_tokens = torch.full((n, 1), eos, device=z.device)
            src_lengths = torch.ones(n, dtype=torch.long, device=z.device)
        else:
            src_tokens, src_lengths = batch_sources(start, start + n)
        sample = {
            "id": torch.arange(n, device=z.device),
            "net_input": {"src_tokens": src_tokens, "src_lengths": src_lengths, "z": z_batch},
        }
        results.extend(generator.generate([model], sample))
    return results


class BARTVAEHubInterface(nn.Module):
    """Encode sentences to q(z|x), decode latents to sentences, sample and interpolate."""

    def __init__(self, cfg, task, model, batch_size: int = 64):
        super().__init__()
        self.cfg = cfg
        self.task = task
        self.model = model
        self.batch_size = batch_size
        self.dictionary = task.source_dictionary
        # the task's: the corpus's own subword files unless the config names a --bpe
        self.bpe = task.build_bpe(cfg.bpe)
        self.tokenizer = task.build_tokenizer(cfg.tokenizer)
        self.model.eval()
        # tells the device and dtype the model lives on
        self.register_buffer("_float_tensor", torch.tensor([0], dtype=torch.float))

    @staticmethod
    def check_pretrained_paths(model_name_or_path, data_name_or_path):
        """What BARTVAEModel.from_pretrained is given, checked before fairseq reads it: fairseq
        turns a folder it cannot find into None, and reports a TypeError about None (the model
        folder) or a data folder '' (the data folder) instead of naming the folder."""
        model = str(model_name_or_path or "")
        if "://" not in model and not os.path.exists(model):
            raise FileNotFoundError(f"model folder {model!r} does not exist")
        if not data_name_or_path:
            raise ValueError(
                "data_name_or_path is empty: give the data-bin folder that holds dict.txt"
            )
        data = str(data_name_or_path)
        if data.startswith("."):  # fairseq's convention: relative to the model folder
            data = os.path.join(model, data)
        folder = utils.split_paths(data)[0]
        if "://" not in folder and not os.path.isdir(folder):
            raise FileNotFoundError(
                f"data folder {folder!r} does not exist (data_name_or_path="
                f"{data_name_or_path!r}): give the data-bin folder that holds dict.txt"
            )

    @property
    def device(self):
        return self._float_tensor.device

    @property
    def latent_dim(self) -> int:
        return self.model.encoder.latent_dim

    # --- text <-> tokens -------------------------------------------------------------------
    def to_tokens(self, sentence: str) -> Tensor:
        """The sentence's token ids with </s> (tokens_of checks them against the model)."""
        raw = sentence
        if self.tokenizer is not None:
            sentence = self.tokenizer.encode(sentence)
        if self.bpe is not None:
            sentence = self.bpe.encode(sentence)
        tokens = self.dictionary.encode_line(sentence, add_if_not_exist=False).long()
        share = unknown_share(tokens, self.dictionary.unk(), self.dictionary.eos())
        if share > UNKNOWN_WARNING_SHARE:
            logger.warning(unknown_warning(f"sentence {raw!r}", share))
        return tokens

    def tokens_of(self, sentences: Sequence[str]) -> List[Tensor]:
        """The token rows of the sentences; an empty one (nothing but </s>) is an error: it
        has no words for the posterior, and the training data never holds one (fairseq's
        tools skip empty lines); so is one longer than the encoder's positions."""
        rows = [self.to_tokens(s) for s in sentences]
        limit = self.max_tokens()
        for i, (sentence, row) in enumerate(zip(sentences, rows)):
            if len(row) <= 1:
                raise ValueError(
                    f"sentence {i} is empty ({sentence!r}): give at least one word to encode"
                )
            if len(row) > limit:
                raise ValueError(
                    f"sentence {i} has {len(row)} tokens, more than the model's {limit} "
                    "positions: shorten or split it"
                )
        return rows

    def max_tokens(self) -> int:
        """The most tokens (with </s>) a sentence may have: the encoder's positions."""
        return int(self.model.encoder.max_positions())

    def to_text(self, tokens: Tensor) -> str:
        sentence = self.dictionary.string(tokens)
        if self.bpe is not None:
            sentence = self.bpe.decode(sentence)
        if self.tokenizer is not None:
            sentence = self.tokenizer.decode(sentence)
        return sentence

    # --- the latent space --------------------------------------------------------------------
    def batch(self, rows: List[Tensor]) -> Tuple[Tensor, Tensor]:
        """Right-padded N x T tokens (as in training) and the N lengths, on the model's device."""
        lengths = torch.tensor([len(r) for r in rows])
        tokens = torch.full((len(rows), int(lengths.max())), self.dictionary.pad())
        for i, row in enumerate(rows):
            tokens[i, : len(row)] = row
        return tokens.to(self.device), lengths.to(self.device)

    @torch.no_grad()
    def encode_tokens(self, rows: List[Tensor]) -> Tuple[Tensor, Tensor]:
        """(mu, logvar), each N x latent in fp32, of N token rows (each ending in </s>)."""
        mus = [torch.empty(0, self.latent_dim, device=self.device)]
        logvars = [torch.empty(0, self.latent_dim, device=self.device)]
        for start in range(0, len(rows), self.batch_size):
            mu, logvar = self.model.encoder.posterior(
                *self.batch(rows[start : start + self.batch_size])
            )
            mus.append(mu)
            logvars.append(logvar)
        return torch.cat(mus), torch.cat(logvars)

    def encode(self, sentences: Sequence[str]) -> Tuple[Tensor, Tensor]:
        """The posterior q(z|x) of each sentence: (mu, logvar), each N x latent, fp32."""
        sentences = [sentences] if isinstance(sentences, str) else list(sentences)
        return self.encode_tokens(self.tokens_of(sentences))

    def latent(self, sentences: Sequence[str], sample: bool = False) -> Tensor:
        """z for each sentence: the posterior mean, or a posterior sample (N x latent)."""
        mu, logvar = self.encode(sentences)
        return reparameterize(mu, logvar) if sample else mu

    def generation_config(self, generation_options: dict):
        """The checkpoint's generation config with the caller's options (greedy by default)."""
        gen_args = copy.deepcopy(self.cfg.generation)
        for key in generation_options:
            if key not in gen_args:
                close = difflib.get_close_matches(key, list(gen_args), n=1)
                hint = f" (did you mean {close[0]!r}?)" if close else ""
                raise TypeError(
                    f"unknown generation option {key!r}{hint}: fairseq's are "
                    f"{', '.join(sorted(gen_args))}"
                )
        with open_dict(gen_args):
            gen_args.beam = 1
            for key, value in generation_options.items():
                setattr(gen_args, key, value)
        return gen_args

    @torch.no_grad()
    def decode_hypotheses(
        self,
        z: Tensor,
        sources: Optional[List[Tensor]] = None,
        seed: Optional[int] = None,
        **generation_options,
    ) -> List[List[dict]]:
        """fairseq's hypotheses (tokens, score, ...) for each latent in z (N x latent).

        ``sources`` (N token rows) are the sentences the latents came from: the encoder ignores
        them (it takes the given z), but the search reads their lengths for ``max_len_a`` and
        ``match_source_len``. ``seed`` fixes the word draws of ``sampling=True``; the global
        random state is restored afterwards.
        """
        z = z.to(self.device).float().reshape(-1, self.latent_dim)
        if sources is None and generation_options.get("match_source_len"):
            raise ValueError(
                "match_source_len needs the source sentences: use reconstruct(), not "
                "decode(), sample() or interpolate()"
            )
        generator = self.task.build_generator(
            [self.model], self.generation_config(generation_options)
        )

        def batch_sources(start, end):
            return self.batch(sources[start:end])

        with utils.set_torch_seed(seed) if seed is not None else contextlib.nullcontext():
            return generate_from_latents(
                generator,
                self.model,
                z,
                self.batch_size,
                batch_sources if sources is not None else None,
            )

    def decode(self, z: Tensor, **options) -> List[str]:
        """The best sentence decoded from each latent in z (N x latent)."""
        return [self.to_text(hypos[0]["tokens"]) for hypos in self.decode_hypotheses(z, **options)]

    def load_prior(self, path: str) -> Prior:
        """The prior in ``path`` (fairseq-vae-fit-prior), refused unless it was fitted to this
        model; load it once to pass to ``sample`` many times."""
        return load_prior(path, expected_model=self.model)

    def sample(
        self,
        n: int,
        seed: Optional[int] = None,
        prior: Union[Prior, str, None] = None,
        **generation_options,
    ) -> List[str]:
        """n sentences decoded from z ~ prior: N(0, I), or a fitted prior (a ``Prior`` or the
        path of its file). ``seed`` fixes z (``prior.sample(n, torch.Generator().manual_seed(
        seed))``, as ``fairseq-generate --prior-file --seed`` draws it) and the word draws."""
        if prior is None:
            prior = StandardNormalPrior(self.latent_dim)
        elif isinstance(prior, str):
            prior = self.load_prior(prior)
        else:
            self.check_prior(prior)
        generator = None
        if seed is not None:
            generator = torch.Generator().manual_seed(seed)  # priors draw on the CPU
        z = prior.sample(n, generator=generator)
        return self.decode(z, seed=seed, **generation_options)

    def check_prior(self, prior: Prior):
        """A ValueError unless ``prior`` has this model's latent size and, when it was read from
        a file that names its model, was fitted to this model."""
        if not isinstance(prior, Prior):
            raise TypeError(f"prior must be a Prior or a prior file's path, got {type(prior)}")
        if prior.latent_dim != self.latent_dim:
            raise ValueError(
                f"the {prior.kind} prior has latent size {prior.latent_dim} but this model has "
                f"latent size {self.latent_dim}"
            )
        if prior.meta.get("model_sha256"):
            check_model("given to sample()", prior.meta, self.model, "this hub's model")

    def reconstruct(self, sentences: Sequence[str], **options) -> List[str]:
        """Each sentence decoded from its posterior mean (greedy unless told otherwise)."""
        sentences = [sentences] if isinstance(sentences, str) else list(sentences)
        rows = self.tokens_of(sentences)
        mu, _ = self.encode_tokens(rows)
        return [self.to_text(h[0]["tokens"]) for h in self.decode_hypotheses(mu, rows, **options)]

    def interpolate(
        self, a: str, b: str, steps: int = 5, spherical: bool = False, **generation_options
    ) -> List[str]:
        """Sentences decoded along the path between the posterior means of a and b."""
        z = self.latent([a, b])
        return self.decode(interpolate_latents(z[0], z[1], steps, spherical), **generation_options)

    # --- steering (fairseq_vae.latent_space.steering) ---------------------------------------
    def directions(
        self, sentences: Sequence[str], labels: Union[Sequence[str], str], factor: str
    ) -> Directions:
        """The directions of ``factor`` fitted to the posterior means of labelled sentences:
        ``labels`` is one value per sentence, or a labels TSV (a header of factor names, then
        a row per sentence, as ``fairseq-vae-eval --labels`` reads) with a column ``factor``."""
        if isinstance(labels, str):
            from ..metrics.estimators import read_labels

            table = read_labels(labels, len(sentences))
            if factor not in table:
                raise ValueError(
                    f"{labels} has no column {factor!r}; its factors: {', '.join(table)}"
                )
            labels = table[factor]
        mu, _ = self.encode(sentences)
        return fit_directions(mu.cpu(), list(labels), factor)

    def load_directions(self, path: str) -> Directions:
        """Directions saved by ``fairseq_vae.latent_space.steering.save_directions``
        (scripts/transfer.py --fit), refused unless they were fitted to this model."""
        return load_directions(path, self.model)

    def steered_latents(
        self,
        z: Tensor,
        directions: Union[Directions, str],
        to: str,
        strength: float = 1.0,
        method: str = "mean",
        confidence: Optional[float] = None,
    ) -> Tensor:
        """z moved to the value ``to``: along the directions (``method``, ``strength``) or, with
        ``confidence``, the smallest move the latent classifier reads as ``to`` that sure."""
        if isinstance(directions, str):
            directions = self.load_directions(directions)
        return move_latents(z, directions, to, strength, method, confidence)

    def transfer(
        self,
        sentences: Sequence[str],
        directions: Union[Directions, str],
        to: str,
        strength: float = 1.0,
        method: str = "mean",
        confidence: Optional[float] = None,
        **generation_options,
    ) -> List[str]:
        """Each sentence decoded from its posterior mean moved to the factor's value ``to``
        (``steered_latents``), greedy unless told otherwise."""
        sentences = [sentences] if isinstance(sentences, str) else list(sentences)
        rows = self.tokens_of(sentences)
        mu, _ = self.encode_tokens(rows)
        z = self.steered_latents(mu, directions, to, strength, method, confidence)
        return [
            self.to_text(h[0]["tokens"]) for h in self.decode_hypotheses(z, **generation_options)
        ]

    def analogy(self, a, b, c, strength: float = 1.0, **generation_options):
        """a : b :: c : d, d decoded from z_c + strength * (z_b - z_a) (posterior means); a, b
        and c are sentences, or lists of the same length (a list of d back)."""
        single = isinstance(a, str)
        a, b, c = ([x] if isinstance(x, str) else list(x) for x in (a, b, c))
        if not len(a) == len(b) == len(c):
            raise ValueError(f"analogy: {len(a)}, {len(b)} and {len(c)} sentences for a, b, c")
        n = len(a)
        z = self.latent(a + b + c)
        d = analogy_latents(z[:n], z[n : 2 * n], z[2 * n :], strength)
        d = self.decode(d, **generation_options)
        return d[0] if single else d
