"""Fitted priors (fairseq_vae.latent_space.prior, .prior_file, fairseq-vae-fit-prior): the mixture's
density against scikit-learn and torch.distributions, the flow's against quadrature, the Monte
Carlo KL against closed forms, the file's weights_only loading and model checks, and the
command end to end."""

import json
import logging
import math
import os
import re

import numpy as np
import pytest
import torch
from conftest import USER_DIR, build_tiny, encode_lines, random_sentences, run_tool
from fairseq import options
from torch.distributions import Categorical, MixtureSameFamily, MultivariateNormal, Normal
from vae_fixtures import make_data_bin, save_checkpoint, train_tiny

from fairseq_vae.cli import fit_prior
from fairseq_vae.criterions.elbo import gaussian_kl
from fairseq_vae.latent_space.prior import (
    FlowConfig,
    GaussianMixturePrior,
    StandardNormalPrior,
    fit_flow,
    fit_gmm,
    mean_log_likelihood,
    posterior_kl,
    prior_log_density,
)
from fairseq_vae.latent_space.prior_file import load_prior, model_sha256, prior_meta, save_prior
from fairseq_vae.tasks.text_vae import TextVAETask

# the machine's two cores are shared: one thread each (conftest.one_thread)
pytestmark = pytest.mark.usefixtures("one_thread")


