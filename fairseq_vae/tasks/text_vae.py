"""Sentence autoencoding with a KL weight schedule (``--task text_vae``).

Every sentence of a monolingual binarised corpus (``fairseq-preprocess --only-source``) is both
the source and the target. Before each training step the task computes beta, the weight of the
KL term, from the update number alone, so a run resumed from a checkpoint continues the
schedule exactly and the schedule never synchronises with the device.

The schedules (``--kl-schedule``) are pure functions in :mod:`fairseq_vae.schedules`. Their
options are checked when the task is set up for training, and the length of a cycle travels in
the checkpoint: a resumed run whose --max-update would change it is refused.

Generation from the prior (``--latent-source prior --prior-samples N``, ``--prior-file F``): a
fitted prior is checked against the model at the first batch; sentence i decodes the i-th draw.

Sentence limits: a split's over-long sentences are skipped with their line numbers, at the
smaller of the task's --max-source/target-positions and the loaded model's own, so that
fairseq-generate and -interactive skip what the checkpoint cannot encode instead of failing.
"""

import contextlib
import dataclasses
import logging
import os
from dataclasses import dataclass, field
from typing import List, Optional

import numpy as np
import torch
from fairseq import utils
from fairseq.data import Dictionary, data_utils
from fairseq.dataclass import ChoiceEnum
from fairseq.tasks import FairseqTask, register_task
from omegaconf import II, DictConfig, open_dict

from ..latent_space.given_latents import PriorDraws, SteeredMeans
from ..latent_space.steering import METHODS
from ..models.latent import latent_draws
from ..schedules import check_schedule_options, kl_beta
from ..text.subword import (
    UNKNOWN_WARNING_SHARE,
    build_bpe,
    corpus_bpe_options,
    unknown_share,
    unknown_warning,
)
from .kl_schedule import (
    KLScheduleConfig,
    freeze_decoder_grads,
    keep_schedule_in_iterator_state,
    step_with_latent_lr_scale,
)
from .latent_sources import LATENT_SOURCES, latent_samples_problem, latent_source
from .text_data import PairedDataset, SkippingLanguagePairDataset, paired_dictionary

logger = logging.getLogger(__name__)


@dataclass
class TextVAEConfig(KLScheduleConfig):
    data: Optional[str] = field(
        default=None,
        metadata={"help": "path to a data-bin folder made by fairseq-preprocess --only-source"},
    )
    source_lang: Optional[str] = field(
        default=None,
        metadata={
            "help": "paired data for bart_cvae: the source side's suffix, as given to "
            "fairseq-preprocess --source-lang (scripts/prepare_data.sh --pairs: src); default: "
            "one side, each sentence its own source and target (bart_vae)"
        },
    )
    target_lang: Optional[str] = field(
        default=None,
        metadata={"help": "paired data: the target side's suffix (--target-lang: tgt)"},
    )
    max_source_positions: int = field(
        default=1024,
        metadata={
            "help": "max number of tokens in a sentence, its end of sentence included; longer "
            "sentences, and empty ones, are skipped with a count in the log"
        },
    )
    max_target_positions: int = field(
        default=1024, metadata={"help": "max number of tokens the decoder produces"}
    )
    latent_source: ChoiceEnum(list(LATENT_SOURCES)) = field(
        default="posterior-mean",
        metadata={
            "help": "what z generation (fairseq-generate, -interactive, the hub) decodes from: "
            "the posterior mean of the source, a posterior sample, or the prior (N(0, I), "
            "--prior-file, or bart_cvae's p(z|c) given each source), or the prior's mean"
        },
    )
    prior_file: Optional[str] = field(
        default=None,
        metadata={
            "help": "a prior fitted to this model's aggregate posterior (fairseq-vae-fit-prior): "
            "with --latent-source prior, generation draws z from it (sentence i decodes the "
            "i-th draw of --seed; bart_cvae: z = mu_p(c) + sigma_p(c) * eps, eps drawn from it "
            "as --latent-samples draws); fairseq-vae-eval reports the IW-NLL and KL under it "
            "beside those under the model's own prior"
        },
    )
    prior_samples: int = field(
        default=0,
        metadata={
            "help": "with --latent-source prior: generate this many sentences instead of "
            "reading a data split (reproducible with --seed); fairseq-vae-eval: measure this "
            "many sentences of each prior against as many real ones"
        },
    )
    latent_samples: int = field(
        default=1,
        metadata={
            "help": "bart_cvae: decode N latents per source, each by the chosen search, as the "
            "source's N hypotheses (H lines; --nbest follows N): N draws of p(z|c) with "
            "--latent-source prior, of q(z|c, x) with posterior-sample; the k-th draw of a "
            "source is fixed by --seed and its id alone"
        },
    )
    direction_file: Optional[str] = field(
        default=None,
        metadata={
            "help": "steering directions fitted to this model (scripts/transfer.py --fit): "
            "generation decodes each source's posterior mean moved to --direction-to"
        },
    )
    direction_to: Optional[str] = field(
        default=None, metadata={"help": "the factor's value to move each sentence to"}
    )
    direction_strength: float = field(
        default=1.0, metadata={"help": "how far, in class-mean differences (1: the whole one)"}
    )
    direction_method: ChoiceEnum(list(METHODS)) = field(
        default="mean",
        metadata={"help": "along the class means' difference, or the latent classifier's normal"},
    )
    direction_confidence: Optional[float] = field(
        default=None,
        metadata={
            "help": "instead of the strength: the smallest move that makes the latent "
            "classifier read --direction-to with this probability"
        },
    )
    seed: int = II("common.seed")
    train_subset: str = II("dataset.train_subset")
    dataset_impl: Optional[str] = II("dataset.dataset_impl")


