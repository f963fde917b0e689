"""KL weight schedules: beta as a pure function of the update number.

The task (``--task text_vae``) calls :func:`kl_beta` before every training step, so a run
resumed from a checkpoint continues the schedule exactly and the schedule never synchronises
with the device.

  cyclical  Fu et al. (2019), "Cyclical Annealing Schedule": the run is split into M cycles
            (or cycles of --kl-cycle-updates); beta ramps from 0 to --kl-beta-max over the
            first fraction R of each cycle (linear, sigmoid or cosine), then holds; with
            --kl-zero-fraction Z it stays 0 for the first Z of each cycle, then ramps; with
            --kl-final-hold H the last H of --max-update holds --kl-beta-max, and the M cycles
            share the first 1 - H.
  monotonic the first cycle's ramp, then --kl-beta-max for ever (Bowman et al. 2016).
  sawtooth  the schedule of the simple_vae_bart snippet this project grew from: tau = (u mod
            200) / 200, beta = (tau / 0.99)^5 / 10 while tau <= 0.99, else 1/2; every constant
            is an option.
  constant  --kl-beta-max throughout.

:func:`check_schedule_options` refuses option values that cannot work when the task is set
up; :func:`schedule_record` and :func:`check_resumed_schedule` keep the cycle length in the
checkpoint and refuse a resumed run whose --max-update would change it.
"""

import math
from typing import Optional

KL_SCHEDULES = ["cyclical", "monotonic", "sawtooth", "constant"]
RAMP_SHAPES = ["linear", "sigmoid", "cosine"]


def ramp(v: float, shape: str) -> float:
    """Fu et al.'s ramp shapes on v in [0, 1]."""
    if shape == "linear":
        return v
    if shape == "sigmoid":
        return 1.0 / (1.0 + math.exp(-(12.0 * v - 6.0)))
    if shape == "cosine":
        return 0.5 - 0.5 * math.cos(math.pi * v)
    raise ValueError(f"unknown ramp shape {shape!r}; choose one of {RAMP_SHAPES}")


def monotonic_beta(
    update: float, period: float, zero: float, ramp_fraction: float, shape: str, beta_max: float
):
    """0 for the first ``zero * period`` updates, a ramp over the next ``ramp_fraction * period``,
    then ``beta_max``."""
    update -= zero * period
    if update < 0:
        return 0.0
    ramp_updates = ramp_fraction * period
    if ramp_updates <= 0 or update >= ramp_updates:
        return beta_max
    return beta_max * ramp(update / ramp_updates, shape)


def cyclical_beta(
    update: int, period: float, zero: float, ramp_fraction: float, shape: str, beta_max: float
):
    """Fu et al. (2019): the monotonic schedule restarted every ``period`` updates."""
    return monotonic_beta(math.fmod(update, period), period, zero, ramp_fraction, shape, beta_max)


def sawtooth_beta(update: int, period: int, ratio: float, power: float, scale: float, hold: float):
    """simple_vae_bart's schedule: tau = (u mod period) / period, then (tau / ratio)^power *
    scale while tau <= ratio, else hold."""
    tau = (update % period) / period
    return (tau / ratio) ** power * scale if tau <= ratio else hold


def kl_beta(update: int, cfg) -> float:
    """beta for the update number ``update`` under the task's schedule options."""
    if cfg.kl_schedule == "constant":
        return cfg.kl_beta_max
    if cfg.kl_schedule == "sawtooth":
        return sawtooth_beta(
            update,
            cfg.sawtooth_period,
            cfg.sawtooth_ratio,
            cfg.sawtooth_power,
            cfg.sawtooth_scale,
            cfg.sawtooth_hold,
        )
    if update >= hold_start(cfg):
        return cfg.kl_beta_max
    period = cycle_length(cfg)
    schedule = cyclical_beta if cfg.kl_schedule == "cyclical" else monotonic_beta
    return schedule(
        update,
        period,
        cfg.kl_zero_fraction,
        cfg.kl_ramp_fraction,
        cfg.kl_ramp_shape,
        cfg.kl_beta_max,
    )


def final_hold(cfg) -> float:
    """--kl-final-hold where it applies (a cyclical schedule), else 0."""
    return getattr(cfg, "kl_final_hold", 0.0) if cfg.kl_schedule == "cyclical" else 0.0


def hold_start(cfg) -> float:
    """The update from which a cyclical schedule holds --kl-beta-max for good: (1 - H) *
    --max-update with --kl-final-hold H, else never."""
    if final_hold(cfg) <= 0:
        return math.inf
    return (1.0 - final_hold(cfg)) * run_length(cfg, "--kl-final-hold", "--max-update")


def run_length(cfg, needed_by: str, remedy: str) -> int:
    if not cfg.max_update or cfg.max_update <= 0:
        raise ValueError(f"{needed_by} needs the run's length: set {remedy}")
    return cfg.max_update


def cycle_length(cfg) -> float:
    """Updates per cycle: --kl-cycle-updates, else --max-update / --kl-cycles (of the first
    1 - H of the run with --kl-final-hold H)."""
    if cfg.kl_cycle_updates > 0:
        return float(cfg.kl_cycle_updates)
    length = run_length(
        cfg, f"--kl-schedule {cfg.kl_schedule}", "--max-update or --kl-cycle-updates"
    )
    cycles = cfg.kl_cycles if cfg.kl_schedule == "cyclical" else 1
    if cycles <= 0:
        raise ValueError(f"--kl-cycles must be positive, got {cycles}")
    return length * (1.0 - final_hold(cfg)) / cycles


