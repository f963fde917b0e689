"""The evidence lower bound as a fairseq criterion (``--criterion elbo``).

Training loss, summed over the batch and normalised by fairseq's sample_size like any
criterion::

    label-smoothed NLL summed over tokens + KL penalty summed over sentences

(plus ``W * bag-of-words NLL`` with the model's ``--bow-loss-weight W``), where the KL
penalty is ``beta * KL`` (beta from the task's schedule, optionally with free bits), or
a capacity objective ``gamma * sum_b |KL_b - C|`` after Burgess et al. (2018), with the
distance taken per sentence (their code takes it on the batch-mean KL, which lets sentences
trade KL among themselves; this form pushes every sentence's KL towards C). Option
combinations that would be silently ignored (free bits or a beta schedule with the capacity
objective) are refused when the criterion is built. The validation ``loss`` is
the plain -ELBO (NLL without label smoothing + KL, beta = 1, no free bits or capacity), so the
default best checkpoint (``--best-checkpoint-metric loss``) is the one with the best ELBO.

Units: ``loss`` and ``nll_loss`` are in bits per token as everywhere in fairseq (so ``ppl``
is the usual 2 ** nll_loss); the VAE quantities ``kl`` and ``elbo`` are in nats per sentence,
the unit of the text-VAE literature.
"""

import math
from dataclasses import dataclass, field
from typing import List, Optional

import torch
from fairseq import utils
from fairseq.criterions import register_criterion
from fairseq.criterions.label_smoothed_cross_entropy import (
    LabelSmoothedCrossEntropyCriterion,
    LabelSmoothedCrossEntropyCriterionConfig,
    label_smoothed_nll_loss,
)
from fairseq.dataclass import ChoiceEnum
from fairseq.logging import metrics
from torch import Tensor

from fairseq_vae.metrics.estimators import IW_CHUNK, iw_estimates

# a latent dimension whose batch-mean KL is above this many nats counts as in use
ACTIVE_DIM_KL = 0.01


@dataclass
class ELBOConfig(LabelSmoothedCrossEntropyCriterionConfig):
    kl_objective: ChoiceEnum(["beta", "capacity"]) = field(
        default="beta",
        metadata={
            "help": "'beta': beta * KL with beta from the task's --kl-schedule (beta-VAE 'H'); "
            "'capacity': gamma * sum over sentences of |KL - C|, with C rising linearly "
            "from 0 to --capacity-max over --capacity-updates updates: Burgess et al. 2018's "
            "beta-VAE 'B' with the distance per sentence, not on the batch-mean KL; it "
            "replaces beta, so --free-bits and the --kl-schedule options are refused with it"
        },
    )
    free_bits: float = field(
        default=0.0,
        metadata={
            "help": "free bits lambda in nats per latent dimension (0: off); the KL of a "
            "dimension below lambda is not penalised (see --free-bits-mode)"
        },
    )
    free_bits_mode: ChoiceEnum(["batch", "example"]) = field(
        default="batch",
        metadata={
            "help": "'batch': clamp each dimension's batch-mean KL at lambda (Kingma et al. "
            "2016); 'example': zero each example's dimension KL below lambda (Optimus)"
        },
    )
    capacity_max: float = field(
        default=25.0,
        metadata={
            "help": "C_max of the capacity objective, nats per sentence (each sentence's KL "
            "is pushed towards C)"
        },
    )
    capacity_updates: int = field(
        default=100000,
        metadata={"help": "updates over which C rises linearly from 0 to --capacity-max"},
    )
    capacity_gamma: float = field(
        default=1000.0,
        metadata={"help": "gamma of the capacity objective (simple_vae_bart used 1000)"},
    )
    valid_iw_samples: int = field(
        default=0,
        metadata={
            "help": "K > 0: validation also logs iw_nll, the importance-weighted NLL with K "
            "posterior samples a sentence (bits a token, like loss; iw_ppl beside it), so "
            "--best-checkpoint-metric iw_nll keeps the checkpoint with the best likelihood "
            "bound rather than the best ELBO; costs K decoder passes a validation batch"
        },
    )


