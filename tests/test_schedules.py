"""KL schedules against their formulas, written out independently here."""

import math

import pytest
from omegaconf import OmegaConf

from fairseq_vae.schedules import (
    check_resumed_schedule,
    check_schedule_options,
    kl_beta,
    schedule_record,
)
from fairseq_vae.tasks.text_vae import TextVAEConfig


def config(**overrides):
    cfg = OmegaConf.structured(TextVAEConfig)
    cfg.max_update = 1000
    cfg.dataset_impl = None
    cfg.train_subset = "train"
    for key, value in overrides.items():
        setattr(cfg, key, value)
    return cfg


# simple_vae_bart's schedule, worked out by hand: tau = (u mod 200) / 200, beta =
# (tau / 0.99)^5 / 10 while tau <= 0.99, else 1/2
SAWTOOTH_BY_HAND = {
    0: 0.0,
    99: 0.003125,  # tau = 0.495: (0.495 / 0.99)^5 / 10 = 0.5^5 / 10
    100: 0.003286,  # tau = 0.5: (50 / 99)^5 / 10 = 3.125e8 / 9.5099e9 / 10
    198: 0.1,  # tau = 0.99 is still on the ramp: 1^5 / 10
    199: 0.5,  # tau = 0.995 > 0.99: held at 1/2
    200: 0.0,  # a new period
    299: 0.003125,
    399: 0.5,
}


@pytest.mark.parametrize("update", sorted(SAWTOOTH_BY_HAND))
def test_sawtooth_defaults_are_simple_vae_barts_schedule(update):
    beta = kl_beta(update, config(kl_schedule="sawtooth"))
    assert beta == pytest.approx(SAWTOOTH_BY_HAND[update], rel=1e-4, abs=1e-12)


def test_sawtooth_options_change_its_constants():
    # period 10, ratio 0.5, power 2, scale 0.4, hold 0.9, by hand with tau = (u mod 10) / 10:
    # u=2: (0.2 / 0.5)^2 * 0.4 = 0.064; u=5: tau = ratio, 0.4; u=6: held at 0.9;
    # u=13: (0.3 / 0.5)^2 * 0.4 = 0.144
    cfg = config(
        kl_schedule="sawtooth",
        sawtooth_period=10,
        sawtooth_ratio=0.5,
        sawtooth_power=2.0,
        sawtooth_scale=0.4,
        sawtooth_hold=0.9,
    )
    expected = {0: 0.0, 2: 0.064, 5: 0.4, 6: 0.9, 9: 0.9, 10: 0.0, 13: 0.144}
    for update, beta in expected.items():
        assert kl_beta(update, cfg) == pytest.approx(beta), update


def fu_linear_reference(n_iter, start, stop, n_cycle, ratio):
    """Fu et al.'s frange_cycle_linear, re-derived: a list of beta for every iteration."""
    values = [stop] * n_iter
    period = n_iter / n_cycle
    step = (stop - start) / (period * ratio)
    for c in range(n_cycle):
        v, i = start, 0
        while v <= stop and int(i + c * period) < n_iter:
            values[int(i + c * period)] = v
            v += step
            i += 1
    return values


def test_cyclical_linear_matches_fu_et_al_reference():
    cfg = config(kl_cycles=4, kl_ramp_fraction=0.5)
    reference = fu_linear_reference(1000, 0.0, 1.0, 4, 0.5)
    for update in range(1000):
        assert kl_beta(update, cfg) == pytest.approx(reference[update], abs=1e-9), update


