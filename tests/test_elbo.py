"""The criterion's maths against independent computations."""

import math

import pytest
import torch
from torch.distributions import Normal, kl_divergence

from fairseq_vae.criterions.elbo import (
    capacity_at,
    capacity_penalty,
    free_bits_kl,
    gaussian_kl,
)


def random_posterior(batch=6, dim=5, seed=0):
    g = torch.Generator().manual_seed(seed)
    mu = torch.randn(batch, dim, generator=g) * 2
    logvar = torch.randn(batch, dim, generator=g) * 1.5
    return mu, logvar


def test_gaussian_kl_matches_torch_distributions():
    mu, logvar = random_posterior()
    q = Normal(mu, torch.exp(0.5 * logvar))
    p = Normal(torch.zeros_like(mu), torch.ones_like(mu))
    torch.testing.assert_close(gaussian_kl(mu, logvar), kl_divergence(q, p))


def test_gaussian_kl_is_fp32_for_half_inputs():
    mu, logvar = random_posterior()
    kl = gaussian_kl(mu.bfloat16(), logvar.bfloat16())
    assert kl.dtype == torch.float32
    torch.testing.assert_close(kl, gaussian_kl(mu.bfloat16().float(), logvar.bfloat16().float()))


def test_free_bits_off_is_the_plain_sum():
    kl = gaussian_kl(*random_posterior())
    torch.testing.assert_close(free_bits_kl(kl, 0.0, "batch"), kl.sum())


def test_free_bits_batch_mode_clamps_each_dimensions_batch_mean():
    kl = gaussian_kl(*random_posterior(batch=4, dim=3))
    lam = float(kl.mean(dim=0).median())  # some dimensions below, some above
    expected = 0.0
    for d in range(kl.size(1)):
        mean_d = sum(float(kl[b, d]) for b in range(kl.size(0))) / kl.size(0)
        expected += kl.size(0) * max(mean_d, lam)
    assert float(free_bits_kl(kl, lam, "batch")) == pytest.approx(expected, rel=1e-6)


def test_free_bits_batch_mode_has_no_gradient_below_lambda():
    mu, logvar = random_posterior(batch=4, dim=3)
    mu.requires_grad_(True)
    kl = gaussian_kl(mu, logvar)
    lam = float(kl.mean(dim=0).max()) + 1.0  # every dimension below lambda
    free_bits_kl(kl, lam, "batch").backward()
    assert torch.count_nonzero(mu.grad) == 0


def test_free_bits_example_mode_drops_small_entries():
    kl = gaussian_kl(*random_posterior(batch=4, dim=3))
    lam = float(kl.median())
    expected = sum(float(v) for v in kl.flatten() if float(v) > lam)
    assert float(free_bits_kl(kl, lam, "example")) == pytest.approx(expected, rel=1e-6)


def test_capacity_rises_linearly_then_holds():
    assert capacity_at(0, 25.0, 1000) == 0.0
    assert capacity_at(400, 25.0, 1000) == pytest.approx(10.0)
    assert capacity_at(1000, 25.0, 1000) == 25.0
    assert capacity_at(5000, 25.0, 1000) == 25.0


def test_capacity_penalty_is_gamma_times_distance_per_sentence():
    kl_per_sentence = torch.tensor([1.0, 4.0, 10.0])
    expected = 100.0 * (abs(1 - 5) + abs(4 - 5) + abs(10 - 5))
    assert float(capacity_penalty(kl_per_sentence, 5.0, 100.0)) == pytest.approx(expected)


def test_kl_sum_over_sentences_does_not_depend_on_batch_size():
    # defect 5 of the seed: a batch-mean KL next to a token-summed NLL scales with the batch
    mu, logvar = random_posterior(batch=8)
    whole = gaussian_kl(mu, logvar).sum()
    halves = gaussian_kl(mu[:4], logvar[:4]).sum() + gaussian_kl(mu[4:], logvar[4:]).sum()
    torch.testing.assert_close(whole, halves)
    assert not math.isclose(float(whole), float(gaussian_kl(mu, logvar).sum(1).mean()))
