"""The criterion's maths against independent computations."""

import math

import pytest
import torch
from conftest import autoencoder_sample, build_tiny, encode_lines, random_sentences
from fairseq.logging import metrics
from torch.distributions import Normal, kl_divergence

from fairseq_vae.criterions.elbo import (
    ELBOCriterion,
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


def criterion_on(task, model, criterion, lines):
    """The criterion's (loss, sample_size, logging output) on one batch of ``lines``."""
    return criterion(model, autoencoder_sample(task.source_dictionary, lines))


def test_kl_sum_over_sentences_does_not_depend_on_batch_size(dict_dir):
    # defect 5 of the seed: a batch-mean KL next to a token-summed NLL scales with the batch;
    # summed over sentences, a batch's loss is the sum of its halves' losses, whatever beta
    task, model, args = build_tiny(dict_dir, "--label-smoothing", "0.1")
    criterion = task.build_criterion(args)
    model.train()
    model.encoder.latent_source = "mean"  # z = mu: each sentence's NLL is deterministic
    lines = random_sentences(8, seed=12)
    criterion.set_schedule_state(0, 0.5)
    whole, whole_size, whole_log = criterion_on(task, model, criterion, lines)
    first, first_size, _ = criterion_on(task, model, criterion, lines[:4])
    second, second_size, _ = criterion_on(task, model, criterion, lines[4:])
    assert whole_size == first_size + second_size == whole_log["ntokens"]
    torch.testing.assert_close(whole, first + second, rtol=1e-5, atol=1e-4)

    # the KL term is beta times the analytic KL summed (not averaged) over the 8 sentences
    criterion.set_schedule_state(0, 0.0)
    without_kl, _, _ = criterion_on(task, model, criterion, lines)
    mu, logvar = model.encoder.posterior(*encode_lines(task.source_dictionary, lines))
    q, prior = Normal(mu, torch.exp(0.5 * logvar)), Normal(0.0, 1.0)
    kl_sum = kl_divergence(q, prior).sum()
    torch.testing.assert_close(whole - without_kl, 0.5 * kl_sum, rtol=1e-4, atol=1e-4)


def test_elbo_perplexity_of_a_huge_loss_is_infinite_not_an_error():
    # -ELBO per token above ~709 nats (a beta = 0 phase with a wide latent) overflows exp()
    def logs(nll_per_token):
        ntokens, nsentences = 10, 2
        return [
            {
                "loss": nll_per_token * ntokens,
                "nll_loss": nll_per_token * ntokens,
                "kl": 0.0,
                "ntokens": ntokens,
                "nsentences": nsentences,
                "sample_size": ntokens,
                "beta": nsentences,
                "active_dims": 0,
            }
        ]

    for nll_per_token, expected in ((2.0, round(math.exp(2.0), 2)), (800.0, math.inf)):
        with metrics.aggregate() as aggregate:
            ELBOCriterion.reduce_metrics(logs(nll_per_token))
        assert aggregate.get_smoothed_values()["elbo_ppl"] == expected