def gaussian_kl(
    mu: Tensor,
    logvar: Tensor,
    prior_mu: Optional[Tensor] = None,
    prior_logvar: Optional[Tensor] = None,
) -> Tensor:
    """KL(N(mu, exp(logvar)) || N(prior_mu, exp(prior_logvar))) per example and dimension
    (B x D), in fp32; the prior is N(0, I) when not given (the sentence VAE), p(z|c) for the
    conditional one."""
    mu, logvar = mu.float(), logvar.float()
    if prior_mu is None:
        return 0.5 * (mu.pow(2) + logvar.exp() - logvar - 1.0)
    prior_mu, prior_logvar = prior_mu.float(), prior_logvar.float()
    return 0.5 * (
        prior_logvar - logvar + (logvar.exp() + (mu - prior_mu).pow(2)) / prior_logvar.exp() - 1.0
    )


def free_bits_kl(kl: Tensor, free_bits: float, mode: str) -> Tensor:
    """The KL to penalise, summed over the batch, with free bits lambda per dimension.

    ``batch``: sum_d max(sum_b kl_bd, B * lambda), i.e. B * sum_d max(mean_b kl_bd, lambda).
    ``example``: sum over b, d of kl_bd where kl_bd > lambda.
    """
    if free_bits <= 0:
        return kl.sum()
    if mode == "batch":
        return kl.sum(dim=0).clamp(min=kl.size(0) * free_bits).sum()
    if mode == "example":
        return (kl * (kl > free_bits).type_as(kl)).sum()
    raise ValueError(f"--free-bits-mode must be batch or example, got {mode}")


def bag_of_words_nll(logits: Tensor, target: Tensor, pad: int) -> Tensor:
    """Zhao et al. (2017)'s bag-of-words loss, summed over the batch: -sum_b sum_t
    log softmax(logits_b)[target_bt] over the non-pad target tokens (B x V logits from z,
    B x T target), in fp32. One distribution per sentence scores all its tokens, so only
    what z says about which words occur can lower it, never their order."""
    lprobs = torch.log_softmax(logits.float(), dim=-1)
    return -(lprobs.gather(1, target) * target.ne(pad)).sum()


def capacity_at(update_num: int, capacity_max: float, capacity_updates: int) -> float:
    """C of the capacity objective: linear from 0 to C_max over N updates, then C_max."""
    if capacity_updates <= 0:
        return capacity_max
    return capacity_max * min(1.0, update_num / capacity_updates)


def capacity_penalty(kl_per_example: Tensor, capacity: float, gamma: float) -> Tensor:
    """gamma * sum_b |KL_b - C|: Burgess et al.'s objective with the distance per sentence
    (theirs is B * gamma * |mean_b KL_b - C| in this summed convention)."""
    return gamma * (kl_per_example - capacity).abs().sum()


def objective_problem(
    kl_objective: str,
    free_bits: float,
    capacity_max: float,
    capacity_updates: int,
    capacity_gamma: float,
    schedule_options: List[str],
) -> Optional[str]:
    """Why the criterion's options cannot work together, or None. ``schedule_options`` are
    the task's beta-schedule options given with other than their default values."""
    if free_bits < 0:
        return f"--free-bits must be >= 0 nats per dimension (0: off), got {free_bits}"
    for option, value in (
        ("--capacity-max", capacity_max),
        ("--capacity-updates", capacity_updates),
        ("--capacity-gamma", capacity_gamma),
    ):
        if value < 0:
            return f"{option} must be >= 0, got {value}"
    if kl_objective != "capacity":
        return None
    if free_bits > 0:
        return (
            f"--free-bits {free_bits} has no effect with --kl-objective capacity (it applies "
            "to the beta objective only): drop one of them"
        )
    if schedule_options:
        return (
            f"{', '.join(schedule_options)}: --kl-objective capacity does not use beta or its "
            "schedule (its weight is --capacity-gamma, its target --capacity-max): drop "
            "them, or use --kl-objective beta"
        )
    return None


