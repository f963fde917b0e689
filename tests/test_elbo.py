"""The criterion's maths against independent computations."""

import math
import re

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


def test_gaussian_kl_to_a_conditional_prior_matches_torch_distributions():
    """KL(q(z|c, x) || p(z|c)) of the conditional VAE: two diagonal Gaussians."""
    mu, logvar = random_posterior(seed=1)
    prior_mu, prior_logvar = random_posterior(seed=2)
    q = Normal(mu, torch.exp(0.5 * logvar))
    p = Normal(prior_mu, torch.exp(0.5 * prior_logvar))
    kl = gaussian_kl(mu, logvar, prior_mu, prior_logvar)
    torch.testing.assert_close(kl, kl_divergence(q, p))
    assert torch.allclose(gaussian_kl(mu, logvar, mu, logvar), torch.zeros_like(mu))
    # N(0, I) as the prior is the sentence VAE's KL
    zeros = torch.zeros_like(mu)
    torch.testing.assert_close(gaussian_kl(mu, logvar, zeros, zeros), gaussian_kl(mu, logvar))
    half = gaussian_kl(*(t.to(torch.bfloat16) for t in (mu, logvar, prior_mu, prior_logvar)))
    assert half.dtype == torch.float32


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_gaussian_kl_of_half_inputs_is_the_fp32_kl_of_their_values(dtype):
    mu, logvar = random_posterior()
    mu, logvar = mu.to(dtype), logvar.to(dtype)
    kl = gaussian_kl(mu, logvar)
    assert kl.dtype == torch.float32
    # the exact KL of the values the half tensors hold, in float64 by torch.distributions:
    # a half-precision computation would be off by about 1e-2 relative (bf16 has 8 bits)
    mu64, logvar64 = mu.double(), logvar.double()
    q = Normal(mu64, torch.exp(0.5 * logvar64))
    exact = kl_divergence(q, Normal(torch.zeros_like(mu64), torch.ones_like(mu64)))
    torch.testing.assert_close(kl.double(), exact, rtol=1e-5, atol=1e-6)


# a 2 x 2 KL (sentences x dimensions) whose free-bits sums are easy by hand
KL_BY_HAND = torch.tensor([[0.1, 0.5], [0.3, 0.2]])


def test_free_bits_by_hand():
    assert float(free_bits_kl(KL_BY_HAND, 0.0, "batch")) == pytest.approx(1.1)  # off: the sum
    assert float(free_bits_kl(KL_BY_HAND, 0.0, "example")) == pytest.approx(1.1)
    # batch, lambda 0.3: dimension sums 0.4 and 0.7 against B * lambda = 0.6: 0.6 + 0.7
    assert float(free_bits_kl(KL_BY_HAND, 0.3, "batch")) == pytest.approx(1.3)
    # example, lambda 0.25: only the entries above it, 0.5 and 0.3
    assert float(free_bits_kl(KL_BY_HAND, 0.25, "example")) == pytest.approx(0.8)


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


def forward_with_outputs(model, criterion, sample):
    """The criterion's (loss, logging output) and the model outputs that forward saw."""
    seen = []
    handle = model.register_forward_hook(lambda module, inputs, output: seen.append(output))
    loss, _, log = criterion(model, sample)
    handle.remove()
    (logits, extra) = seen[0]
    return loss, log, logits, extra


@pytest.mark.parametrize("mode", ["batch", "example"])
def test_free_bits_through_the_criterions_forward(dict_dir, mode):
    task, model, args = build_tiny(dict_dir, "--free-bits-mode", mode)
    criterion = task.build_criterion(args)
    model.train()  # z is a posterior sample: the NLL is read from the logits forward returned
    sample = autoencoder_sample(task.source_dictionary, random_sentences(6, seed=5))
    mu, logvar = model.encoder.posterior(
        sample["net_input"]["src_tokens"], sample["net_input"]["src_lengths"]
    )
    q = Normal(mu.double(), torch.exp(0.5 * logvar.double()))
    kl = kl_divergence(q, Normal(0.0, 1.0)).tolist()  # B x D, as plain numbers
    per_dim = [sum(row[d] for row in kl) / len(kl) for d in range(len(kl[0]))]
    lam = sorted(per_dim)[len(per_dim) // 2]  # about half the dimensions below lambda
    criterion.free_bits = lam
    beta = 0.7
    criterion.set_schedule_state(3, beta)
    loss, log, logits, extra = forward_with_outputs(model, criterion, sample)

    # by hand from the mu and logvar the model returned
    kl = kl_divergence(
        Normal(extra["mu"].double(), torch.exp(0.5 * extra["logvar"].double())), Normal(0.0, 1.0)
    ).tolist()
    batch, dims = len(kl), len(kl[0])
    if mode == "batch":  # B * sum_d max(mean_b kl_bd, lambda)
        penalised = sum(batch * max(sum(row[d] for row in kl) / batch, lam) for d in range(dims))
    else:  # the entries above lambda
        penalised = sum(v for row in kl for v in row if v > lam)
    assert penalised != pytest.approx(sum(map(sum, kl)))  # lambda binds somewhere
    lprobs = torch.log_softmax(logits.double(), dim=-1)
    target = sample["target"]
    nll = -(lprobs.gather(-1, target[..., None])[..., 0] * target.ne(1)).sum()  # pad is 1
    assert float(loss) == pytest.approx(float(nll) + beta * penalised, rel=1e-5)
    assert float(log["kl"]) == pytest.approx(sum(map(sum, kl)), rel=1e-5)  # logged unclamped


@pytest.mark.parametrize(
    "extra, message",
    [
        (
            ["--kl-objective", "capacity", "--free-bits", "0.5"],
            "--free-bits 0.5 has no effect with --kl-objective capacity",
        ),
        (
            ["--kl-objective", "capacity", "--kl-schedule", "constant", "--kl-beta-max", "0.3"],
            "--kl-schedule constant, --kl-beta-max 0.3: --kl-objective capacity does not use beta",
        ),
        (["--kl-objective", "capacity", "--kl-cycles", "2"], "--kl-cycles 2: --kl-objective"),
        (["--free-bits", "-1"], "--free-bits must be >= 0"),
        (["--capacity-gamma", "-2"], "--capacity-gamma must be >= 0"),
    ],
)
def test_options_the_objective_would_ignore_are_refused(dict_dir, extra, message):
    task, _, args = build_tiny(dict_dir, *extra)
    with pytest.raises(ValueError, match=re.escape(message)):
        task.build_criterion(args)


def test_capacity_alone_and_beta_with_its_schedule_are_accepted(dict_dir):
    for extra in (
        ["--kl-objective", "capacity", "--capacity-max", "5"],
        ["--free-bits", "0.5", "--kl-schedule", "constant", "--kl-beta-max", "0.3"],
    ):
        task, _, args = build_tiny(dict_dir, *extra)
        task.build_criterion(args)
