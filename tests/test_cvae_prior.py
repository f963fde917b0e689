"""A prior fitted to bart_cvae: a density r of the standardised latent eps = (z - mu_p(c)) /
sigma_p(c). The change of variables against torch.distributions, the IW bound under it against
the float64 one-pair loop, fairseq-vae-fit-prior on pairs against the posteriors the hub
computes, and fairseq-generate / the hub / fairseq-vae-eval --prior-file against z drawn and
densities computed here."""

import functools
import json
import math
import os
import re

import pytest
import test_cvae
import torch
from conftest import USER_DIR, run_tool
from test_cvae import (
    PAIRS,
    SOURCES,
    TARGETS,
    build_cvae,
    log_p_x_given_c_by_hand,
    pair_corpus,
    paired_batch,
)
from torch.distributions import Categorical, MixtureSameFamily, MultivariateNormal, Normal

from fairseq_vae.latent_space.prior import GaussianMixturePrior, StandardNormalPrior
from fairseq_vae.latent_space.prior_file import load_prior, prior_meta, save_prior
from fairseq_vae.metrics.estimators import iw_estimates
from fairseq_vae.models.bart_cvae import standardised, standardised_log_density

pytestmark = pytest.mark.usefixtures("one_thread")

# test_cvae's dictionary, paired data and tiny trained checkpoint, made once for this module too
pair_dict_dir, pair_bin = test_cvae.pair_dict_dir, test_cvae.pair_bin
cvae_checkpoint = test_cvae.cvae_checkpoint


def mixture(dim):
    """Two components of dim: one at 0.5 with correlated axes, one at -1.5, narrow."""
    g = torch.Generator().manual_seed(3)
    a = torch.randn(dim, dim, generator=g, dtype=torch.float64) * 0.3
    covs = torch.stack([a @ a.T + 0.5 * torch.eye(dim, dtype=torch.float64),
                        0.3 * torch.eye(dim, dtype=torch.float64)])  # fmt: skip
    means = torch.stack([0.5 * torch.ones(dim), -1.5 * torch.ones(dim)]).double()
    weights = torch.tensor([0.3, 0.7], dtype=torch.float64)
    reference = MixtureSameFamily(Categorical(probs=weights), MultivariateNormal(means, covs))
    return GaussianMixturePrior(weights, means, torch.linalg.cholesky(covs)), reference


def test_the_standardised_latent_is_a_change_of_variables():
    """q(z|c, x) seen through p(z|c) is the Gaussian of (z - mu_p) / sigma_p, and a density r of
    it is a density of z with the Jacobian sum(log sigma_p): with r = N(0, I), p(z|c) itself."""
    g = torch.Generator().manual_seed(0)
    mu, logvar, p_mu, p_logvar = (torch.randn(5, 4, generator=g, dtype=torch.float64)
                                  for _ in range(4))  # fmt: skip
    z = torch.randn(5, 4, generator=g, dtype=torch.float64) * 2
    q, p = Normal(mu, (0.5 * logvar).exp()), Normal(p_mu, (0.5 * p_logvar).exp())
    eps = (z - p_mu) / p.scale
    s_mu, s_logvar = standardised(mu, logvar, p_mu, p_logvar)
    standard_q = Normal(s_mu, (0.5 * s_logvar).exp())
    # the density of eps, back through the Jacobian, is q's density of z
    jacobian = p.scale.log().sum(-1)
    torch.testing.assert_close(standard_q.log_prob(eps).sum(-1) - jacobian, q.log_prob(z).sum(-1))
    standard_normal = StandardNormalPrior(4)
    got = standardised_log_density(standard_normal.log_prob, z, p_mu, p_logvar)
    torch.testing.assert_close(got, p.log_prob(z).sum(-1))