@register_criterion("elbo", dataclass=ELBOConfig)
class ELBOCriterion(LabelSmoothedCrossEntropyCriterion):
    def __init__(
        self,
        task,
        sentence_avg,
        label_smoothing,
        kl_objective="beta",
        free_bits=0.0,
        free_bits_mode="batch",
        capacity_max=25.0,
        capacity_updates=100000,
        capacity_gamma=1000.0,
        valid_iw_samples=0,
        ignore_prefix_size=0,
        report_accuracy=False,
    ):
        super().__init__(task, sentence_avg, label_smoothing, ignore_prefix_size, report_accuracy)
        # before training starts; a checkpoint's saved options are history, not checked again
        if not getattr(task, "from_checkpoint", False):
            given = getattr(task, "schedule_options_given", lambda: [])()
            problem = objective_problem(
                str(kl_objective),
                free_bits,
                capacity_max,
                capacity_updates,
                capacity_gamma,
                given,
            )
            if problem:
                raise ValueError(problem)
            if valid_iw_samples < 0:
                raise ValueError(
                    f"--valid-iw-samples must be >= 0 (0: off), got {valid_iw_samples}"
                )
        self.kl_objective = kl_objective
        self.free_bits = free_bits
        self.free_bits_mode = free_bits_mode
        self.capacity_max = capacity_max
        self.capacity_updates = capacity_updates
        self.capacity_gamma = capacity_gamma
        self.valid_iw_samples = valid_iw_samples
        # set by the task before every training step (text_vae.train_step): plain Python
        # numbers, so the schedule never waits on the device
        self.beta = 1.0
        self.update_num = 0
        self.check_finite = True

    def set_schedule_state(self, update_num: int, beta: float, check_finite: bool = True):
        """``check_finite`` is off under fp16 loss scaling, whose scaler skips an overflowing
        batch and lowers the scale: there a non-finite loss is routine, not an error."""
        self.update_num = update_num
        self.beta = beta
        self.check_finite = check_finite

    def forward(self, model, sample, reduce=True):
        net_output = model(**sample["net_input"])
        lprobs, target = self.get_lprobs_and_target(model, net_output, sample)
        smoothed_nll, nll = label_smoothed_nll_loss(
            lprobs, target, self.eps, ignore_index=self.padding_idx, reduce=True
        )
        extra = net_output[1]  # bart_cvae's prior p(z|c) has parameters; N(0, I) has none
        kl = gaussian_kl(
            extra["mu"], extra["logvar"], extra.get("prior_mu"), extra.get("prior_logvar")
        )
        kl_sum = kl.sum()

        beta, capacity = 1.0, None
        if not model.training:
            # the plain -ELBO, no smoothing, beta 1: the validation loss (which picks
            # checkpoint_best.pt by default) compares checkpoints on one fixed scale
            penalty, smoothed_nll = kl_sum, nll
        elif self.kl_objective == "capacity":
            capacity = capacity_at(self.update_num, self.capacity_max, self.capacity_updates)
            penalty = capacity_penalty(kl.sum(dim=1), capacity, self.capacity_gamma)
        else:
            beta = self.beta
            penalty = beta * free_bits_kl(kl, self.free_bits, self.free_bits_mode)
        loss = smoothed_nll.float() + penalty
        bow = None
        if "bow_logits" in net_output[1]:  # the model adds them only in training
            bow = bag_of_words_nll(net_output[1]["bow_logits"], sample["target"], self.padding_idx)
            loss = loss + model.args.bow_loss_weight * bow
        # one scalar read per training step (the trainer reads the gradient norm each step
        # anyway); without it a NaN surfaces only as "gradients are Nan/Inf", naming no term
        if model.training and self.check_finite and not torch.isfinite(loss):
            raise FloatingPointError(
                self.non_finite_message(loss, nll, kl_sum, beta, capacity, bow)
            )

        nsentences = sample["target"].size(0)
        ntokens = sample["ntokens"]
        sample_size = nsentences if self.sentence_avg else ntokens
        active_dims = (kl.mean(dim=0) > ACTIVE_DIM_KL).sum()
        logging_output = {
            "loss": loss.data,
            "nll_loss": nll.data,
            "kl": kl_sum.data,
            # beta and the active-dimension count are per batch: weighting them by the
            # batch's sentences makes their sums over workers and accumulation steps meaningful
            "beta": beta * nsentences,
            "active_dims": active_dims.data * nsentences,
            "ntokens": ntokens,
            "nsentences": nsentences,
            "sample_size": sample_size,
        }
        if capacity is not None:
            logging_output["capacity"] = capacity * nsentences
        if not model.training and self.valid_iw_samples > 0:
            logging_output["iw_nll"] = self.iw_nll(model, net_output[1], sample).data
        if bow is not None:
            logging_output["bow"] = bow.data
        if self.report_accuracy:
            n_correct, total = self.compute_accuracy(model, net_output, sample)
            logging_output["n_correct"] = utils.item(n_correct.data)
            logging_output["total"] = utils.item(total.data)
        return loss, sample_size, logging_output

    def iw_nll(self, model, extra: dict, sample) -> Tensor:
        """-sum over the batch of the K-sample importance-weighted log p(x), in nats.

        The draws come from a generator seeded by the batch's first sentence id, so every
        validation scores a sentence with the same noise: checkpoints are compared on paired
        samples, and the choice of the best one is not a coin toss between close bounds.
        """
        mu, logvar = extra["mu"], extra["logvar"]
        draws = torch.Generator(device=mu.device)
        draws.manual_seed(int(sample["id"][0]) + 1)
        conditional = {}
        if getattr(model.encoder, "conditional", False):  # log p(x|c): p(z|c), c in the memory
            net = sample["net_input"]
            states, mask, mean = model.encoder.source_context(net["src_tokens"], net["src_lengths"])
            conditional = {
                "prior": (extra["prior_mu"], extra["prior_logvar"]),
                "encoder_out_of": model.encoder.encoder_out_for(states, mask, mean),
            }
        estimates = iw_estimates(
            model,
            mu,
            logvar,
            sample["net_input"]["prev_output_tokens"],
            sample["target"],
            self.valid_iw_samples,
            chunk=min(self.valid_iw_samples, IW_CHUNK),
            generator=draws,
            **conditional,
        )
        return -estimates.log_px.sum()

    def non_finite_message(self, loss, nll, kl, beta, capacity, bow=None) -> str:
        """Names the term of a non-finite training loss, for the FloatingPointError."""
        terms = {"NLL": nll.item(), "KL": kl.item()}
        if bow is not None:
            terms["bag-of-words NLL"] = bow.item()
        bad = [name for name, value in terms.items() if not math.isfinite(value)]
        if bad:
            culprit = " and ".join(bad) + (" are" if len(bad) > 1 else " is")
        else:  # all finite: the penalty overflowed (a huge beta or gamma)
            culprit = "the KL penalty is"
        weight = f"C {capacity}" if capacity is not None else f"beta {beta}"
        values = ", ".join(f"{name} {value:.6g}" for name, value in terms.items())
        return (
            f"training loss is {loss.item()} at update {self.update_num}: {culprit} not finite "
            f"({values} nats summed over the batch, {weight}); lower --lr, set --clip-norm, or "
            "train in fp32 or --bf16, not --fp16"
        )

    @classmethod
    def reduce_metrics(cls, logging_outputs) -> None:
        super().reduce_metrics(logging_outputs)

        def total(key):
            return utils.item(sum(log.get(key, 0) for log in logging_outputs))

        nsentences, ntokens = total("nsentences"), total("ntokens")
        if nsentences == 0:
            return
        nll, kl = total("nll_loss"), total("kl")
        metrics.log_scalar("kl", kl / nsentences, nsentences, round=3)
        metrics.log_scalar("elbo", -(nll + kl) / nsentences, nsentences, round=3)
        metrics.log_scalar("elbo_tok", -(nll + kl) / ntokens, ntokens, round=4)
        # fairseq's guard: a -ELBO per token above ~709 nats (a beta = 0 phase) overflows exp
        metrics.log_derived(
            "elbo_ppl", lambda meters: utils.get_perplexity(-meters["elbo_tok"].avg, base=math.e)
        )
        metrics.log_scalar("beta", total("beta") / nsentences, nsentences, round=4)
        metrics.log_scalar("active_dims", total("active_dims") / nsentences, nsentences, round=1)
        if any("iw_nll" in log for log in logging_outputs):
            # bits a token, the unit of loss, so the two read side by side (iw_nll <= loss)
            metrics.log_scalar("iw_nll", total("iw_nll") / ntokens / math.log(2), ntokens, round=3)
            metrics.log_derived("iw_ppl", lambda meters: utils.get_perplexity(meters["iw_nll"].avg))
        if any("capacity" in log for log in logging_outputs):
            metrics.log_scalar("capacity", total("capacity") / nsentences, nsentences, round=3)
        if any("bow" in log for log in logging_outputs):
            # the bag-of-words NLL in nats per sentence (lower: z names more of the words)
            metrics.log_scalar("bow", total("bow") / nsentences, nsentences, round=3)