@pytest.mark.parametrize(
    "shape,formula",
    [
        ("linear", lambda v: v),
        ("sigmoid", lambda v: 1 / (1 + math.exp(-(12 * v - 6)))),
        ("cosine", lambda v: 0.5 - 0.5 * math.cos(math.pi * v)),
    ],
)
def test_cyclical_shapes(shape, formula):
    # 1000 updates, M=4: cycles of 250, ramp over the first 0.4 * 250 = 100 updates
    cfg = config(kl_cycles=4, kl_ramp_fraction=0.4, kl_ramp_shape=shape, kl_beta_max=2.0)
    for update, v in [(0, 0.0), (30, 0.3), (75, 0.75), (250 + 50, 0.5), (750 + 99, 0.99)]:
        assert kl_beta(update, cfg) == pytest.approx(2.0 * formula(v)), (shape, update)
    for update in (100, 180, 249, 350, 999):
        assert kl_beta(update, cfg) == 2.0


def test_cycle_length_in_updates_overrides_cycle_count():
    cfg = config(kl_cycle_updates=10, kl_ramp_fraction=0.5, max_update=0)
    assert [kl_beta(u, cfg) for u in range(12)] == pytest.approx(
        [0, 0.2, 0.4, 0.6, 0.8, 1, 1, 1, 1, 1, 0, 0.2]
    )


def test_monotonic_ramps_once_then_holds():
    cfg = config(kl_schedule="monotonic", kl_ramp_fraction=0.2)  # ramp over 200 of 1000
    assert kl_beta(0, cfg) == 0.0
    assert kl_beta(50, cfg) == pytest.approx(0.25)
    assert [kl_beta(u, cfg) for u in (200, 250, 600, 999, 5000)] == [1.0] * 5


def test_constant():
    cfg = config(kl_schedule="constant", kl_beta_max=0.3)
    assert {kl_beta(u, cfg) for u in (0, 7, 999)} == {0.3}


def test_cyclical_without_a_length_names_the_options():
    with pytest.raises(ValueError, match="--max-update or --kl-cycle-updates"):
        kl_beta(5, config(max_update=0))


def test_zero_phase_then_ramp_like_fu_et_al_zero_linear():
    # frange_cycle_zero_linear(ratio_zero=0.25, ratio_increase=0.25): 0, ramp, hold
    cfg = config(kl_cycles=4, kl_zero_fraction=0.25, kl_ramp_fraction=0.25)  # cycles of 250
    expected = {0: 0.0, 62: 0.0, 62.5: 0.0, 100: 0.6, 125: 1.0, 200: 1.0, 250: 0.0, 250 + 93: 0.488}
    for update, beta in expected.items():
        assert kl_beta(update, cfg) == pytest.approx(beta), update


def test_final_hold_gives_the_cycles_the_rest_of_the_run():
    # 1000 updates, the last 0.4 held: 3 cycles share 600, so 200 each (50 at 0, a ramp over
    # 50, 100 held), then beta_max from update 600 to the end
    cfg = config(kl_cycles=3, kl_zero_fraction=0.25, kl_ramp_fraction=0.25, kl_final_hold=0.4)
    expected = {0: 0.0, 49: 0.0, 75: 0.5, 100: 1.0, 199: 1.0, 200: 0.0, 275: 0.5, 449: 0.0}
    expected.update({475: 0.5, 599: 1.0, 600: 1.0, 650: 1.0, 999: 1.0})
    for update, beta in expected.items():
        assert kl_beta(update, cfg) == pytest.approx(beta), update
    # the same cycles without the hold would start a fourth at 600
    assert kl_beta(600, config(kl_cycle_updates=200, kl_zero_fraction=0.25)) == 0.0
    assert schedule_record(cfg)["updates_per_cycle"] == 200.0
    assert "(1 - --kl-final-hold 0.4)" in schedule_record(cfg)["set_by"]