def test_the_iw_bound_under_a_fitted_conditional_prior_is_the_float64_loop(pair_dict_dir):
    task, model, _ = build_cvae(pair_dict_dir)
    model.double()
    encoder, k = model.encoder, 6
    prior, reference = mixture(encoder.latent_dim)
    sample = paired_batch(task.dictionary, SOURCES[1:2], TARGETS[1:2])
    net = sample["net_input"]
    with torch.no_grad():
        states, mask, mean = encoder.source_context(net["src_tokens"], net["src_lengths"])
        p_mu, p_logvar = encoder.prior(mean)
        mu, logvar = encoder.conditional_posterior(mean, net["tgt_tokens"], net["tgt_lengths"])
        eps = torch.randn(1, k, encoder.latent_dim, generator=torch.Generator().manual_seed(4))
        log_prior = functools.partial(
            standardised_log_density, prior.log_prob, prior_mu=p_mu[:, None],
            prior_logvar=p_logvar[:, None],
        )  # fmt: skip
        got = iw_estimates(model, mu, logvar, net["prev_output_tokens"], sample["target"], k,
                           chunk=4, eps=eps, prior=(p_mu, p_logvar), log_prior=log_prior,
                           encoder_out_of=encoder.encoder_out_for(states, mask, mean))  # fmt: skip

        def mixture_of_eps(z, p):  # r((z - mu_p) / sigma_p) / prod sigma_p, by hand
            return reference.log_prob((z - p.loc) / p.scale) - p.scale.log().sum()

        expected = log_p_x_given_c_by_hand(model, sample, eps, mixture_of_eps)
        own = log_p_x_given_c_by_hand(model, sample, eps)
    torch.testing.assert_close(got.prior_log_px[0].double(), expected, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(got.log_px[0].double(), own, rtol=1e-5, atol=1e-5)
    assert abs(expected - own) > 1e-3  # the two priors are not the same density


@pytest.fixture(scope="module")
def fitted(pair_bin, cvae_checkpoint, tmp_path_factory):
    out = tmp_path_factory.mktemp("cvae-prior") / "prior-gmm.pt"
    log = run_tool("fairseq-vae-fit-prior", pair_bin, "--user-dir", USER_DIR, "--task",
                   "text_vae", *PAIRS, "--path", cvae_checkpoint, "--cpu", "--prior-model",
                   "gmm", "--components", "1", "--samples-per-sentence", "8",
                   "--out", out)  # fmt: skip
    return str(out), log


def test_fit_prior_on_pairs_fits_q_seen_through_the_conditional_prior(fitted, cvae_hub):
    """A one-component mixture's mean and variances are those of the standardised posterior
    draws: here, from the posteriors and priors the hub computes for the 300 training pairs."""
    path, log = fitted
    prior = load_prior(path, expected_model=cvae_hub.model)
    assert prior.meta["fit"]["train_sentences"] == 300, log[-2000:]
    sources, targets = pair_corpus(300, 0)  # the training split
    mu, logvar = cvae_hub.encode(sources, targets)
    p_mu, p_logvar = cvae_hub.prior(sources)
    s_mu, s_logvar = standardised(mu.double(), logvar.double(), p_mu.double(), p_logvar.double())
    # 2,400 draws of N(s_mu, s_sigma): their mean and variance within a few standard errors
    variance = s_logvar.exp().mean(0) + s_mu.var(0)
    gap = (prior.means[0] - s_mu.mean(0)).abs()
    assert (gap < 5 * (variance / 2400).sqrt()).all(), gap
    fitted_variance = (prior.scale_tril[0] @ prior.scale_tril[0].T).diagonal()
    tolerance = 5 * math.sqrt(2 / 2400)  # five standard errors of a variance, relative
    relative = (fitted_variance / variance - 1).abs()
    assert (relative < tolerance).all(), relative
    # q's own draws (not seen through p(z|c)) have another spread
    raw_variance = logvar.double().exp().mean(0) + mu.double().var(0)
    assert ((fitted_variance / raw_variance - 1).abs() > 2 * tolerance).any(), raw_variance


@pytest.fixture(scope="module")
def cvae_hub(pair_bin, cvae_checkpoint):
    from fairseq_vae.models.bart_cvae import BARTCVAEModel

    return BARTCVAEModel.from_pretrained(
        os.path.dirname(cvae_checkpoint), os.path.basename(cvae_checkpoint), pair_bin
    )


@pytest.fixture(scope="module")
def mixture_file(cvae_hub, cvae_checkpoint, tmp_path_factory):
    """A two-component mixture saved as a prior of the test model, and N(0, I) the same way."""
    folder = tmp_path_factory.mktemp("cvae-prior-files")
    files = {}
    for kind, prior in (("gmm", mixture(cvae_hub.latent_dim)[0]),
                        ("standard", StandardNormalPrior(cvae_hub.latent_dim))):  # fmt: skip
        files[kind] = str(folder / f"prior-{kind}.pt")
        save_prior(files[kind], prior, prior_meta(cvae_hub.model, cvae_checkpoint))
    return files


def hypotheses_by_id(stdout):
    """{sentence id: [(score in nats a token, text), ...]} of fairseq-generate's H lines."""
    found = {}
    for m in re.finditer(r"^H-(\d+)\t(\S+)\t(.*)$", stdout, re.M):
        # fairseq-generate prints the score in bits
        found.setdefault(int(m[1]), []).append((float(m[2]) * math.log(2), m[3]))
    return found


@pytest.mark.parametrize("n", [1, 3])
def test_generate_with_a_prior_file_decodes_mu_p_plus_sigma_p_times_its_draws(
    pair_bin, cvae_checkpoint, cvae_hub, mixture_file, n
):
    """What fairseq-generate prints (words and scores, which follow z even where a tiny model's
    words do not) is the decoding of z = mu_p(c) + sigma_p(c) * eps with eps drawn here."""
    out = run_tool("fairseq-generate", pair_bin, "--user-dir", USER_DIR, "--task", "text_vae",
                   *PAIRS, "--path", cvae_checkpoint, "--cpu", "--beam", "1", "--latent-source",
                   "prior", "--latent-samples", n, "--prior-file", mixture_file["gmm"],
                   "--seed", "5")  # fmt: skip
    printed = hypotheses_by_id(out)
    sources, _ = pair_corpus(12, 2)  # the test split: sentence i has id i
    prior = load_prior(mixture_file["gmm"])
    # source i's k-th draw: the k-th of n from a generator seeded by (seed, i), as --latent-samples
    eps = torch.cat([prior.sample(n, torch.Generator().manual_seed(5 * 1_000_003 + i))
                     for i in range(12)]).float()  # fmt: skip
    p_mu, p_logvar = cvae_hub.prior(sources)
    rows = cvae_hub.tokens_of([s for s in sources for _ in range(n)])

    def decoded(eps):
        z = p_mu.repeat_interleave(n, 0) + (0.5 * p_logvar).exp().repeat_interleave(n, 0) * eps
        hypos = cvae_hub.decode_hypotheses(z, sources=rows, beam=1)
        return [(h[0]["score"].item(), cvae_hub.to_text(h[0]["tokens"])) for h in hypos]

    by_hand, standard = decoded(eps), decoded(torch.randn(eps.shape))
    assert len(out) and sorted(printed) == list(range(12)), out[-2000:]
    flat = [hypothesis for i in range(12) for hypothesis in printed[i]]
    assert [text for _, text in flat] == [text for _, text in by_hand]
    assert max(abs(a[0] - b[0]) for a, b in zip(flat, by_hand)) < 1e-4  # printed to 4 places
    assert max(abs(a[0] - b[0]) for a, b in zip(flat, standard)) > 1e-3  # N(0, I) is not it
    assert cvae_hub.sample(sources, n=n, seed=5, prior=mixture_file["gmm"]) == [
        [text for _, text in printed[i]] for i in range(12)
    ]


def test_eval_with_a_prior_file_reports_log_p_x_given_c_under_it(
    pair_bin, cvae_checkpoint, cvae_hub, mixture_file, tmp_path
):
    """N(0, I) as the fitted density is p(z|c) itself: the same IW-NLL from the same samples;
    the mixture gives another, and the draws of --latent-samples come from it."""
    reports = {}
    for kind, path in mixture_file.items():
        report_path = tmp_path / f"{kind}.json"
        out = run_tool("fairseq-vae-eval", pair_bin, "--user-dir", USER_DIR, "--task",
                       "text_vae", *PAIRS, "--path", cvae_checkpoint, "--gen-subset", "test",
                       "--cpu", "--iw-samples", "4", "--latent-samples", "2", "--prior-file",
                       path, "--results-json", report_path)  # fmt: skip
        reports[kind] = json.load(open(report_path))
        own_nll = reports[kind]["metrics"]["iw_nll"]
        assert f"(p(z|c): {own_nll:.3f})" in out, out[-2000:]  # the model's own prior, named
        assert "2 z from the fitted prior for each of" in out  # and the draws' prior
    own, standard = reports["standard"]["metrics"], reports["standard"]["metrics"]["prior_file"]
    assert standard["iw_nll"] == pytest.approx(own["iw_nll"], rel=1e-6)
    assert standard["kl_mc"] == pytest.approx(own["kl"], abs=5.0)  # 4-sample MC of the same KL
    gmm = reports["gmm"]["metrics"]["prior_file"]
    assert math.isfinite(gmm["iw_nll"]) and abs(gmm["iw_nll"] - own["iw_nll"]) > 1e-3
    assert reports["gmm"]["metrics"]["iw_nll"] == pytest.approx(own["iw_nll"], rel=1e-6)
    # the several latents are the fitted prior's draws, as the hub's (the split's first source
    # has id 0 and so on: the test sources are distinct)
    sources, _ = pair_corpus(12, 2)
    assert len(set(sources)) == 12
    examples = reports["gmm"]["conditional"]["examples"]
    assert [e["outputs"] for e in examples] == cvae_hub.sample(
        sources[: len(examples)], n=2, seed=1, prior=mixture_file["gmm"]
    )
