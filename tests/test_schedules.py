"""KL schedules against their formulas, written out independently here."""

import math

import pytest
from omegaconf import OmegaConf

from fairseq_vae.schedules import kl_beta
from fairseq_vae.tasks.text_vae import TextVAEConfig


def config(**overrides):
    cfg = OmegaConf.structured(TextVAEConfig)
    cfg.max_update = 1000
    cfg.dataset_impl = None
    cfg.train_subset = "train"
    for key, value in overrides.items():
        setattr(cfg, key, value)
    return cfg


def seed_beta(update_num):
    # the seed's train loop, verbatim in meaning
    FREQ, R = 200, 0.99
    tau = (update_num % FREQ) / FREQ
    return (tau / R) ** 5 / 10 if tau <= R else 1 / 2


@pytest.mark.parametrize("update", [0, 100, 198, 199, 200, 399])
def test_sawtooth_matches_the_seed(update):
    assert kl_beta(update, config(kl_schedule="sawtooth")) == pytest.approx(seed_beta(update))


def test_sawtooth_seed_values_by_hand():
    cfg = config(kl_schedule="sawtooth")
    assert kl_beta(0, cfg) == 0.0
    assert kl_beta(100, cfg) == pytest.approx((0.5 / 0.99) ** 5 / 10)
    assert kl_beta(198, cfg) == pytest.approx(0.1)  # tau = 0.99 is still on the ramp
    assert kl_beta(199, cfg) == 0.5
    assert kl_beta(200, cfg) == 0.0
    assert kl_beta(399, cfg) == 0.5


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