def two_clusters(n, seed):
    """n points in 2-D, half around (2, 0) and half around (-2, 0), sd 0.5: bimodal."""
    g = torch.Generator().manual_seed(seed)
    centres = torch.tensor([[2.0, 0.0], [-2.0, 0.0]]).repeat(n // 2, 1)
    return centres + 0.5 * torch.randn(n, 2, generator=g)


def known_mixture():
    """A 3-component mixture in 2-D with correlated covariances, and its covariances."""
    weights = torch.tensor([0.5, 0.3, 0.2], dtype=torch.float64)
    means = torch.tensor([[0.0, 0.0], [3.0, 1.0], [-2.0, 2.5]], dtype=torch.float64)
    covs = torch.tensor(
        [[[1.0, 0.5], [0.5, 2.0]], [[0.3, -0.2], [-0.2, 0.5]], [[2.0, 0.0], [0.0, 0.1]]],
        dtype=torch.float64,
    )
    return GaussianMixturePrior(weights, means, torch.linalg.cholesky(covs)), covs


def plain_values_only(value):
    """Whether value holds only tensors and JSON's plain types (what weights_only may hold)."""
    if isinstance(value, dict):
        return all(isinstance(k, str) and plain_values_only(v) for k, v in value.items())
    if isinstance(value, list):
        return all(plain_values_only(v) for v in value)
    return value is None or isinstance(value, (torch.Tensor, str, int, float, bool))


# ----------------------------------------------------------------------------------------------
# The mixture


def test_mixture_log_density_matches_sklearn_and_torch_distributions():
    from sklearn.mixture import GaussianMixture

    g = torch.Generator().manual_seed(0)
    centres = torch.tensor([[0.0, 0.0, 0.0], [4.0, 0.0, 1.0], [0.0, -3.0, 2.0]])
    data = (
        (
            centres.repeat(200, 1)
            + torch.randn(600, 3, generator=g)
            @ torch.tensor([[1.0, 0.3, 0.0], [0.0, 0.7, 0.2], [0.0, 0.0, 0.5]])
        )
        .double()
        .numpy()
    )
    mixture = GaussianMixture(3, covariance_type="full", random_state=0).fit(data)
    prior = GaussianMixturePrior.from_sklearn(mixture)
    points = torch.randn(50, 3, generator=g, dtype=torch.float64) * 3

    ours = prior.log_prob(points)
    assert ours.dtype == torch.float64
    np.testing.assert_allclose(ours.numpy(), mixture.score_samples(points.numpy()), rtol=1e-10)
    reference = MixtureSameFamily(
        Categorical(probs=torch.from_numpy(mixture.weights_)),
        MultivariateNormal(
            torch.from_numpy(mixture.means_),
            covariance_matrix=torch.from_numpy(mixture.covariances_),
        ),
    )
    torch.testing.assert_close(ours, reference.log_prob(points), rtol=1e-10, atol=1e-10)
    # fp32 in, fp32 out; a B x n x D batch keeps its leading shape
    batch = prior.log_prob(points.float().view(5, 10, 3))
    assert batch.dtype == torch.float32 and batch.shape == (5, 10)
    torch.testing.assert_close(batch.double().view(-1), ours, rtol=1e-5, atol=1e-4)


def test_mixture_samples_have_the_mixture_moments():
    prior, covs = known_mixture()
    z = prior.sample(200_000, generator=torch.Generator().manual_seed(3)).double()
    w, m = prior.weights, prior.means
    mean = (w[:, None] * m).sum(0)
    second = (w[:, None, None] * (covs + m[:, :, None] * m[:, None, :])).sum(0)
    cov = second - mean[:, None] * mean[None, :]
    torch.testing.assert_close(z.mean(0), mean, atol=0.02, rtol=0)
    torch.testing.assert_close(torch.cov(z.T), cov, atol=0.03, rtol=0.01)
    # the draws come from the generator alone
    first, again = (prior.sample(5, generator=torch.Generator().manual_seed(7)) for _ in range(2))
    assert torch.equal(first, again)
    assert not torch.equal(first, prior.sample(5, generator=torch.Generator().manual_seed(8)))


def test_every_prior_draws_no_latents_as_an_empty_tensor():
    from fairseq_vae.latent_space.prior import FlowPrior

    mixture, _ = known_mixture()
    for prior in (StandardNormalPrior(2), mixture, FlowPrior(2, hidden_features=(4,))):
        z = prior.sample(0, generator=torch.Generator().manual_seed(1))
        assert z.shape == (0, 2) and z.dtype == torch.float32, prior.kind


def test_the_number_of_components_is_chosen_on_valid_not_train():
    # 40 points of one Gaussian: 8 components fit the training points better and the
    # valid points worse
    g = torch.Generator().manual_seed(5)
    train, valid = torch.randn(40, 2, generator=g), torch.randn(2000, 2, generator=g)
    prior, info = fit_gmm(train, valid, components=(1, 8), seed=1)
    by_k = {row["components"]: row for row in info["candidates"]}
    assert by_k[8]["train_ll"] > by_k[1]["train_ll"]
    assert by_k[8]["valid_ll"] < by_k[1]["valid_ll"]
    assert info["components"] == 1 and prior.components == 1
    assert mean_log_likelihood(valid, prior) == pytest.approx(by_k[1]["valid_ll"], abs=1e-6)
    with pytest.raises(ValueError, match="--components 50"):
        fit_gmm(train, valid, components=(50,))


def test_the_mixture_is_fitted_to_a_random_subset_of_at_most_max_points():
    prior, _ = known_mixture()
    z = prior.sample(20_000, generator=torch.Generator().manual_seed(11)).double()
    # sorted by the first coordinate: the first 2000 rows hold the left component only, so a
    # fit to the head of the draws would miss the other two
    z = z[z[:, 0].argsort()]
    valid = prior.sample(5000, generator=torch.Generator().manual_seed(12)).double()
    fitted, info = fit_gmm(z, valid, components=(3,), seed=1, max_points=2000)
    assert info["fit_points"] == 2000
    truth = prior.log_prob(valid).mean().item()
    assert mean_log_likelihood(valid, fitted) == pytest.approx(truth, abs=0.05)
    head, _ = fit_gmm(z[:2000], valid, components=(3,), seed=1, max_points=None)
    assert mean_log_likelihood(valid, head) < truth - 1.0
    _, everything = fit_gmm(z[:500], valid, components=(3,), seed=1, max_points=2000)
    assert everything["fit_points"] == 500
    with pytest.raises(ValueError, match="--gmm-max-points must be at least 1"):
        fit_gmm(z, valid, components=(3,), max_points=-1)


def test_prior_term_of_the_importance_weights():
    g = torch.Generator().manual_seed(1)
    z = torch.randn(4, 6, 2, generator=g)  # B x n x D
    standard = prior_log_density(z)
    torch.testing.assert_close(standard, Normal(0.0, 1.0).log_prob(z).sum(-1))
    torch.testing.assert_close(StandardNormalPrior(2).log_prob(z), standard)
    prior, covs = known_mixture()
    reference = MixtureSameFamily(
        Categorical(probs=prior.weights), MultivariateNormal(prior.means, covariance_matrix=covs)
    )
    term = prior_log_density(z, prior)
    assert term.shape == (4, 6) and term.dtype == torch.float32
    loop = torch.tensor([[reference.log_prob(z[b, k].double()).item() for k in range(6)]
                         for b in range(4)])  # fmt: skip
    torch.testing.assert_close(term, loop.float(), rtol=1e-6, atol=1e-5)
    with pytest.raises(ValueError, match="z has 3 dimensions but this gmm prior has 2"):
        prior.log_prob(torch.zeros(1, 3))


# ----------------------------------------------------------------------------------------------
# The Monte Carlo KL


def draws_of(mu, logvar, n, seed):
    g = torch.Generator().manual_seed(seed)
    eps = torch.randn(mu.size(0), n, mu.size(1), generator=g, dtype=torch.float64)
    return mu[:, None].double() + torch.exp(0.5 * logvar)[:, None].double() * eps


def standard_error(values):
    return values.std(dim=-1) / math.sqrt(values.size(-1))


def test_monte_carlo_kl_to_the_standard_normal_is_the_closed_form():
    mu = torch.tensor([[0.5, -1.0, 0.0], [2.0, 0.3, -0.7], [0.0, 0.0, 0.0]])
    logvar = torch.tensor([[-1.0, 0.2, 0.0], [-2.0, -0.5, 0.4], [0.0, 0.0, 0.0]])
    z = draws_of(mu, logvar, 20_000, seed=0)
    estimate = posterior_kl(mu, logvar, z)
    closed = gaussian_kl(mu, logvar).sum(-1).double()
    # the per-sample log-ratios, from torch.distributions, give the estimate's standard error
    q = Normal(mu[:, None].double(), torch.exp(0.5 * logvar)[:, None].double())
    ratios = q.log_prob(z).sum(-1) - Normal(0.0, 1.0).log_prob(z).sum(-1)
    # on these samples, exactly the mean of torch.distributions' log-ratios; in expectation
    # the closed form
    torch.testing.assert_close(estimate, ratios.mean(-1), rtol=1e-9, atol=1e-9)
    assert (estimate - closed).abs().max() <= 5 * standard_error(ratios).max() + 1e-9
    assert estimate[2].item() == pytest.approx(0.0, abs=1e-12)  # q = p: every ratio is 0
    torch.testing.assert_close(posterior_kl(mu, logvar, z, StandardNormalPrior(3)), estimate)


def test_monte_carlo_kl_to_a_full_covariance_gaussian_is_the_closed_form():
    mu = torch.tensor([[0.5, -1.0], [2.0, 0.3]], dtype=torch.float64)
    logvar = torch.tensor([[-1.0, 0.2], [-2.0, -0.5]], dtype=torch.float64)
    m = np.array([1.0, -0.5])
    sigma = np.array([[2.0, 0.6], [0.6, 0.5]])
    prior = GaussianMixturePrior(
        torch.ones(1),
        torch.from_numpy(m)[None],
        torch.linalg.cholesky(torch.from_numpy(sigma))[None],
    )
    z = draws_of(mu, logvar, 20_000, seed=1)
    estimate = posterior_kl(mu, logvar, z, prior)
    inv = np.linalg.inv(sigma)
    for b in range(2):
        s = np.diag(np.exp(logvar[b].numpy()))
        diff = m - mu[b].numpy()
        # KL(N(mu, S) || N(m, Sigma)), by hand
        closed = 0.5 * (
            np.trace(inv @ s)
            + diff @ inv @ diff
            - 2
            + np.log(np.linalg.det(sigma))
            - np.log(np.linalg.det(s))
        )
        q = MultivariateNormal(mu[b], torch.diag(logvar[b].exp()))
        p = MultivariateNormal(torch.from_numpy(m), torch.from_numpy(sigma))
        ratios = q.log_prob(z[b]) - p.log_prob(z[b])
        assert estimate[b].item() == pytest.approx(ratios.mean().item(), rel=1e-9)
        assert abs(estimate[b].item() - closed) <= 5 * standard_error(ratios).item()


# ----------------------------------------------------------------------------------------------
# The flow


@pytest.mark.parametrize("transform", ["nsf", "maf"])
def test_flow_density_integrates_to_one_and_its_samples_follow_it(transform):
    config = FlowConfig(
        transform=transform,
        transforms=2,
        hidden_features=(16, 16),
        lr=5e-3,
        batch_size=128,
        max_steps=100,
        eval_interval=50,
    )
    prior, info = fit_flow(two_clusters(2000, 0), two_clusters(400, 1), config, seed=1)
    h = 0.05
    axis = torch.arange(-8.0, 8.0, h) + h / 2  # midpoints
    grid = torch.stack(torch.meshgrid(axis, axis, indexing="ij"), dim=-1).reshape(-1, 2)
    with torch.no_grad():
        density = prior.log_prob(grid).double().exp()
    assert (density.sum() * h * h).item() == pytest.approx(1.0, abs=5e-3)
    # sample() inverts the transform that log_prob() evaluates: the same mean
    mean_by_quadrature = (density[:, None] * grid.double()).sum(0) * h * h
    samples = prior.sample(20_000, generator=torch.Generator().manual_seed(2)).double()
    torch.testing.assert_close(samples.mean(0), mean_by_quadrature, atol=0.05, rtol=0)
    if transform == "nsf":  # the spline flow learns the two modes: better than any Gaussian
        gaussian, _ = fit_gmm(two_clusters(2000, 0), two_clusters(400, 1), components=(1,))
        assert info["valid_ll"] > mean_log_likelihood(two_clusters(400, 1), gaussian) + 0.3


def test_a_flow_refuses_one_training_row_and_a_dimension_without_spread():
    config = FlowConfig(hidden_features=(4,), transforms=1, max_steps=2, eval_interval=1)
    valid = two_clusters(10, 1)
    # one row has no spread to standardise by (its std is NaN): refused before training,
    # not reported as a never-finite likelihood
    with pytest.raises(ValueError, match="at least 2 training samples of z, got 1"):
        fit_flow(two_clusters(2, 0)[:1], valid, config)
    flat = two_clusters(20, 0)
    flat[:, 1] = 0.5
    with pytest.raises(ValueError, match=r"no spread in dimension\(s\) \[1\]"):
        fit_flow(flat, valid, config)
    with pytest.raises(ValueError, match="at least 1 valid sample"):
        fit_flow(two_clusters(20, 0), valid[:0], config)


def test_flow_training_stops_early_and_keeps_its_best_weights():
    valid = two_clusters(400, 1)
    config = FlowConfig(
        transform="maf",
        transforms=1,
        hidden_features=(8,),
        lr=0.05,  # noisy on purpose: the valid likelihood falls back after its best
        batch_size=32,
        max_steps=2000,
        eval_interval=10,
        patience=3,
    )
    prior, info = fit_flow(two_clusters(400, 0), valid, config, seed=1)
    scores = [h["valid_ll"] for h in info["history"]]
    assert info["steps"] < config.max_steps  # patience ran out
    assert scores[-1] < max(scores)
    assert info["valid_ll"] == max(scores)
    assert mean_log_likelihood(valid, prior) == pytest.approx(max(scores), abs=1e-5)


@pytest.mark.parametrize("kind", ["gmm", "flow"])
def test_a_saved_prior_loads_with_weights_only_and_gives_the_same_density(kind, tmp_path):
    if kind == "gmm":
        prior, _ = known_mixture()
    else:
        config = FlowConfig(hidden_features=(8, 8), transforms=2, max_steps=20, eval_interval=10)
        prior, _ = fit_flow(two_clusters(200, 0), two_clusters(100, 1), config, seed=1)
    path = str(tmp_path / "prior.pt")
    save_prior(path, prior, {"checkpoint": "runs/checkpoint.pt", "fit": {"seconds": 1.5}})
    payload = torch.load(path, weights_only=True)
    assert plain_values_only(payload) and payload["kind"] == kind
    json.dumps(payload["config"]), json.dumps(payload["meta"])

    loaded = load_prior(path, expected_latent_dim=2)
    assert type(loaded) is type(prior) and loaded.meta["fit"] == {"seconds": 1.5}
    z = torch.randn(64, 2)
    with torch.no_grad():
        assert torch.equal(loaded.log_prob(z), prior.log_prob(z))
    torch.testing.assert_close(
        loaded.sample(10, generator=torch.Generator().manual_seed(4)),
        prior.sample(10, generator=torch.Generator().manual_seed(4)),
    )
    with pytest.raises(ValueError, match="has latent size 2 .* has latent size 3"):
        load_prior(path, expected_latent_dim=3)


def test_a_prior_file_holding_a_pickled_object_is_refused(tmp_path):
    path = tmp_path / "bad.pt"
    torch.save({"format": "fairseq_vae.prior", "config": FlowConfig()}, path)
    with pytest.raises(ValueError, match="bad.pt is not a prior file fairseq_vae wrote"):
        load_prior(str(path))
    torch.save({"something": torch.zeros(1)}, path)
    with pytest.raises(ValueError, match="bad.pt is not a prior file fairseq_vae wrote"):
        load_prior(str(path))
    with pytest.raises(ValueError, match="must be JSON-able"):
        save_prior(str(tmp_path / "p.pt"), StandardNormalPrior(2), {"config": FlowConfig()})


# ----------------------------------------------------------------------------------------------
# The model a prior belongs to


class RunsOnLoad:
    """Pickles as a call of os.getcwd: a global that weights_only refuses."""

    def __reduce__(self):
        return os.getcwd, ()


@pytest.mark.parametrize("what", ["prior", "directions"])
@pytest.mark.parametrize("content", ["random bytes", "disallowed global"])
def test_a_corrupt_file_is_refused_without_torchs_advice(what, content, tmp_path):
    from fairseq_vae.latent_space.steering import load_directions

    path = tmp_path / "file.pt"
    if content == "random bytes":
        path.write_bytes(np.random.default_rng(0).bytes(4096))
    else:
        torch.save({"format": f"fairseq_vae.{what}", "config": RunsOnLoad()}, path)
    load = load_prior if what == "prior" else load_directions
    with pytest.raises(ValueError) as error:
        load(str(path))
    made_by = "fairseq-vae-fit-prior" if what == "prior" else "scripts/transfer.py --fit"
    # one line naming the file, and nothing of torch's advice (weights_only=False would run it)
    assert str(error.value) == (
        f"{path} is not a {what} file fairseq_vae wrote ({made_by} writes one)"
    )


def test_a_prior_is_refused_for_another_model_or_latent_size(dict_dir, tmp_path):
    _, model, _ = build_tiny(dict_dir)  # latent size 8
    prior = GaussianMixturePrior(torch.ones(1), torch.zeros(1, 8), torch.eye(8)[None])
    path = str(tmp_path / "prior-gmm.pt")
    save_prior(path, prior, prior_meta(model, "runs/a/checkpoint_best.pt"))

    assert load_prior(path, expected_model=model).components == 1
    # fairseq's --fp16 halves the model: still the same model
    half = build_tiny(dict_dir)[1].half()
    assert model_sha256(half) == model_sha256(model)
    load_prior(path, expected_model=half)

    other = build_tiny(dict_dir)[1]
    with torch.no_grad():
        other.encoder.mlp_mu[0].weight[0, 0] += 0.1
    with pytest.raises(ValueError) as error:
        load_prior(path, expected_model=other, expected_checkpoint="runs/b/checkpoint_last.pt")
    message = str(error.value)
    assert "runs/a/checkpoint_best.pt" in message and "runs/b/checkpoint_last.pt" in message
    assert "the same dictionary" in message

    _, small, _ = build_tiny(dict_dir, "--latent-dim", "4")
    with pytest.raises(ValueError, match="latent size 8 .*runs/a/checkpoint_best.pt.* size 4"):
        load_prior(path, expected_model=small)


# ----------------------------------------------------------------------------------------------
# Crafted and damaged prior and directions files


def rewritten(path, **changes):
    """The payload at ``path`` with ``changes`` (None: the key removed), written back."""
    payload = torch.load(path, weights_only=True)
    for key, value in changes.items():
        if value is None:
            payload.pop(key)
        else:
            payload[key] = value
    torch.save(payload, path)
    return path


def saved_mixture(tmp_path, name="prior.pt"):
    path = str(tmp_path / name)
    save_prior(path, known_mixture()[0], {"checkpoint": "runs/checkpoint.pt"})
    return path


def test_an_interpolation_in_a_prior_file_is_refused_before_it_resolves(tmp_path, monkeypatch):
    from omegaconf import DictConfig, OmegaConf

    calls = []
    OmegaConf.register_new_resolver("fvae_test_size", lambda: calls.append(1) or 2, replace=True)
    try:
        # a DictConfig passes torch's allow-list (fairseq checkpoints hold them); read, its
        # interpolation would run the resolver and give a working latent size
        config = DictConfig({"latent_dim": "${fvae_test_size:}", "components": 3})
        path = rewritten(saved_mixture(tmp_path), config=config)
        with pytest.raises(ValueError) as error:
            load_prior(path)
        assert str(error.value).startswith(f"prior file {path} holds a ")
        assert "DictConfig at config" in str(error.value)
        assert calls == []
    finally:
        OmegaConf.clear_resolver("fvae_test_size")
    monkeypatch.setenv("FVAE_TEST_DIM", "2")
    path = rewritten(saved_mixture(tmp_path), meta={"checkpoint": "${oc.env:FVAE_TEST_DIM}"})
    named = "holds the interpolation '${oc.env:FVAE_TEST_DIM}' at meta.checkpoint"
    with pytest.raises(ValueError, match=re.escape(named)):
        load_prior(path)


@pytest.mark.parametrize(
    "changes, named",
    [
        ({"meta": None}, "is malformed: it has no 'meta'"),
        ({"config": [2, 3]}, "is malformed: its 'config' is a list, not a dict"),
        ({"config": {"components": 3}}, "its latent_dim None is not a positive integer"),
        ({"config": {"latent_dim": 2, "components": "3"}}, "components '3' is not a positive"),
        ({"config": {"latent_dim": 2, "components": 2}}, "weights is (3,) where its config makes"),
        ({"state": {"weights": torch.ones(3)}}, "its state's means is None where its config"),
        ({"kind": "mystery"}, "unknown prior kind 'mystery'"),
    ],
)
def test_a_malformed_prior_file_is_a_value_error_naming_it(changes, named, tmp_path):
    path = rewritten(saved_mixture(tmp_path), **changes)
    with pytest.raises(ValueError, match=f"^prior file {re.escape(path)} .*{re.escape(named)}"):
        load_prior(path)


def test_a_prior_file_is_checked_before_its_sizes_are_built(dict_dir, tmp_path, monkeypatch):
    from fairseq_vae.latent_space import prior_file

    def never(*args):
        raise AssertionError("built a prior from a crafted file's sizes")

    monkeypatch.setattr(prior_file, "build_prior", never)
    # sizes that torch.eye(d).expand(k, d, d) would make terabytes of
    huge = {"latent_dim": 10**6, "components": 10**6}
    path = rewritten(saved_mixture(tmp_path), config=huge)
    with pytest.raises(ValueError, match="latent size 1000000 .* has latent size 2"):
        load_prior(path, expected_latent_dim=2)
    _, model, _ = build_tiny(dict_dir)
    with pytest.raises(ValueError, match="latent size 1000000 .* has latent size 8"):
        load_prior(path, expected_model=model)
    named = "its state's weights is (3,) where its config makes (1000000,)"
    with pytest.raises(ValueError, match=re.escape(named)):
        load_prior(path)
    config = FlowConfig(hidden_features=(4,), transforms=1, max_steps=1, eval_interval=1)
    flow, _ = fit_flow(two_clusters(20, 0), two_clusters(10, 1), config)
    path = str(tmp_path / "flow.pt")
    save_prior(path, flow, {})
    rewritten(path, config=dict(flow.config(), hidden_features=[10**5, 10**5]))
    with pytest.raises(ValueError, match=r"makes a flow of 10000\d+ weights, the file holds \d+"):
        load_prior(path, expected_latent_dim=2)


@pytest.mark.parametrize(
    "changes, named",
    [
        ({"bias": None}, "is malformed: it has no 'bias'"),
        ({"values": "ab"}, "is malformed: its 'values' is a str, not a list"),
        ({"means": torch.zeros(4)}, "is malformed: its means have shape (4,) for 2 values"),
        ({"weight": torch.zeros(2, 3)}, "its weight has shape (2, 3) where its means make (2, 2)"),
    ],
)
def test_a_malformed_directions_file_is_a_value_error_naming_it(
    changes, named, tmp_path, monkeypatch
):
    from fairseq_vae.latent_space import steering

    x = torch.cat([two_clusters(20, 0), two_clusters(20, 1) + 5])
    directions = steering.fit_directions(x.double(), ["a"] * 20 + ["b"] * 20, "f")
    path = str(tmp_path / "directions.pt")
    # no model to describe: a meta naming the checkpoint only
    monkeypatch.setattr(
        steering, "prior_meta", lambda model, checkpoint: {"checkpoint": checkpoint}
    )
    steering.save_directions(path, directions, None, "c.pt")
    rewritten(path, **changes)
    with pytest.raises(
        ValueError, match=f"^directions file {re.escape(path)} .*{re.escape(named)}"
    ):
        steering.load_directions(path)


def test_a_flow_records_its_zuko_version_and_refuses_another(tmp_path, caplog):
    import zuko

    config = FlowConfig(hidden_features=(4,), transforms=1, max_steps=1, eval_interval=1)
    flow, _ = fit_flow(two_clusters(20, 0), two_clusters(10, 1), config)
    path = str(tmp_path / "flow.pt")
    save_prior(path, flow, {"checkpoint": "runs/checkpoint.pt"})
    meta = torch.load(path, weights_only=True)["meta"]
    assert meta["zuko_version"] == zuko.__version__
    assert load_prior(path).meta["zuko_version"] == zuko.__version__
    # another zuko may read the same weights as another density: refused, both versions named
    rewritten(path, meta=dict(meta, zuko_version="0.0.1"))
    expected = (
        f"flow prior {path} was built with zuko 0.0.1 but zuko {zuko.__version__} is installed"
    )
    with pytest.raises(ValueError, match=re.escape(expected)):
        load_prior(path)
    # a file from before the version was recorded: loaded, with a warning that it is unchecked
    rewritten(path, meta={"checkpoint": "runs/checkpoint.pt"})
    with caplog.at_level(logging.WARNING, logger="fairseq_vae.latent_space.prior_file"):
        load_prior(path)
    assert f"flow prior {path} does not record the zuko version" in caplog.text
    # a mixture holds no zuko object: nothing recorded
    mixture = saved_mixture(tmp_path)
    assert "zuko_version" not in torch.load(mixture, weights_only=True)["meta"]


def test_a_failed_save_leaves_the_old_file_and_no_partial_one(tmp_path, monkeypatch):
    path = saved_mixture(tmp_path)
    before = open(path, "rb").read()
    save = torch.save

    def disk_full(payload, f):
        f.write(b"half a file")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(torch, "save", disk_full)
    with pytest.raises(OSError, match="No space left"):
        save_prior(path, StandardNormalPrior(2), {})
    assert os.listdir(tmp_path) == ["prior.pt"] and open(path, "rb").read() == before
    # a save that works: the data reaches the disk before the rename names it
    monkeypatch.setattr(torch, "save", save)
    events = []
    fsync, replace = os.fsync, os.replace
    monkeypatch.setattr(os, "fsync", lambda fd: events.append("fsync") or fsync(fd))
    monkeypatch.setattr(os, "replace", lambda *a: events.append("replace") or replace(*a))
    save_prior(path, StandardNormalPrior(2), {})
    assert events[:2] == ["fsync", "replace"] and load_prior(path).kind == "standard"


# ----------------------------------------------------------------------------------------------
# fairseq-vae-fit-prior


TRAIN_LINES = random_sentences(300, seed=40)
# a valid split unlike the training text: fitting on it would move the prior's mean
VALID_LINES = ["quickly"] * 60


@pytest.fixture(scope="module")
def fitted_setup(dict_dir, tmp_path_factory):
    """A tiny model with an informative posterior (beta 0, all decoder inputs dropped), its
    checkpoint, and a data folder whose valid split differs from its training split."""
    task, model, args = train_tiny(dict_dir, 100, 0.0, 0, "--word-dropout", "1.0")
    root = tmp_path_factory.mktemp("fit-prior")
    os.makedirs(root / "run")
    checkpoint = str(root / "run" / "checkpoint_best.pt")
    save_checkpoint(checkpoint, model, args)
    splits = {"train": TRAIN_LINES, "valid": VALID_LINES, "test": random_sentences(20, 41)}
    data = make_data_bin(str(root / "bin"), dict_dir, splits)
    return task, model, checkpoint, data


def test_fit_prior_cli_writes_a_mixture_beside_the_checkpoint(fitted_setup):
    task, model, checkpoint, data = fitted_setup
    log = run_tool(
        "fairseq-vae-fit-prior",
        data,
        "--user-dir",
        USER_DIR,
        "--path",
        checkpoint,
        "--prior-model",
        "gmm",
        "--components",
        "1,2",
        "--batch-size",
        "7",
        "--cpu",
    )
    path = os.path.join(os.path.dirname(checkpoint), "prior-gmm.pt")
    payload = torch.load(path, weights_only=True)
    assert plain_values_only(payload)
    prior = load_prior(path, expected_model=model, expected_checkpoint=checkpoint)
    fit = prior.meta["fit"]
    assert prior.meta["checkpoint"] == os.path.abspath(checkpoint)
    assert prior.meta["dictionary_sha256"] == bytes(model.dictionary_sha256.tolist()).hex()
    assert (fit["train_sentences"], fit["valid_sentences"]) == (300, 60)
    assert fit["samples_per_sentence"] == 4
    assert prior.components == fit["selection"]["components"] in (1, 2)
    # EM from the k-means start beats N(0, I) on the data it fitted
    assert fit["train_ll"] > fit["train_ll_standard"]
    assert "fitted a gmm prior in" in log and "components (of 1, 2)" in log
    assert f"train {fit['train_ll']:.3f} under the prior vs" in log and "N(0, I)" in log


def test_fit_prior_trains_a_flow_with_the_options_given(fitted_setup, tmp_path, caplog):
    task, model, checkpoint, data = fitted_setup
    out = str(tmp_path / "flow.pt")
    argv = [data, "--user-dir", USER_DIR, "--path", checkpoint, "--prior-model", "flow"]
    argv += ["--flow-hidden", "16,16", "--flow-transform", "maf", "--flow-transforms", "2"]
    argv += ["--flow-max-steps", "40", "--flow-eval-interval", "20", "--out", out, "--cpu"]
    with caplog.at_level(logging.INFO, logger="fairseq_vae"):
        fit_prior.main(options.parse_args_and_arch(fit_prior.get_parser(), argv))
    prior = load_prior(out, expected_model=model)
    assert prior.config() == {
        "latent_dim": 8,
        "transform": "maf",
        "transforms": 2,
        "hidden_features": [16, 16],
        "bins": 8,
    }
    assert prior.meta["fit"]["selection"]["steps"] == 40
    assert "fitted a flow prior in" in caplog.text and "maf flow" in caplog.text
    with pytest.raises(ValueError, match="--flow-hidden takes positive integers"):
        fit_prior.main(options.parse_args_and_arch(fit_prior.get_parser(), argv[:8] + ["16,x"]))


def test_fitting_reads_only_the_training_split(fitted_setup, monkeypatch):
    task, model, checkpoint, data = fitted_setup
    loaded = []
    load_dataset = TextVAETask.load_dataset

    def recording(self, split, *args, **kwargs):
        loaded.append(split)
        return load_dataset(self, split, *args, **kwargs)

    monkeypatch.setattr(TextVAETask, "load_dataset", recording)
    argv = [data, "--user-dir", USER_DIR, "--path", checkpoint, "--prior-model", "gmm"]
    args = options.parse_args_and_arch(fit_prior.get_parser(), argv + ["--components", "1"])
    args.out = os.path.join(os.path.dirname(checkpoint), "one-gaussian.pt")
    prior = load_prior(fit_prior.main(args))
    assert loaded == ["train", "valid"]  # valid for the selection, never test

    # one Gaussian's mean is the mean of the samples it was fitted to: that of the training
    # posteriors, up to the sampling noise, and not that of training and valid together
    with torch.no_grad():
        mu, logvar = model.encoder.posterior(*encode_lines(task.source_dictionary, TRAIN_LINES))
        valid_mu, _ = model.encoder.posterior(*encode_lines(task.source_dictionary, VALID_LINES))
    train_mean = mu.double().mean(0)
    n, m = len(TRAIN_LINES), len(VALID_LINES)
    mixed_mean = (n * train_mean + m * valid_mu.double().mean(0)) / (n + m)
    noise = logvar.double().exp().mean(0).sum().item() / (4 * n)  # E |sample mean - mean|^2
    fitted = prior.means[0]
    assert (fitted - train_mean).pow(2).sum().item() < 9 * noise
    assert (mixed_mean - train_mean).pow(2).sum().item() > 4 * 9 * noise  # the data can tell
