"""A fitted prior used where a prior is: the IW-NLL and KL of fairseq-vae-eval --prior-file
against a one-sentence, one-sample-at-a-time float64 loop and against the closed form,
fairseq-generate --latent-source prior --prior-file, the hub's sample(prior=...) and
scripts/sample.py --prior-file against decoding z drawn here from the same prior and seed."""

import json
import math
import os
import re
import subprocess
import sys

import pytest
import torch
from conftest import BIN, ROOT, USER_DIR, build_tiny, encode_lines, random_sentences
from torch.distributions import Categorical, MixtureSameFamily, MultivariateNormal
from vae_fixtures import make_data_bin, save_checkpoint, shift_right, train_tiny

from fairseq_vae.criterions.elbo import gaussian_kl
from fairseq_vae.latent_space.prior import GaussianMixturePrior, StandardNormalPrior
from fairseq_vae.latent_space.prior_file import load_prior, prior_meta, save_prior
from fairseq_vae.metrics.estimators import iw_estimates, iw_log_likelihood
from fairseq_vae.models.bart_vae import BARTVAEModel

LATENT = 8
TEST_LINES = random_sentences(9, seed=81, min_len=2, max_len=8)
ONE_LINE = ["the big cat sat on a red mat"]


# the machine's two cores are shared: one thread each (conftest.one_thread)
pytestmark = pytest.mark.usefixtures("one_thread")


def mixture_params():
    """Two components in 8-D: one near the origin with correlated axes, one far off (mean 4
    in every dimension), where N(0, I) puts almost no mass."""
    g = torch.Generator().manual_seed(11)
    a = torch.randn(LATENT, LATENT, generator=g, dtype=torch.float64) * 0.3
    covs = torch.stack([a @ a.T + 0.5 * torch.eye(LATENT, dtype=torch.float64),
                        0.2 * torch.eye(LATENT, dtype=torch.float64)])  # fmt: skip
    means = torch.stack([0.3 * torch.ones(LATENT), 4.0 * torch.ones(LATENT)]).double()
    weights = torch.tensor([0.4, 0.6], dtype=torch.float64)
    return weights, means, covs


@pytest.fixture(scope="module")
def setup(dict_dir, tmp_path_factory):
    """A tiny model whose sentences depend on z (trained until z carries the sentence's length,
    as test_generate's), its checkpoint and data, and prior files fitted (here: set) to it."""
    task, model, args = train_tiny(dict_dir, 150, 0.1, 0)
    root = tmp_path_factory.mktemp("prior-use")
    os.makedirs(root / "run")
    checkpoint = str(root / "run" / "checkpoint.pt")
    save_checkpoint(checkpoint, model, args)
    data = make_data_bin(str(root / "bin"), dict_dir, {"test": TEST_LINES, "valid": ONE_LINE})
    weights, means, covs = mixture_params()
    files = {}
    for kind, prior in (
        ("gmm", GaussianMixturePrior(weights, means, torch.linalg.cholesky(covs))),
        ("standard", StandardNormalPrior(LATENT)),
    ):
        files[kind] = str(root / "run" / f"prior-{kind}.pt")
        save_prior(files[kind], prior, prior_meta(model, checkpoint))
    # a prior of a model with another latent size
    _, small, _ = build_tiny(dict_dir, "--latent-dim", "4")
    files["small"] = str(root / "prior-small.pt")
    small_prior = GaussianMixturePrior(torch.ones(1), torch.zeros(1, 4), torch.eye(4)[None])
    save_prior(files["small"], small_prior, prior_meta(small, "runs/small/checkpoint.pt"))
    # a prior of another model of the same size
    other = build_tiny(dict_dir)[1]
    files["other"] = str(root / "prior-other.pt")
    save_prior(files["other"], StandardNormalPrior(LATENT), prior_meta(other, "runs/other.pt"))
    return task, model, checkpoint, data, files


def reference_mixture():
    weights, means, covs = mixture_params()
    return MixtureSameFamily(Categorical(probs=weights), MultivariateNormal(means, covs))