def check_schedule_options(cfg) -> None:
    """Raises ValueError naming the first schedule option whose value cannot work, so that a
    run stops at start-up instead of at its first update (or never reaching --kl-beta-max)."""
    if cfg.sawtooth_period <= 0:
        raise ValueError(
            f"--sawtooth-period must be a positive number of updates, got {cfg.sawtooth_period}"
        )
    if not 0 < cfg.sawtooth_ratio <= 1:
        raise ValueError(
            "--sawtooth-ratio must be in (0, 1], the fraction of the period that ramps, "
            f"got {cfg.sawtooth_ratio}"
        )
    if cfg.sawtooth_power < 0:
        raise ValueError(
            f"--sawtooth-power must be >= 0, got {cfg.sawtooth_power} (a negative power "
            "divides by zero at the start of every period)"
        )
    if cfg.kl_cycles <= 0:
        raise ValueError(f"--kl-cycles must be positive, got {cfg.kl_cycles}")
    if cfg.kl_cycle_updates < 0:
        raise ValueError(
            f"--kl-cycle-updates must be >= 0 (0: --max-update / --kl-cycles), "
            f"got {cfg.kl_cycle_updates}"
        )
    for option, value in (
        ("--kl-beta-max", cfg.kl_beta_max),
        ("--sawtooth-scale", cfg.sawtooth_scale),
        ("--sawtooth-hold", cfg.sawtooth_hold),
    ):
        if value < 0:
            raise ValueError(f"{option} must be >= 0 (a weight of the KL term), got {value}")
    lr_scale = getattr(cfg, "latent_lr_scale", 1.0)
    if not lr_scale > 0:
        raise ValueError(
            f"--latent-lr-scale must be > 0, a multiple of the learning rate, got {lr_scale}"
        )
    hold = getattr(cfg, "kl_final_hold", 0.0)  # absent from checkpoints older than it
    if not 0 <= hold < 1:
        raise ValueError(
            "--kl-final-hold must be in [0, 1), the fraction of --max-update held at "
            f"--kl-beta-max after the cycles, got {hold}"
        )
    if hold > 0 and cfg.kl_schedule != "cyclical":
        raise ValueError(
            f"--kl-final-hold {hold} applies to --kl-schedule cyclical only "
            f"(this run's is {cfg.kl_schedule}, which it would leave unchanged)"
        )
    for option, value in (
        ("--kl-ramp-fraction", cfg.kl_ramp_fraction),
        ("--kl-zero-fraction", cfg.kl_zero_fraction),
    ):
        if not 0 <= value <= 1:
            raise ValueError(f"{option} must be in [0, 1], a fraction of a cycle, got {value}")
    if cfg.kl_zero_fraction + cfg.kl_ramp_fraction > 1 + 1e-9:
        raise ValueError(
            f"--kl-zero-fraction {cfg.kl_zero_fraction} plus --kl-ramp-fraction "
            f"{cfg.kl_ramp_fraction} is above 1: beta would never reach --kl-beta-max "
            f"{cfg.kl_beta_max} within a cycle"
        )


def cycle_length_source(cfg) -> str:
    """The options that set cycle_length(cfg), for messages."""
    if cfg.kl_cycle_updates > 0:
        return f"--kl-cycle-updates {cfg.kl_cycle_updates}"
    if final_hold(cfg) > 0:
        return (
            f"--max-update {cfg.max_update} x (1 - --kl-final-hold {cfg.kl_final_hold}) / "
            f"--kl-cycles {cfg.kl_cycles}"
        )
    if cfg.kl_schedule == "cyclical":
        return f"--max-update {cfg.max_update} / --kl-cycles {cfg.kl_cycles}"
    return f"--max-update {cfg.max_update}"


def schedule_record(cfg) -> dict:
    """What a checkpoint keeps of the schedule, to check a resumed run against: the length of
    a cycle, which --max-update sets indirectly (the other options are set explicitly)."""
    record = {"kl_schedule": str(cfg.kl_schedule)}
    if record["kl_schedule"] in ("cyclical", "monotonic"):
        record["updates_per_cycle"] = cycle_length(cfg)
        record["set_by"] = cycle_length_source(cfg)
    return record


def check_resumed_schedule(saved: Optional[dict], cfg) -> None:
    """Refuses to resume a cyclical or monotonic schedule with another cycle length.

    Keeping the saved length instead would run a schedule that the run's own options (saved
    with every checkpoint) do not describe; refusing costs one restart, and the message says
    which options give the saved length. A checkpoint without a record (older than this
    check) and a change of --kl-schedule itself, which the user asked for, are let through.
    """
    if not saved or "updates_per_cycle" not in saved:
        return
    if saved["kl_schedule"] != str(cfg.kl_schedule):
        return
    length, now = saved["updates_per_cycle"], cycle_length(cfg)
    if math.isclose(length, now, rel_tol=1e-9):
        return
    remedy = f"resume with options that give {length:g} (as {saved['set_by']} did)"
    if float(length).is_integer():
        remedy += f"; to train longer with the same cycles, pass --kl-cycle-updates {length:g}"
    raise ValueError(
        f"the checkpoint's {saved['kl_schedule']} KL schedule has cycles of {length:g} updates "
        f"({saved['set_by']}), but this run's options give {now:g} ({cycle_length_source(cfg)}): "
        f"beta would change mid-run. {remedy[0].upper()}{remedy[1:]}"
    )