def test_final_hold_with_cycles_of_a_fixed_length_needs_the_run_length():
    cfg = config(kl_cycle_updates=100, kl_final_hold=0.5, max_update=0)
    with pytest.raises(ValueError, match="--kl-final-hold needs the run's length"):
        kl_beta(10, cfg)
    cfg = config(kl_cycle_updates=100, kl_ramp_fraction=0.5, kl_final_hold=0.25, max_update=400)
    assert [kl_beta(u, cfg) for u in (25, 150, 299, 300, 325)] == pytest.approx(
        [0.5, 1.0, 1.0, 1.0, 1.0]
    )


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"kl_final_hold": 1.0}, r"--kl-final-hold must be in \[0, 1\)"),
        ({"kl_final_hold": -0.2}, r"--kl-final-hold must be in \[0, 1\)"),
        (
            {"kl_final_hold": 0.3, "kl_schedule": "monotonic"},
            "--kl-final-hold 0.3 applies to --kl-schedule cyclical only",
        ),
        ({"sawtooth_period": 0}, "--sawtooth-period must be a positive number of updates, got 0"),
        ({"sawtooth_period": -5}, "--sawtooth-period must be a positive"),
        ({"sawtooth_ratio": 0.0}, r"--sawtooth-ratio must be in \(0, 1\]"),
        ({"sawtooth_ratio": -0.5}, r"--sawtooth-ratio must be in \(0, 1\]"),
        ({"sawtooth_ratio": 1.5}, r"--sawtooth-ratio must be in \(0, 1\]"),
        ({"sawtooth_power": -1.0}, "--sawtooth-power must be >= 0"),
        ({"kl_cycles": 0}, "--kl-cycles must be positive"),
        ({"kl_cycle_updates": -3}, "--kl-cycle-updates must be >= 0"),
        ({"kl_beta_max": -1.0}, "--kl-beta-max must be >= 0"),
        ({"kl_ramp_fraction": -0.1}, r"--kl-ramp-fraction must be in \[0, 1\]"),
        ({"kl_zero_fraction": -0.1}, r"--kl-zero-fraction must be in \[0, 1\]"),
        ({"kl_ramp_fraction": 1.2}, r"--kl-ramp-fraction must be in \[0, 1\]"),
        (
            {"kl_zero_fraction": 0.6, "kl_ramp_fraction": 0.5},
            "--kl-zero-fraction 0.6 plus --kl-ramp-fraction 0.5 is above 1",
        ),
    ],
)
def test_unworkable_schedule_options_are_refused_by_name(overrides, message):
    with pytest.raises(ValueError, match=message):
        check_schedule_options(config(**overrides))


def test_workable_edge_values_pass():
    for overrides in (
        {"sawtooth_ratio": 1.0},
        {"kl_zero_fraction": 0.25, "kl_ramp_fraction": 0.75},
        {"kl_ramp_fraction": 0.0},
        {"sawtooth_power": 0.0},
    ):
        check_schedule_options(config(**overrides))


def test_zero_plus_ramp_above_one_would_never_reach_beta_max():
    # why the check exists: zero 0.6 + ramp 0.5 of a 250-update cycle ramps over updates
    # 150..275, but the cycle restarts at 250, where beta is 0.8 of --kl-beta-max
    cfg = config(kl_cycles=4, kl_zero_fraction=0.6, kl_ramp_fraction=0.5)
    assert max(kl_beta(u, cfg) for u in range(1000)) < 0.81


def test_resumed_schedule_with_another_cycle_length_is_refused():
    saved = schedule_record(config(max_update=1000, kl_cycles=4))
    assert saved["updates_per_cycle"] == 250.0
    check_resumed_schedule(saved, config(max_update=1000, kl_cycles=4))
    # training longer with the same cycles: what the message advises
    check_resumed_schedule(saved, config(max_update=3000, kl_cycle_updates=250))
    with pytest.raises(ValueError) as error:
        check_resumed_schedule(saved, config(max_update=2000, kl_cycles=4))
    message = str(error.value)
    assert "cycles of 250 updates (--max-update 1000 / --kl-cycles 4)" in message
    assert "this run's options give 500 (--max-update 2000 / --kl-cycles 4)" in message
    assert "pass --kl-cycle-updates 250" in message
    # an explicit change of schedule, and a checkpoint from before the record, pass
    check_resumed_schedule(saved, config(kl_schedule="constant"))
    check_resumed_schedule(None, config(max_update=2000))