# ----------------------------------------------------------------------------------------------
# The slow, obviously correct version: one sentence, one sample at a time, in float64


@torch.no_grad()
def slow_iw_terms(model, dictionary, line, eps, log_prior):
    """(log p(x), KL(q || p') by Monte Carlo, [log p(x|z_k)]) of one sentence under the prior
    ``log_prior`` (a float64 function of one z), from the K draws eps (K x D), with plain Python
    loops."""
    tokens = dictionary.encode_line(line, add_if_not_exist=False).long()
    mu_t, logvar_t = model.encoder.posterior(tokens[None], torch.tensor([len(tokens)]))
    mu, logvar = mu_t[0].double().tolist(), logvar_t[0].double().tolist()
    prev = torch.cat([tokens.new_tensor([dictionary.eos()]), tokens[:-1]])[None]
    log_ws, ratios, reconstructions = [], [], []
    for k in range(eps.size(0)):
        z = [mu[d] + math.exp(0.5 * logvar[d]) * eps[k, d].item() for d in range(len(mu))]
        encoder_out = model.encoder.latent_encoder_out(mu_t, logvar_t, torch.tensor([z]).float())
        logits, _ = model.decoder(prev, encoder_out=encoder_out)
        log_px_z = sum(
            torch.log_softmax(logits[0, t].double(), dim=-1)[tokens[t]].item()
            for t in range(len(tokens))
        )
        log_pz = log_prior(torch.tensor(z, dtype=torch.float64))
        log_qz = sum(
            -0.5 * (z[d] - mu[d]) ** 2 / math.exp(logvar[d])
            - 0.5 * logvar[d]
            - 0.5 * math.log(2 * math.pi)
            for d in range(len(z))
        )
        log_ws.append(log_px_z + log_pz - log_qz)
        ratios.append(log_qz - log_pz)
        reconstructions.append(log_px_z)
    top = max(log_ws)
    log_px = top + math.log(sum(math.exp(w - top) for w in log_ws)) - math.log(len(log_ws))
    return log_px, sum(ratios) / len(ratios), reconstructions


def mixture_log_density(z):
    return reference_mixture().log_prob(z).item()


def standard_log_density(z):
    return sum(-0.5 * v * v - 0.5 * math.log(2 * math.pi) for v in z.tolist())


def mc_kl_standard_error(mu, logvar, k):
    """The standard deviation of the K-sample Monte Carlo KL to N(0, I), in closed form: with
    z_d = mu_d + s_d e_d, log q - log p = sum_d 0.5 ((s_d^2 - 1) e_d^2 + 2 mu_d s_d e_d + mu_d^2)
    - log s_d, whose variance is sum_d 0.5 (s_d^2 - 1)^2 + mu_d^2 s_d^2."""
    s2 = logvar.double().exp()
    variance = (0.5 * (s2 - 1) ** 2 + mu.double() ** 2 * s2).sum(-1)
    return (variance / k).sqrt()


def batch_of(task, lines):
    d = task.source_dictionary
    src, lengths = encode_lines(d, lines)
    return src, lengths, shift_right(src, lengths, d)


# ----------------------------------------------------------------------------------------------
# The estimator


