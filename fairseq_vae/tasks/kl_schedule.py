"""The KL weight schedule's options, shared by every task that trains a VAE, and the record
of its cycle length that travels in a checkpoint (the schedules themselves are pure functions
in :mod:`fairseq_vae.schedules`)."""

from dataclasses import dataclass, field

import torch
from fairseq.dataclass import ChoiceEnum, FairseqDataclass
from omegaconf import II

from ..models.latent import LATENT_MODULES
from ..schedules import KL_SCHEDULES, RAMP_SHAPES, check_resumed_schedule, schedule_record


@dataclass
class KLScheduleConfig(FairseqDataclass):
    kl_schedule: ChoiceEnum(KL_SCHEDULES) = field(
        default="cyclical",
        metadata={"help": "how beta, the KL weight, moves with the update number"},
    )
    kl_beta_max: float = field(
        default=1.0, metadata={"help": "beta at the top of the ramp (and of 'constant')"}
    )
    kl_cycles: int = field(
        default=4,
        metadata={"help": "cyclical: number of cycles M over --max-update"},
    )
    kl_cycle_updates: int = field(
        default=0,
        metadata={
            "help": "cyclical/monotonic: cycle length in updates (overrides --kl-cycles; "
            "needed when --max-update is not set)"
        },
    )
    kl_ramp_fraction: float = field(
        default=0.5,
        metadata={"help": "cyclical/monotonic: fraction R of a cycle over which beta ramps up"},
    )
    kl_zero_fraction: float = field(
        default=0.0,
        metadata={
            "help": "cyclical/monotonic: fraction of a cycle held at beta = 0 before the ramp "
            "(Fu et al.'s frange_cycle_zero_linear, used by Optimus: 0.25 with a ramp of 0.25)"
        },
    )
    kl_final_hold: float = field(
        default=0.0,
        metadata={
            "help": "cyclical: the last fraction H of --max-update held at --kl-beta-max, the "
            "cycles sharing the rest; on a short run the last cycle's beta = 0 phase can blow "
            "the KL up with too few updates left to bring it back (0: off)"
        },
    )
    kl_ramp_shape: ChoiceEnum(RAMP_SHAPES) = field(
        default="linear",
        metadata={
            "help": "cyclical/monotonic ramp: linear v, sigmoid 1/(1+exp(-(12v-6))), "
            "cosine 0.5-0.5cos(pi v)"
        },
    )
    sawtooth_period: int = field(
        default=200, metadata={"help": "sawtooth: period in updates (simple_vae_bart: 200)"}
    )
    sawtooth_ratio: float = field(
        default=0.99,
        metadata={"help": "sawtooth: fraction of the period that ramps (simple_vae_bart: 0.99)"},
    )
    sawtooth_power: float = field(
        default=5.0, metadata={"help": "sawtooth: exponent of the ramp (simple_vae_bart: 5)"}
    )
    sawtooth_scale: float = field(
        default=0.1,
        metadata={"help": "sawtooth: beta at the end of the ramp (simple_vae_bart: 1/10)"},
    )
    sawtooth_hold: float = field(
        default=0.5, metadata={"help": "sawtooth: beta after the ramp (simple_vae_bart: 1/2)"}
    )
    freeze_decoder_updates: int = field(
        default=0,
        metadata={
            "help": "train with the decoder fixed for this many updates first (Park & Lee "
            "2021): only the encoder and the latent modules learn, so the pretrained decoder "
            "cannot learn to do without z while z is still noise (its embeddings, shared "
            "with the encoder in BART, stay fixed too) (0: off)"
        },
    )
    latent_lr_scale: float = field(
        default=1.0,
        metadata={
            "help": "the latent modules (the posterior heads, z's way into the decoder, the "
            "bag-of-words head) learn at this many times the learning rate of the rest, which "
            "a fine-tuning from BART has pretrained: each update moves them this many times "
            "as far (exact for adam and sgd, whose step is proportional to the learning rate; "
            "not with --fp16's fp32 master copy: use --memory-efficient-fp16) (1: off)"
        },
    )
    max_update: int = II("optimization.max_update")


def in_latent_module(name: str) -> bool:
    """Whether a parameter's dotted name lies in one of the latent modules (LATENT_MODULES)."""
    return bool(LATENT_MODULES.intersection(name.split(".")))


def latent_parameters(model) -> list:
    """The trainable parameters of the model's latent modules."""
    return [p for name, p in model.named_parameters() if p.requires_grad and in_latent_module(name)]


def step_with_latent_lr_scale(optimizer, model, scale: float):
    """optimizer.step(), with the latent modules' step multiplied by ``scale``.

    Adam's step is lr * m / (sqrt(v) + eps) (and its weight decay lr * wd * p), and its moments
    m and v do not depend on lr: stretching the step is running those parameters at lr * scale.
    The stretch is applied to the model's parameters, so an optimizer that steps a copy of them
    (fairseq's FP16Optimizer, whose fp32 master copy would overwrite it) is refused.
    """
    if hasattr(optimizer, "fp32_params"):
        raise ValueError(
            "--latent-lr-scale: --fp16/--bf16 keep an fp32 master copy of the weights that the "
            "scale cannot reach; use --memory-efficient-fp16 or --memory-efficient-bf16"
        )
    params = latent_parameters(model)
    before = [p.detach().clone() for p in params]
    optimizer.step()
    with torch.no_grad():
        for param, old in zip(params, before):
            param.add_(param - old, alpha=scale - 1.0)


def freeze_decoder_grads(model):
    """Zeroes the gradient of every decoder parameter outside the latent modules: with Adam's
    moments still zero, such a parameter does not move (a zero gradient, not None, keeps every
    worker's gradient buffers and fairseq's clipping and fp16 copies as they are)."""
    for name, param in model.decoder.named_parameters():
        if param.grad is not None and not in_latent_module(name):
            param.grad.zero_()


def keep_schedule_in_iterator_state(iterator, cfg):
    """Makes the train iterator's checkpointed state carry the schedule's cycle length, and
    check it when a run resumes.

    fairseq saves ``task.state_dict()`` in every checkpoint, but its trainer never loads it
    back when a run resumes (only ``load_model_ensemble_and_task`` does); the train iterator's
    state (``extra_state["train_iterator"]``) is what ``checkpoint_utils.load_checkpoint``
    restores, exactly when a run continues where it stopped (not with --reset-dataloader,
    nor for --finetune-from-model). The record is made lazily: generating from the train
    split never needs the run's length.
    """
    if getattr(iterator, "keeps_kl_schedule", False):  # fairseq may hand back a cached one
        return iterator
    save, load = iterator.state_dict, iterator.load_state_dict

    def state_dict():
        return {**save(), "kl_schedule": schedule_record(cfg)}

    def load_state_dict(state):
        check_resumed_schedule(state.get("kl_schedule"), cfg)
        load(state)

    iterator.state_dict, iterator.load_state_dict = state_dict, load_state_dict
    iterator.keeps_kl_schedule = True
    return iterator