@register_task("text_vae", dataclass=TextVAEConfig)
class TextVAETask(FairseqTask):
    """Autoencode each sentence through the latent of a ``bart_vae`` model."""

    cfg: TextVAEConfig

    def __init__(
        self,
        cfg: TextVAEConfig,
        dictionary: Dictionary,
        dictionary_file=None,
        from_checkpoint=False,
    ):
        super().__init__(cfg)
        self.dictionary = dictionary
        self.dictionary_file = dictionary_file  # for messages: the dict.txt it was read from
        # set up from a checkpoint's saved options (fairseq-validate, the hub, evaluation):
        # the training options are history then, and are not checked again
        self.from_checkpoint = from_checkpoint
        # (source, target) positions of the models built so far (build_model)
        self.model_max_positions = None
        self.input_lines_read = 0  # fairseq-interactive's lines so far, for messages
        self.typed_sources = 0  # and the sources decoded so far, for their latent draws
        self.first_input_line = 1
        # the z generation decodes when the encoder does not choose it
        # (fairseq_vae.latent_space.given_latents)
        self.prior_draws = PriorDraws(cfg.prior_file, cfg.seed) if cfg.prior_file else None
        self.steering = None
        if cfg.direction_file:
            self.steering = SteeredMeans(
                cfg.direction_file,
                cfg.direction_to,
                cfg.direction_strength,
                str(cfg.direction_method),
                cfg.direction_confidence,
            )

    @classmethod
    def setup_task(cls, cfg: TextVAEConfig, **kwargs):
        paths = utils.split_paths(cfg.data or "")
        if not paths:
            raise ValueError("text_vae needs a data folder: fairseq-train DATA --task text_vae")
        if not os.path.isdir(paths[0]):
            raise FileNotFoundError(
                f"data folder {paths[0]!r} does not exist: pass a data-bin folder made by "
                "fairseq-preprocess --only-source (scripts/prepare_data.sh)"
            )
        dict_path = os.path.join(paths[0], "dict.txt")
        if cfg.source_lang or cfg.target_lang:
            dict_path = paired_dictionary(paths[0], cfg.source_lang, cfg.target_lang)
        if not os.path.isfile(dict_path):
            raise FileNotFoundError(
                f"no dictionary at {dict_path}: is {paths[0]!r} a data-bin folder made by "
                "fairseq-preprocess --only-source (scripts/prepare_data.sh)?"
            )
        from_checkpoint = bool(kwargs.get("from_checkpoint", False))
        if not from_checkpoint:
            check_schedule_options(cfg)
            if cfg.prior_file and str(cfg.latent_source) != "prior":
                raise ValueError(
                    f"--prior-file {cfg.prior_file} is a prior to sample from: generate with "
                    f"--latent-source prior (not {cfg.latent_source})"
                )
            latent_samples_problem(cfg)
            if cfg.direction_file and str(cfg.latent_source) != "posterior-mean":
                raise ValueError(
                    f"--direction-file {cfg.direction_file} moves each source's posterior mean: "
                    f"generate with --latent-source posterior-mean (not {cfg.latent_source})"
                )
        dictionary = Dictionary.load(dict_path)
        logger.info(f"dictionary: {len(dictionary)} types ({dict_path})")
        return cls(cfg, dictionary, dict_path, from_checkpoint=from_checkpoint)

    @property
    def paired(self) -> bool:
        return bool(self.cfg.source_lang)

    def build_model(self, cfg, from_checkpoint=False):
        model = super().build_model(cfg, from_checkpoint)
        conditional = getattr(model.encoder, "conditional", False)
        if conditional != self.paired:
            raise ValueError(
                "bart_cvae learns a target given a source: give it paired data "
                "(--source-lang src --target-lang tgt)"
                if conditional
                else "paired data (--source-lang, --target-lang) is for --arch bart_cvae; "
                "bart_vae autoencodes the sentences of one side"
            )
        # fairseq-generate and -interactive set the task up from their command line (1024
        # positions by default) and only then load the checkpoint's model: its limits are
        # the ones the skip of over-long sentences must use
        limits = tuple(int(n) for n in model.max_positions())
        if self.model_max_positions is not None:
            limits = tuple(map(min, limits, self.model_max_positions))
        self.model_max_positions = limits
        return model

    def schedule_options_given(self) -> List[str]:
        """The beta schedule's options that differ from their defaults, as ``--option value``
        (for the criterion, which refuses them where its objective ignores beta)."""
        given = []
        for f in dataclasses.fields(TextVAEConfig):
            if f.name.startswith(("kl_", "sawtooth_")):
                value = getattr(self.cfg, f.name)
                if str(value) != str(f.default):
                    given.append(f"--{f.name.replace('_', '-')} {value}")
        return given

    def load_dataset(self, split, epoch=1, combine=False, **kwargs):
        if self.cfg.latent_source == "prior" and self.cfg.prior_samples > 0:
            # N one-token sources with no target: fairseq-generate needs only ids and
            # src_tokens, and the encoder draws z from the prior for each
            eos = torch.tensor([self.dictionary.eos()])
            n = self.cfg.prior_samples
            self.datasets[split] = self.build_dataset_for_inference(
                [eos] * n, [1] * n, typed_input=False
            )
            return
        if self.paired:
            self.datasets[split] = self.load_pairs(split, epoch, combine)
            return
        if self.cfg.latent_source == "prior" and not self.from_checkpoint:  # draws as "hypotheses"
            raise ValueError(
                f"--latent-source prior decodes z from the prior, not from the sentences of "
                f"{split!r}: give --prior-samples N to generate N"
            )
        paths = utils.split_paths(self.cfg.data)
        if split != self.cfg.train_subset:
            paths = paths[:1]  # valid and test come from the first folder, as in fairseq
        data_path = paths[(epoch - 1) % len(paths)]
        split_path = os.path.join(data_path, split)
        if os.path.isfile(split_path + ".bin") and os.path.getsize(split_path + ".bin") == 0:
            # fairseq would fail deep inside with "cannot mmap an empty file"
            raise ValueError(f"split {split!r} is empty: {split_path}.bin holds no sentences")
        sentences = data_utils.load_indexed_dataset(
            split_path, self.dictionary, self.cfg.dataset_impl, combine=combine
        )
        if sentences is None:
            raise FileNotFoundError(f"split {split!r} not found: no {split_path}.bin/.idx")
        logger.info(f"{split_path}: {len(sentences)} sentences")
        self.datasets[split] = SkippingLanguagePairDataset(
            self.sentences_to_skip(sentences.sizes, split_path),
            sentences,
            sentences.sizes,
            self.dictionary,
            sentences,
            sentences.sizes,
            self.dictionary,
            left_pad_source=False,
            left_pad_target=False,
        )

    def load_pairs(self, split: str, epoch: int, combine: bool) -> PairedDataset:
        """The split's sources and targets (fairseq-preprocess --source-lang --target-lang
        names them {split}.{src}-{tgt}.{src|tgt}), a pair skipped where either side is empty
        or too long."""
        src, tgt = self.cfg.source_lang, self.cfg.target_lang
        paths = utils.split_paths(self.cfg.data)
        data_path = paths[(epoch - 1) % len(paths)] if split == self.cfg.train_subset else paths[0]
        prefix = os.path.join(data_path, f"{split}.{src}-{tgt}.")
        sides = []
        for lang in (src, tgt):
            side = data_utils.load_indexed_dataset(
                prefix + lang, self.dictionary, self.cfg.dataset_impl, combine=combine
            )
            if side is None:
                raise FileNotFoundError(f"split {split!r}: no {prefix}{lang}.bin/.idx")
            sides.append(side)
        if len(sides[0]) != len(sides[1]):
            raise ValueError(
                f"split {split!r}: {prefix}{src} has {len(sides[0])} sentences but "
                f"{prefix}{tgt} has {len(sides[1])}: the two sides must pair line by line"
            )
        logger.info(f"{prefix}{src}-{tgt}: {len(sides[0])} pairs")
        skip = self.sentences_to_skip(sides[0].sizes, prefix + src)
        skip |= self.sentences_to_skip(sides[1].sizes, prefix + tgt)
        if skip.all():
            raise ValueError(f"{prefix}{src}-{tgt}: no pair has both sides usable")
        return PairedDataset(
            skip, sides[0], sides[0].sizes, self.dictionary, sides[1], sides[1].sizes,
            self.dictionary, left_pad_source=False, left_pad_target=False,
        )  # fmt: skip

    def sentences_to_skip(self, sizes: np.ndarray, split_path: str) -> np.ndarray:
        """Marks empty sentences and those too long for the model, and logs how many."""
        max_len = min(self.max_positions())  # each sentence is the source and the target
        # sizes count the end of sentence fairseq-preprocess appends: 1 is an empty line
        empty, too_long = sizes <= 1, sizes > max_len
        longer = (
            f"longer than {max_len} tokens (the smallest of the model's positions and "
            "--max-source-positions, --max-target-positions)"
        )
        reasons = [("empty", empty), (longer, too_long)]
        for reason, skip in reasons:
            if skip.any():
                lines = [str(i + 1) for i in np.flatnonzero(skip)[:5]]  # index i is line i + 1
                more = ", ..." if skip.sum() > 5 else ""
                logger.warning(
                    f"{split_path}: skipping {skip.sum()} of {len(sizes)} sentences, {reason} "
                    f"(lines {', '.join(lines)}{more} of the text it was binarised from)"
                )
        if (empty | too_long).all():
            raise ValueError(f"{split_path}: every sentence is empty or over {max_len} tokens")
        return empty | too_long

    def get_interactive_tokens_and_lengths(self, lines, encode_fn):
        # fairseq-interactive reads its input in chunks (--buffer-size) and calls this once
        # per chunk, then build_dataset_for_inference: count lines to name a skipped one
        self.first_input_line = self.input_lines_read + 1
        self.input_lines_read += len(lines)
        return super().get_interactive_tokens_and_lengths(lines, encode_fn)

    def build_dataset_for_inference(
        self, src_tokens, src_lengths, constraints=None, typed_input=True
    ):
        """Sources for fairseq-interactive (and, with ``typed_input`` False, prior sampling's
        one-token placeholders). Typed lines that are empty or longer than the model's
        positions are left out with a warning naming their input lines (fairseq would decode
        an empty line as a sentence, and stop at an over-long one with "Size of sample is
        invalid"); a line that is mostly <unk> is decoded with a warning."""
        max_len = self.max_positions()[0]
        too_long = np.array([int(n) > max_len for n in src_lengths], dtype=bool)
        empty = np.array([typed_input and int(n) <= 1 for n in src_lengths], dtype=bool)
        for skip, reason in (
            (
                too_long,
                f"longer than {max_len} tokens (the model's positions, --max-source-positions)",
            ),
            (empty, "empty"),
        ):
            if skip.any():
                lines = [str(self.first_input_line + i) for i in np.flatnonzero(skip)]
                logger.warning(
                    f"skipping input line {', '.join(lines)}: {reason}; nothing is generated for it"
                )
        if typed_input:
            unk, eos = self.dictionary.unk(), self.dictionary.eos()
            for i, tokens in enumerate(src_tokens):
                share = unknown_share(tokens, unk, eos)
                if share > UNKNOWN_WARNING_SHARE:
                    where = f"input line {self.first_input_line + i}"
                    logger.warning(unknown_warning(where, share))
        # constraints: fairseq-interactive --constraints, words each output must contain
        return SkippingLanguagePairDataset(
            too_long | empty,
            src_tokens,
            src_lengths,
            self.dictionary,
            tgt_dict=self.dictionary,
            left_pad_source=False,
            constraints=constraints,
        )

    def get_batch_iterator(self, dataset, **kwargs):
        training = dataset is self.datasets.get(self.cfg.train_subset)
        if not training:
            # fairseq cuts batches to a multiple of --required-batch-size-multiple (default 8)
            # and can drop a remainder; evaluation and generation must see every sentence
            kwargs["required_batch_size_multiple"] = 1
        iterator = super().get_batch_iterator(dataset, **kwargs)
        return keep_schedule_in_iterator_state(iterator, self.cfg) if training else iterator

    def build_generator(self, models, args, *rest, **kwargs):
        if self.cfg.latent_samples > 1:  # fairseq-generate prints --nbest hypotheses a source
            with open_dict(args) if isinstance(args, DictConfig) else contextlib.nullcontext():
                args.nbest = max(args.nbest, self.cfg.latent_samples)
        return super().build_generator(models, args, *rest, **kwargs)

    def inference_step(self, generator, models, sample, prefix_tokens=None, constraints=None):
        if self.cfg.latent_samples > 1 or (self.paired and self.prior_draws is not None):
            return self.several_latents_step(generator, models, sample, prefix_tokens)
        source = LATENT_SOURCES[str(self.cfg.latent_source)]
        z = None
        if source == "prior" and self.prior_draws is not None:
            known = [self.cfg.prior_samples] + [len(d) for d in self.datasets.values()]
            z = self.prior_draws.latents(models, sample, known)
        elif source == "mean" and self.steering is not None:
            z = self.steering.latents(models, sample)
        if z is not None:  # the encoder decodes a given z whatever its latent source
            sample = dict(sample, net_input=dict(sample["net_input"], z=z))
        with latent_source(models, source):
            return super().inference_step(generator, models, sample, prefix_tokens, constraints)

    def several_latents_step(self, generator, models, sample, prefix_tokens=None):
        """Each source decoded from --latent-samples N latents: the batch repeated N times
        (source i's copies are rows i*N .. i*N+N-1) with the draws latent_draws fixes, and
        each copy's best hypothesis kept, N hypotheses a source. With --prior-file the draws
        are the fitted prior's, of bart_cvae's standardised latent (``latent_draws``)."""
        n, net = self.cfg.latent_samples, sample["net_input"]
        if "id" in sample:
            ids = sample["id"].tolist()
        else:  # fairseq-interactive's batches have no ids: the typed sources' count is theirs
            start = self.typed_sources
            self.typed_sources += len(net["src_tokens"])
            ids = list(range(start, self.typed_sources))
        expanded = {k: v.repeat_interleave(n, dim=0) for k, v in net.items() if v is not None}
        prior = None if self.prior_draws is None else self.prior_draws.fitted(models)
        dim = models[0].encoder.latent_dim
        expanded["eps"] = latent_draws(self.cfg.seed, ids, n, dim, prior)
        expanded["eps"] = expanded["eps"].to(net["src_tokens"].device)
        if prefix_tokens is not None:
            prefix_tokens = prefix_tokens.repeat_interleave(n, dim=0)
        copies = dict(sample, net_input=expanded, id=torch.tensor(ids).repeat_interleave(n))
        with latent_source(models, LATENT_SOURCES[str(self.cfg.latent_source)]):
            hypos = super().inference_step(generator, models, copies, prefix_tokens)
        if n == 1:  # one latent a source: the search's --nbest hypotheses of it
            return hypos
        return [[hypos[i * n + k][0] for k in range(n)] for i in range(len(ids))]

    def beta(self, update_num: int) -> float:
        return kl_beta(update_num, self.cfg)

    def train_step(self, sample, model, criterion, optimizer, update_num, ignore_grad=False):
        if hasattr(criterion, "set_schedule_state"):
            loss_scaling = getattr(optimizer, "scaler", None) is not None  # --fp16
            criterion.set_schedule_state(update_num, self.beta(update_num), not loss_scaling)
        out = super().train_step(sample, model, criterion, optimizer, update_num, ignore_grad)
        if update_num < self.cfg.freeze_decoder_updates:
            freeze_decoder_grads(model)
        return out

    def optimizer_step(self, optimizer, model, update_num):
        if self.cfg.latent_lr_scale == 1.0:
            return optimizer.step()
        step_with_latent_lr_scale(optimizer, model, self.cfg.latent_lr_scale)

    def max_positions(self):
        limits = (self.cfg.max_source_positions, self.cfg.max_target_positions)
        if self.model_max_positions is not None:
            limits = tuple(map(min, limits, self.model_max_positions))
        return limits

    def build_bpe(self, args):
        """``--bpe`` when given, else the corpus's own subword files in the data folder, so that
        fairseq-generate and fairseq-interactive read and print raw text by default."""
        if args is None or getattr(args, "_name", getattr(args, "bpe", None)) is None:
            return build_bpe(corpus_bpe_options(self.cfg.data))
        return super().build_bpe(args)

    @property
    def source_dictionary(self):
        return self.dictionary

    @property
    def target_dictionary(self):
        return self.dictionary