@torch.no_grad()
def test_iw_nll_and_kl_with_a_fitted_prior_equal_a_float64_loop(setup):
    task, model, _, _, files = setup
    prior = load_prior(files["gmm"], expected_model=model)
    lines = TEST_LINES[:4]  # varied lengths: padding
    src, lengths, prev = batch_of(task, lines)
    mu, logvar = model.encoder.posterior(src, lengths)
    eps = torch.randn(len(lines), 7, LATENT, generator=torch.Generator().manual_seed(1))
    # half the draws moved next to the far component: log p'(z) varies over orders of magnitude
    eps[:, ::2] += (4.0 - mu[:, None]) / torch.exp(0.5 * logvar)[:, None]
    result = iw_estimates(model, mu, logvar, prev, src, 7, 3, eps=eps, log_prior=prior.log_prob)
    standard, _, _ = iw_log_likelihood(model, mu, logvar, prev, src, 7, 3, eps=eps)
    torch.testing.assert_close(result.log_px, standard)  # the N(0, I) numbers unchanged
    for b, line in enumerate(lines):
        log_px, kl, _ = slow_iw_terms(
            model, task.source_dictionary, line, eps[b], mixture_log_density
        )
        assert result.prior_log_px[b].item() == pytest.approx(log_px, rel=1e-4)
        assert result.prior_kl[b].item() == pytest.approx(kl, rel=1e-4, abs=1e-3)
        # a check with teeth: the fitted prior's numbers are not the N(0, I) ones
        assert abs(log_px - standard[b].item()) > 1.0
    # the chunking changes nothing
    for chunk in (1, 7):
        again = iw_estimates(
            model, mu, logvar, prev, src, 7, chunk, eps=eps, log_prior=prior.log_prob
        )
        torch.testing.assert_close(again.prior_log_px, result.prior_log_px, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(again.prior_kl, result.prior_kl, rtol=1e-6, atol=1e-6)


@torch.no_grad()
def test_monte_carlo_kl_to_a_standard_normal_prior_is_the_analytic_kl(setup):
    task, model, _, _, files = setup
    prior = load_prior(files["standard"], expected_model=model)
    src, lengths, prev = batch_of(task, TEST_LINES)
    mu, logvar = model.encoder.posterior(src, lengths)
    g = torch.Generator().manual_seed(2)
    k = 400
    result = iw_estimates(
        model, mu, logvar, prev, src, k, 100, generator=g, log_prior=prior.log_prob
    )
    # the same weights: the "fitted" N(0, I) gives exactly the N(0, I) estimate
    torch.testing.assert_close(result.prior_log_px, result.log_px, rtol=0, atol=0)
    analytic = gaussian_kl(mu, logvar).sum(-1).double()
    assert analytic.min() > 1.0  # the posterior is informative: the KL is not trivially 0
    error = (result.prior_kl - analytic).abs()
    assert (error <= 4 * mc_kl_standard_error(mu, logvar, k) + 1e-6).all(), (error, analytic)


# ----------------------------------------------------------------------------------------------
# fairseq-vae-eval --prior-file


def run(tool, *args, check=True):
    env = dict(os.environ, OMP_NUM_THREADS="1")
    path = tool if os.sep in tool else os.path.join(BIN, tool)
    result = subprocess.run(
        [path, *map(str, args)], capture_output=True, text=True, env=env, timeout=600, cwd=ROOT
    )
    if check:
        assert result.returncode == 0, f"{tool} failed:\n{result.stdout}\n{result.stderr}"
    return result


def table_rows(stdout):
    body = stdout[stdout.index("\nmetric") + 1 :].splitlines()[1:]
    return dict(re.match(r"\s*(\S.*?)\s{2,}(\S.*)$", line).groups() for line in body)


def eval_args(data, checkpoint, split, results, *extra):
    return [data, "--user-dir", USER_DIR, "--path", checkpoint, "--gen-subset", split,
            "--no-bleu", "--results-json", results, "--cpu", *extra]  # fmt: skip


def test_eval_with_a_standard_normal_prior_file_repeats_the_n01_numbers(setup, tmp_path):
    task, model, checkpoint, data, files = setup
    results = tmp_path / "results.json"
    k = 200
    stdout = run("fairseq-vae-eval", *eval_args(
        data, checkpoint, "test", results, "--iw-samples", k, "--iw-chunk", 50,
        "--batch-size", 4, "--prior-file", files["standard"],
    )).stdout  # fmt: skip
    metrics = json.loads(results.read_text())["metrics"]
    fitted = metrics["prior_file"]
    assert (fitted["path"], fitted["kind"]) == (files["standard"], "standard")
    for key in ("iw_nll", "iw_ppl_token", "iw_ppl_word"):
        assert fitted[key] == pytest.approx(metrics[key], rel=1e-6), key
    # the Monte Carlo KL against the analytic one, within the standard error of a mean of
    # 9 sentences' K-sample estimates (posteriors recomputed here)
    with torch.no_grad():
        mu, logvar = model.encoder.posterior(*encode_lines(task.source_dictionary, TEST_LINES))
    analytic = gaussian_kl(mu, logvar).sum(-1).double().mean().item()
    assert metrics["kl"] == pytest.approx(analytic, abs=1e-4)
    se = mc_kl_standard_error(mu, logvar, k).pow(2).sum().sqrt().item() / len(TEST_LINES)
    assert abs(fitted["kl_mc"] - analytic) <= 4 * se
    # so the -ELBO under the N(0, I) file is the N(0, I) -ELBO (its KL analytic) within that
    # error (the float64 loop of the mixture test checks it exactly)
    assert abs(fitted["neg_elbo"] - metrics["neg_elbo"]) <= 4 * se
    rows = table_rows(stdout)
    assert float(rows["IW-NLL, standard prior"].split()[0]) == pytest.approx(
        fitted["iw_nll"], abs=1e-3
    )
    assert float(rows["KL, standard prior"].split()[0]) == pytest.approx(fitted["kl_mc"], abs=1e-3)
    assert f"prior file | standard prior {files['standard']}" in stdout


def test_eval_with_a_mixture_prior_file_equals_the_float64_loop(setup, tmp_path):
    """One sentence, K = 6 in one chunk: the command's draws are those of a generator seeded
    with --seed (one 1 x K x D draw), replayed here into the loop."""
    task, model, checkpoint, data, files = setup
    results = tmp_path / "results.json"
    stdout = run("fairseq-vae-eval", *eval_args(
        data, checkpoint, "valid", results, "--iw-samples", 6, "--seed", 5,
        "--prior-file", files["gmm"],
    )).stdout  # fmt: skip
    metrics = json.loads(results.read_text())["metrics"]
    eps = torch.randn(1, 6, LATENT, generator=torch.Generator().manual_seed(5))[0]
    d = task.source_dictionary
    log_px, kl, reconstructions = slow_iw_terms(model, d, ONE_LINE[0], eps, mixture_log_density)
    fitted = metrics["prior_file"]
    assert fitted["iw_nll"] == pytest.approx(-log_px, rel=1e-4)
    assert fitted["kl_mc"] == pytest.approx(kl, rel=1e-4)
    tokens = len(ONE_LINE[0].split()) + 1
    assert fitted["iw_ppl_token"] == pytest.approx(math.exp(-log_px / tokens), rel=1e-4)
    # -ELBO under p': the reconstruction from the first of the K draws, and the Monte Carlo KL
    assert fitted["neg_elbo"] == pytest.approx(kl - reconstructions[0], rel=1e-4)
    standard, _, _ = slow_iw_terms(model, d, ONE_LINE[0], eps, standard_log_density)
    assert metrics["iw_nll"] == pytest.approx(-standard, rel=1e-4)
    rows = table_rows(stdout)
    assert rows["IW-NLL, gmm prior"] == f"{-log_px:.3f}  (N(0, I): {-standard:.3f})"


@pytest.mark.parametrize("which", ["small", "other"])
def test_eval_refuses_a_prior_of_another_model(setup, tmp_path, which):
    _, _, checkpoint, data, files = setup
    result = run("fairseq-vae-eval", *eval_args(
        data, checkpoint, "valid", tmp_path / "r.json", "--iw-samples", 2,
        "--prior-file", files[which],
    ), check=False)  # fmt: skip
    assert result.returncode != 0 and not (tmp_path / "r.json").exists()
    if which == "small":
        expected = f"prior {files['small']} has latent size 4 (fitted to "
        expected += f"{os.path.abspath('runs/small/checkpoint.pt')})"
        expected += f" but {checkpoint} has latent size 8"
    else:
        expected = f"prior {files['other']} was fitted to {os.path.abspath('runs/other.pt')}"
    assert expected in result.stderr


# ----------------------------------------------------------------------------------------------
# fairseq-generate --latent-source prior --prior-file, the hub, scripts/sample.py


@pytest.fixture(scope="module")
def hub(setup):
    _, _, checkpoint, data, _ = setup
    return BARTVAEModel.from_pretrained(os.path.dirname(checkpoint), "checkpoint.pt", data)


def hand_draws(path, n, seed):
    """n latents drawn from the prior in ``path`` with a generator seeded here."""
    return load_prior(path).sample(n, generator=torch.Generator().manual_seed(seed))


def generate(data, checkpoint, *extra, check=True):
    result = run("fairseq-generate", data, "--user-dir", USER_DIR, "--task", "text_vae",
                 "--path", checkpoint, "--cpu", "--latent-source", "prior", *extra,
                 check=check)  # fmt: skip
    hyps = {}
    for line in result.stdout.splitlines():
        match = re.match(r"H-(\d+)\t(\S+)\t?(.*)$", line)
        if match:
            hyps[int(match[1])] = match[3]
    return [hyps[i] for i in sorted(hyps)], result


def test_generate_decodes_the_fitted_priors_seeded_draws_whatever_the_batching(setup, hub):
    _, _, checkpoint, data, files = setup
    n = 7
    z = hand_draws(files["gmm"], n, seed=3)
    assert (z.mean(-1) > 2).any() and (z.mean(-1) < 2).any()  # both components drawn
    expected = hub.decode(z)
    assert len(set(expected)) > 2, expected  # this model's sentences depend on z
    args = ["--prior-samples", n, "--prior-file", files["gmm"], "--seed", 3, "--beam", 1]
    in_batches, _ = generate(data, checkpoint, *args, "--batch-size", 3)  # 3 + 3 + 1
    assert in_batches == expected
    in_one, _ = generate(data, checkpoint, *args, "--batch-size", 10)
    assert in_one == expected
    # not the N(0, I) samples of the same seed
    standard, _ = generate(data, checkpoint, "--prior-samples", n, "--seed", 3, "--beam", 1)
    assert len(standard) == n and standard != expected
    # the hub's sample() draws the same z from the same seed
    assert hub.sample(n, seed=3, prior=files["gmm"]) == expected
    assert hub.sample(n, seed=3, prior=load_prior(files["gmm"])) == expected
    assert hub.sample(n, seed=4, prior=files["gmm"]) == hub.decode(hand_draws(files["gmm"], n, 4))


def test_generate_refuses_a_prior_of_another_latent_size_or_without_the_prior_source(setup):
    _, _, checkpoint, data, files = setup
    _, result = generate(data, checkpoint, "--prior-samples", 3, "--prior-file", files["small"],
                         check=False)  # fmt: skip
    assert result.returncode != 0
    assert f"prior {files['small']} has latent size 4" in result.stderr
    assert "has latent size 8" in result.stderr
    result = run("fairseq-generate", data, "--user-dir", USER_DIR, "--task", "text_vae",
                 "--path", checkpoint, "--prior-file", files["gmm"], check=False)  # fmt: skip
    assert result.returncode != 0
    assert "generate with --latent-source prior (not posterior-mean)" in result.stderr


def test_interactive_gives_each_input_line_the_next_draw(setup, hub):
    _, _, checkpoint, data, files = setup
    result = run_interactive(data, checkpoint, files["gmm"], "a cat\nthe dog\nred\n")
    hyps = [line.split("\t")[2] for line in result.stdout.splitlines() if line.startswith("H-")]
    # one line per chunk (--buffer-size 1): one draw after the other from the seeded generator
    prior, g = load_prior(files["gmm"]), torch.Generator().manual_seed(2)
    z = torch.cat([prior.sample(1, generator=g) for _ in range(3)])
    assert hyps == hub.decode(z)


def run_interactive(data, checkpoint, prior_file, text):
    env = dict(os.environ, OMP_NUM_THREADS="1")
    command = [os.path.join(BIN, "fairseq-interactive"), data, "--user-dir", USER_DIR,
               "--task", "text_vae", "--path", checkpoint, "--cpu", "--latent-source", "prior",
               "--prior-file", prior_file, "--seed", "2", "--beam", "1"]  # fmt: skip
    result = subprocess.run(command, input=text, capture_output=True, text=True, env=env,
                            timeout=600)  # fmt: skip
    assert result.returncode == 0, result.stderr
    return result


def test_hub_sample_refuses_a_prior_of_another_model(setup, hub):
    _, _, _, _, files = setup
    with pytest.raises(ValueError, match="has latent size 4 .* has latent size 8"):
        hub.sample(2, prior=files["small"])
    with pytest.raises(ValueError, match="has latent size 4 but this model has latent size 8"):
        hub.sample(2, prior=load_prior(files["small"]))
    with pytest.raises(ValueError, match="was fitted to .*runs/other.pt"):
        hub.sample(2, prior=load_prior(files["other"]))
    # a prior made in Python names no model: its size alone is checked
    assert len(hub.sample(2, seed=1, prior=StandardNormalPrior(LATENT))) == 2


def test_hub_samples_no_sentences_from_a_fitted_prior(setup, hub):
    _, _, _, _, files = setup
    assert hub.sample(0, seed=1, prior=files["gmm"]) == []
    assert hub.sample(0, seed=1) == []


def test_sample_script_draws_from_the_prior_file(setup, hub):
    _, _, checkpoint, data, files = setup
    script = [sys.executable, os.path.join(ROOT, "scripts", "sample.py"), "--checkpoint-dir",
              os.path.dirname(checkpoint), "--checkpoint-file", "checkpoint.pt", "--data", data,
              "--cpu", "-n", "5", "--seed", "6"]  # fmt: skip
    env = dict(os.environ, OMP_NUM_THREADS="1")
    out = subprocess.run(script + ["--prior-file", files["gmm"]], capture_output=True,
                         text=True, env=env, timeout=600)  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines() == hub.decode(hand_draws(files["gmm"], 5, 6))
    refused = subprocess.run(script + ["--prior-file", files["small"]], capture_output=True,
                             text=True, env=env, timeout=600)  # fmt: skip
    assert refused.returncode == 1 and "Traceback" not in refused.stderr
    assert "--prior-file: prior" in refused.stderr and "has latent size 4" in refused.stderr


# ----------------------------------------------------------------------------------------------
# fairseq-vae-eval --prior-samples: what is decoded, and its measures against independent counts

TRAIN_LINES = random_sentences(60, seed=82, min_len=2, max_len=8)
# four test sentences copied from train, five new ones: memorised share 4/9 for real sentences
SAMPLE_TEST_LINES = TRAIN_LINES[:4] + random_sentences(5, seed=83, min_len=2, max_len=8)


@pytest.fixture(scope="module")
def sample_eval(setup, dict_dir, tmp_path_factory):
    """fairseq-vae-eval --prior-samples 10 --prior-file (the mixture) --lm-path on a data folder
    with a train split, and the tiny LM it was given: (report, data, lm checkpoint)."""
    from test_sample_quality import LM_ARCH

    _, _, checkpoint, _, files = setup
    root = tmp_path_factory.mktemp("prior-samples")
    splits = {"train": TRAIN_LINES, "valid": ONE_LINE, "test": SAMPLE_TEST_LINES}
    data = make_data_bin(str(root / "bin"), dict_dir, splits)
    run("fairseq-train", data, "--user-dir", USER_DIR, "--task", "language_modeling",
        "--criterion", "cross_entropy", "--sample-break-mode", "eos", "--tokens-per-sample",
        "64", *LM_ARCH, "--optimizer", "adam", "--lr", "1e-2", "--max-tokens", "256",
        "--max-update", "15", "--save-dir",
        root / "lm", "--no-epoch-checkpoints", "--disable-validation", "--cpu",
        "--num-workers", "0", "--data-buffer-size", "0")  # fmt: skip
    lm = str(root / "lm" / "checkpoint_last.pt")
    out = root / "report.json"
    result = run("fairseq-vae-eval", data, "--user-dir", USER_DIR, "--path", checkpoint,
                 "--gen-subset", "test", "--iw-samples", 2, "--cpu", "--no-bleu", "--seed", 3,
                 "--prior-samples", 10, "--prior-file", files["gmm"], "--lm-path", lm,
                 "--results-json", out)  # fmt: skip
    assert "prior samples | 10 per prior and decoding" in result.stdout
    return json.load(open(out)), data, lm


def test_prior_samples_are_the_seeded_draws_fairseq_generate_decodes(setup, sample_eval):
    _, _, checkpoint, _, files = setup
    report, data, _ = sample_eval
    rows = {(r["prior"], r["decoding"]): r for r in report["prior_samples"]["rows"]}
    expected = {(p, d) for p in ("standard", "gmm") for d in ("ancestral", "greedy")}
    assert set(rows) == expected | {("lm", "ancestral")}  # and the LM's own samples
    for kind in ("gmm", "standard"):
        # fairseq-generate draws row i of prior.sample(N, Generator().manual_seed(--seed))
        expected, _ = generate(data, checkpoint, "--prior-samples", 10, "--prior-file",
                               files[kind], "--seed", 3, "--beam", 1)  # fmt: skip
        assert rows[(kind, "greedy")]["samples"] == expected
    assert rows[("gmm", "greedy")]["samples"] != rows[("standard", "greedy")]["samples"]
    # ancestral sampling draws words: not the greedy sentences, and still 10 of them
    ancestral = rows[("gmm", "ancestral")]["samples"]
    assert len(ancestral) == 10 and ancestral != rows[("gmm", "greedy")]["samples"]


def test_prior_sample_measures_against_counts_made_here(sample_eval):
    report, _, _ = sample_eval
    section = report["prior_samples"]
    train = {" ".join(s.split()) for s in TRAIN_LINES}
    for row in section["rows"]:
        samples = row["samples"]
        bigrams = [tuple(s.split()[i : i + 2]) for s in samples for i in range(len(s.split()) - 1)]
        assert row["distinct_2"] == pytest.approx(len(set(bigrams)) / len(bigrams))
        assert row["memorised"] == pytest.approx(sum(s in train for s in samples) / 10)
        assert row["grammatical"] is None and row["factor_tv"] is None
    # the real sentences: all 9 of the split (fewer than 10), four of them copies of train
    real = section["real"]
    assert real["n"] == 9 and real["memorised"] == pytest.approx(4 / 9)
    words = [s.split() for s in SAMPLE_TEST_LINES]
    unigrams = [w for s in words for w in s]
    assert real["distinct_1"] == pytest.approx(len(set(unigrams)) / len(unigrams))


def test_real_sentences_lm_ppl_is_fairseq_eval_lms(sample_eval):
    report, data, lm = sample_eval
    # word-level data: a token is a word or </s>, so fairseq-eval-lm's PPL is the per-word one
    result = run("fairseq-eval-lm", data, "--user-dir", USER_DIR, "--path", lm, "--cpu",
                 "--gen-subset", "test", "--sample-break-mode", "eos", "--max-tokens", 512,
                 "--num-workers", 0)  # fmt: skip
    loss = float(re.search(r"Loss \(base 2\): ([\d.]+)", result.stdout + result.stderr)[1])
    assert report["prior_samples"]["real"]["lm_ppl"] == pytest.approx(2**loss, rel=1e-3)
    # each row's ratio against the LM run here token by token on its samples, over eval-lm's
    from test_sample_quality import loop_log_prob

    from fairseq_vae.metrics.sample_quality import load_lm

    model, dictionary = load_lm(lm, data=data)
    for row in report["prior_samples"]["rows"]:
        texts = row["samples"]
        rows = [dictionary.encode_line(t, add_if_not_exist=False).long() for t in texts]
        log_p = sum(loop_log_prob(model, r, dictionary.eos()) for r in rows)
        ppl = math.exp(-log_p / sum(len(t.split()) + 1 for t in texts))
        assert row["lm_ppl_ratio"] == pytest.approx(ppl / 2**loss, rel=1e-3), row["prior"]


def test_prior_samples_on_the_shipped_corpus_read_by_its_grammar(tmp_path):
    from conftest import train_args

    from fairseq_vae.synth import grammar as synth_grammar

    data = os.path.join(ROOT, "data-bin", "synth")
    run("fairseq-train", *train_args(data, tmp_path, "--max-update", 3))
    out = tmp_path / "report.json"
    run("fairseq-vae-eval", data, "--user-dir", USER_DIR, "--path",
        tmp_path / "checkpoint_last.pt", "--gen-subset", "valid", "--iw-samples", 1, "--cpu",
        "--no-bleu", "--prior-samples", 40, "--sample-grammar", "synth",
        "--results-json", out)  # fmt: skip
    section = json.load(open(out))["prior_samples"]
    # real sentences of the corpus are all grammatical, and 40 of them are near train's factors
    real = section["real"]
    assert real["grammatical"] == 1.0 and real["lm_ppl"] is None
    assert set(real["factor_tv"]) == {"topic", "sentiment", "tense", "number"}
    assert all(0 <= tv < 0.3 for tv in real["factor_tv"].values()), real["factor_tv"]
    # three updates make no sentence of the grammar: the share is the recogniser's verdict
    for row in section["rows"]:
        share = sum(synth_grammar.recognise(s) is not None for s in row["samples"]) / 40
        assert row["grammatical"] == pytest.approx(share) and share < 0.5


def test_lm_reference_samples_follow_the_lms_own_next_word_distribution(sample_eval):
    from fairseq.dataclass.configs import GenerationConfig

    from fairseq_vae.metrics.prior_samples import decode_lm
    from fairseq_vae.metrics.sample_quality import load_lm

    report, data, lm_path = sample_eval
    rows = {(r["prior"], r["decoding"]): r for r in report["prior_samples"]["rows"]}
    assert len(rows[("lm", "ancestral")]["samples"]) == 10
    lm, dictionary = load_lm(lm_path, data=data)
    n = 4000
    drawn = decode_lm(lm, GenerationConfig(), n, seed=5)
    assert all(int(r[-1]) == dictionary.eos() and len(r) >= 2 for r in drawn)
    # p(first word | </s>) from one forward pass of the LM, not through the generator
    with torch.no_grad():
        first = torch.tensor([[dictionary.eos()]])
        p = lm.get_normalized_probs(lm(first), log_probs=False)[0, 0].double()
    # fairseq's search never emits <pad>, nor </s> before min_len (1): the first word is drawn
    # from p given a non-empty sentence
    p[[dictionary.pad(), dictionary.eos()]] = 0
    p = p / p.sum()
    freq = torch.bincount(torch.tensor([int(r[0]) for r in drawn]), minlength=len(p)).double() / n
    # the total variation sampling at temperature 1 leaves, E|f - p| ~ sqrt(2 p (1 - p) / (pi n))
    expected_tv = 0.5 * torch.sqrt(2 * p * (1 - p) / (math.pi * n)).sum()
    assert 0.5 * (freq - p).abs().sum() < 2 * expected_tv
    # the mean log p(first word) of the draws is minus the entropy (another temperature, a
    # top-k or greedy decoding would move it), within four standard errors
    logp = p.clamp_min(1e-300).log()
    drawn_logp = logp[[int(r[0]) for r in drawn]]
    entropy = -(p * logp).sum()
    assert abs(drawn_logp.mean() + entropy) < 4 * drawn_logp.std() / math.sqrt(n)
