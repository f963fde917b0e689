"""KL weight schedules: beta as a pure function of the update number.

The task (``--task text_vae``) calls :func:`kl_beta` before every training step, so a run
resumed from a checkpoint continues the schedule exactly and the schedule never synchronises
with the device.

  cyclical  Fu et al. (2019), "Cyclical Annealing Schedule": the run is split into M cycles
            (or cycles of --kl-cycle-updates); beta ramps from 0 to --kl-beta-max over the
            first fraction R of each cycle (linear, sigmoid or cosine), then holds; with
            --kl-zero-fraction Z it stays 0 for the first Z of each cycle, then ramps.
  monotonic the first cycle's ramp, then --kl-beta-max for ever (Bowman et al. 2016).
  sawtooth  the schedule of the simple_vae_bart snippet this project grew from: tau = (u mod
            200) / 200, beta = (tau / 0.99)^5 / 10 while tau <= 0.99, else 1/2; every constant
            is an option.
  constant  --kl-beta-max throughout.
"""

import math

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


def cycle_length(cfg) -> float:
    """Updates per cycle: --kl-cycle-updates, else --max-update / --kl-cycles."""
    if cfg.kl_cycle_updates > 0:
        return float(cfg.kl_cycle_updates)
    if not cfg.max_update or cfg.max_update <= 0:
        raise ValueError(
            f"--kl-schedule {cfg.kl_schedule} needs the run's length: set --max-update "
            "or --kl-cycle-updates"
        )
    cycles = cfg.kl_cycles if cfg.kl_schedule == "cyclical" else 1
    if cycles <= 0:
        raise ValueError(f"--kl-cycles must be positive, got {cycles}")
    return cfg.max_update / cycles
