"""The evaluation suite: batched estimators against plain loops, estimator properties on a
trained tiny model, and fairseq-vae-eval end to end."""

import json
import math
import os
import re
import subprocess

import pytest
import torch
from conftest import BIN, ROOT, USER_DIR, build_tiny, encode_lines, random_sentences
from sacrebleu.metrics import BLEU
from vae_fixtures import make_data_bin, save_checkpoint, shift_right, train_tiny

from fairseq_vae.cli import evaluate
from fairseq_vae.criterions.elbo import gaussian_kl
from fairseq_vae.metrics import estimators
from fairseq_vae.metrics.estimators import (
    active_units,
    gaussian_log_density,
    iw_log_likelihood,
    mutual_information,
    probe_factors,
    standard_normal_log_density,
)
from fairseq_vae.text.subword import corpus_bpe_options

# the machine's two cores are shared: one thread each (conftest.one_thread)
pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def trained(dict_dir):
    """A tiny model whose decoder relies on z: beta 0 and every decoder input dropped in
    training, so its posterior is informative (KL ~ 10 nats, all units active)."""
    task, model, args = train_tiny(dict_dir, 100, 0.0, 0, "--word-dropout", "1.0")
    return task, model, args


def batch_of(task, lines):
    d = task.source_dictionary
    src, lengths = encode_lines(d, lines)
    return src, lengths, shift_right(src, lengths, d)


# ----------------------------------------------------------------------------------------------
# The slow, obviously correct versions: one sentence, one sample, one number at a time


def slow_iw_log_likelihood(model, dictionary, line, eps):
    """log p(x) of one sentence from the K draws eps (K x D), with plain Python loops."""
    tokens = dictionary.encode_line(line, add_if_not_exist=False).long()
    mu_t, logvar_t = model.encoder.posterior(tokens[None], torch.tensor([len(tokens)]))
    mu, logvar = mu_t[0].tolist(), logvar_t[0].tolist()
    prev = torch.cat([tokens.new_tensor([dictionary.eos()]), tokens[:-1]])[None]
    log_ws = []
    for k in range(eps.size(0)):
        z = [mu[d] + math.exp(0.5 * logvar[d]) * eps[k, d].item() for d in range(len(mu))]
        encoder_out = model.encoder.latent_encoder_out(mu_t, logvar_t, torch.tensor([z]))
        logits, _ = model.decoder(prev, encoder_out=encoder_out)
        log_px_z = 0.0
        for t in range(len(tokens)):
            log_px_z += torch.log_softmax(logits[0, t].double(), dim=-1)[tokens[t]].item()
        log_pz = sum(-0.5 * zd * zd - 0.5 * math.log(2 * math.pi) for zd in z)
        log_qz = sum(
            -0.5 * (z[d] - mu[d]) ** 2 / math.exp(logvar[d])
            - 0.5 * logvar[d]
            - 0.5 * math.log(2 * math.pi)
            for d in range(len(z))
        )
        log_ws.append(log_px_z + log_pz - log_qz)
    top = max(log_ws)
    return top + math.log(sum(math.exp(w - top) for w in log_ws)) - math.log(len(log_ws))


def slow_log_normal(z, mu, logvar):
    return sum(
        -0.5 * (z[d] - mu[d]) ** 2 / math.exp(logvar[d])
        - 0.5 * logvar[d]
        - 0.5 * math.log(2 * math.pi)
        for d in range(len(z))
    )


def slow_mutual_information(mu, logvar, z):
    n, dim = len(mu), len(mu[0])
    neg_entropy = (
        sum(
            -0.5 * dim * math.log(2 * math.pi) - 0.5 * sum(1 + lv for lv in logvar[i])
            for i in range(n)
        )
        / n
    )
    log_qz = 0.0
    for i in range(n):
        dens = [slow_log_normal(z[i], mu[j], logvar[j]) for j in range(n)]
        top = max(dens)
        log_qz += top + math.log(sum(math.exp(v - top) for v in dens)) - math.log(n)
    return neg_entropy - log_qz / n


def slow_variances(mu):
    """Each dimension's sample variance (n - 1 in the denominator) over the rows of mu."""
    n, dim = len(mu), len(mu[0])
    means = [sum(mu[i][d] for i in range(n)) / n for d in range(dim)]
    return [sum((mu[i][d] - means[d]) ** 2 for i in range(n)) / (n - 1) for d in range(dim)]


def slow_active_units(mu, threshold):
    return sum(1 for variance in slow_variances(mu) if variance >= threshold)


# ----------------------------------------------------------------------------------------------
# Batched == loops


def test_log_densities_match_torch_distributions():
    z, mu, logvar = torch.randn(5, 3, 4), torch.randn(5, 1, 4), torch.randn(5, 1, 4)
    expected = torch.distributions.Normal(mu, torch.exp(0.5 * logvar)).log_prob(z).sum(-1)
    torch.testing.assert_close(gaussian_log_density(z, mu, logvar), expected)
    expected = torch.distributions.Normal(0.0, 1.0).log_prob(z).sum(-1)
    torch.testing.assert_close(standard_normal_log_density(z), expected)


@torch.no_grad()
def test_batched_iw_nll_equals_per_sentence_per_sample_loops(trained, monkeypatch):
    task, model, _ = trained
    lines = random_sentences(5, seed=21, min_len=2, max_len=9)  # varied lengths: padding
    src, lengths, prev = batch_of(task, lines)
    mu, logvar = model.encoder.posterior(src, lengths)
    torch.manual_seed(1)
    eps = torch.randn(len(lines), 7, mu.size(1))
    # chunks of 3 of 7 samples: the last chunk is short
    log_px, z1, log_px_z1 = iw_log_likelihood(model, mu, logvar, prev, src, 7, 3, eps=eps)
    for b, line in enumerate(lines):
        expected = slow_iw_log_likelihood(model, task.source_dictionary, line, eps[b])
        assert log_px[b].item() == pytest.approx(expected, rel=1e-4)
        # the sample handed on to the -ELBO and the MI is the first draw
        torch.testing.assert_close(z1[b], mu[b] + torch.exp(0.5 * logvar[b]) * eps[b, 0])
    # ...and the chunk size changes nothing
    for chunk in (1, 7, 100):
        again, again_z1, _ = iw_log_likelihood(model, mu, logvar, prev, src, 7, chunk, eps=eps)
        torch.testing.assert_close(again, log_px, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(again_z1, z1)
    # ...nor does the number of positions projected at a time (5 does not divide the total)
    for block in (1, 5):
        monkeypatch.setattr(estimators, "LOGIT_BLOCK_ROWS", block)
        again, _, _ = iw_log_likelihood(model, mu, logvar, prev, src, 7, 3, eps=eps)
        torch.testing.assert_close(again, log_px, rtol=1e-5, atol=1e-5)


def test_mutual_information_equals_loops(monkeypatch):
    torch.manual_seed(2)
    mu, logvar = torch.randn(23, 4) * 2, torch.randn(23, 4) - 1
    z = mu + torch.exp(0.5 * logvar) * torch.randn(23, 4)
    expected = slow_mutual_information(mu.tolist(), logvar.tolist(), z.tolist())
    assert mutual_information(mu, logvar, z) == pytest.approx(expected, rel=1e-4)
    # scoring the pool in blocks of a few rows gives the same number
    monkeypatch.setattr(estimators, "MI_BLOCK_FLOATS", 5 * 23 * 4)
    assert mutual_information(mu, logvar, z) == pytest.approx(expected, rel=1e-4)


@pytest.mark.parametrize("clusters", [2, 4])
def test_mutual_information_of_separated_clusters_is_log_of_their_number(clusters):
    # x picks one of C equally likely, far apart posteriors: z tells x's cluster and nothing
    # more, so I(x; z) = H(cluster) = log C
    torch.manual_seed(4)
    n, dim = 2000, 2
    centres = torch.randn(clusters, dim) * 30.0
    mu = centres[torch.arange(n) % clusters]
    logvar = torch.zeros(n, dim)
    z = mu + torch.randn(n, dim)
    # the estimate's noise is that of a mean of n values of log q(z|x), sd sqrt(dim / 2 / n)
    assert mutual_information(mu, logvar, z) == pytest.approx(math.log(clusters), abs=0.1)


def test_active_units_equals_loops():
    torch.manual_seed(3)
    mu = torch.randn(40, 6) * torch.tensor([0.01, 0.05, 0.09, 0.11, 0.5, 2.0])
    count, variances = active_units(mu, 0.01)
    assert count == slow_active_units(mu.tolist(), 0.01)
    torch.testing.assert_close(variances, torch.tensor(slow_variances(mu.tolist())))


# ----------------------------------------------------------------------------------------------
# Properties on a trained model


@torch.no_grad()
def test_iw_nll_is_at_most_the_negative_elbo(trained):
    task, model, _ = trained
    src, lengths, prev = batch_of(task, random_sentences(12, seed=31))
    mu, logvar = model.encoder.posterior(src, lengths)
    kl = gaussian_kl(mu, logvar).sum(-1)
    assert kl.mean() > 1.0, "the fixture's latent should be in use"
    gen = torch.Generator().manual_seed(4)
    log_px, _, _ = iw_log_likelihood(model, mu, logvar, prev, src, 200, 50, generator=gen)
    # -ELBO with its reconstruction averaged over 50 samples (so little noise is left)
    recs = torch.stack(
        [iw_log_likelihood(model, mu, logvar, prev, src, 1, 1, generator=gen)[2] for _ in range(50)]
    )
    neg_elbo = kl - recs.mean(0)
    stderr = (recs.std(0) / math.sqrt(50)).max().item()
    assert (-log_px <= neg_elbo + 4 * stderr + 1e-4).all(), (-log_px, neg_elbo)
    assert (-log_px).mean() < neg_elbo.mean() - 0.5  # and the bound is clearly tighter here


@torch.no_grad()
def test_iw_nll_with_one_sample_is_a_one_sample_elbo_in_expectation(trained):
    task, model, _ = trained
    src, lengths, prev = batch_of(task, random_sentences(8, seed=41))
    mu, logvar = model.encoder.posterior(src, lengths)
    kl = gaussian_kl(mu, logvar).sum(-1)
    gen = torch.Generator().manual_seed(5)
    iw1, elbo1 = [], []
    for _ in range(150):
        iw1.append(-iw_log_likelihood(model, mu, logvar, prev, src, 1, 1, generator=gen)[0])
        # an independent draw: the one-sample -ELBO with the analytic KL
        log_px_z = iw_log_likelihood(model, mu, logvar, prev, src, 1, 1, generator=gen)[2]
        elbo1.append(kl - log_px_z)
    iw1, elbo1 = torch.stack(iw1).mean(1), torch.stack(elbo1).mean(1)  # per repeat
    diff = iw1 - elbo1
    stderr = diff.std() / math.sqrt(len(diff))
    assert abs(diff.mean().item()) < 4 * stderr.item() + 1e-3, (diff.mean(), stderr)


@torch.no_grad()
def test_mi_is_between_zero_and_log_pool_size(trained):
    task, model, _ = trained
    src, lengths, _ = batch_of(task, random_sentences(60, seed=51))
    mu, logvar = model.encoder.posterior(src, lengths)
    z = mu + torch.exp(0.5 * logvar) * torch.randn_like(mu)
    mi = mutual_information(mu, logvar, z)
    assert 0.1 < mi <= math.log(60) + 0.1


@torch.no_grad()
def test_a_collapsed_posterior_has_no_kl_mi_or_active_units(trained):
    task, model, args = trained
    collapsed = type(model).build_model(args, task)
    collapsed.load_state_dict(model.state_dict())
    collapsed.eval()
    for head in (collapsed.encoder.mlp_mu, collapsed.encoder.mlp_logvar):
        head[2].weight.zero_()
        head[2].bias.zero_()  # mu = 0, logvar = 0: q(z|x) is the prior for every x
    src, lengths, _ = batch_of(task, random_sentences(400, seed=61))
    mu, logvar = collapsed.encoder.posterior(src, lengths)
    assert gaussian_kl(mu, logvar).sum(-1).abs().max() == 0
    torch.manual_seed(6)
    z = mu + torch.exp(0.5 * logvar) * torch.randn_like(mu)
    # here the estimate is 0.5 * (mean |z|^2 - D): zero up to sampling noise (sd 0.1)
    assert abs(mutual_information(mu, logvar, z)) < 0.4
    assert active_units(mu)[0] == 0


@torch.no_grad()
def test_widely_varying_means_make_every_unit_active(trained):
    task, model, args = trained
    wide = type(model).build_model(args, task)
    wide.load_state_dict(model.state_dict())
    wide.eval()
    wide.encoder.mlp_mu[2].weight.mul_(100.0)
    src, lengths, _ = batch_of(task, random_sentences(50, seed=71))
    mu, _ = wide.encoder.posterior(src, lengths)
    count, variances = active_units(mu, 0.01)
    assert count == wide.encoder.latent_dim == 8, variances


def test_probe_reads_a_factor_that_the_features_hold():
    torch.manual_seed(7)
    features = torch.randn(200, 3)
    labels = {
        "sign": ["pos" if v > 0 else "neg" for v in features[:, 0].tolist()],
        "noise": [["a", "b", "b"][i % 3] for i in torch.randperm(200).tolist()],
    }
    results = probe_factors(features.numpy(), labels)
    assert results["sign"]["accuracy"] > 0.9 > results["sign"]["majority_baseline"]
    assert results["noise"]["accuracy"] < 0.8
    assert results["noise"]["train"] == results["noise"]["test"] == 100


def test_detokenised_synth_source_is_the_raw_corpus_text():
    """The word unit: sentencepiece decoding of the binarised split gives the raw sentence."""
    from fairseq.data import Dictionary, data_utils

    data = os.path.join(ROOT, "data-bin", "synth")
    dictionary = Dictionary.load(os.path.join(data, "dict.txt"))
    sentences = data_utils.load_indexed_dataset(os.path.join(data, "test"), dictionary)
    detok = evaluate.Detokenizer(dictionary, corpus_bpe_options(data))
    with open(os.path.join(ROOT, "corpus", "synth", "test.txt"), encoding="utf-8") as f:
        raw = [next(f).rstrip("\n") for _ in range(20)]
    assert [detok(sentences[i]) for i in range(20)] == raw


# ----------------------------------------------------------------------------------------------
# The command


# the table's rows and the JSON metrics they print
TABLE_KEYS = {
    "IW-NLL": "iw_nll",
    "IW PPL / token": "iw_ppl_token",
    "IW PPL / word": "iw_ppl_word",
    "-ELBO": "neg_elbo",
    "reconstruction NLL": "rec_nll",
    "KL": "kl",
    "ELBO PPL / token": "elbo_ppl_token",
    "ELBO PPL / word": "elbo_ppl_word",
    "MI": "mi",
}


def table_rows(stdout):
    """{metric name: the value column} of fairseq-vae-eval's table."""
    body = stdout[stdout.index("\nmetric") + 1 :].splitlines()[1:]
    return dict(re.match(r"\s*(\S.*?)\s{2,}(\S.*)$", line).groups() for line in body)


@torch.no_grad()
def greedy_reconstruction(model, dictionary, line, max_len=200):
    """Greedy decoding from the posterior mean, one token at a time over the whole prefix, with
    SequenceGenerator's rules for a beam of one: never pad, no </s> as the first token."""
    tokens = dictionary.encode_line(line, add_if_not_exist=False).long()
    mu, logvar = model.encoder.posterior(tokens[None], torch.tensor([len(tokens)]))
    encoder_out = model.encoder.latent_encoder_out(mu, logvar, mu)
    out = [dictionary.eos()]
    for step in range(max_len):
        logits, _ = model.decoder(torch.tensor([out]), encoder_out=encoder_out)
        scores = logits[0, -1].float()
        scores[dictionary.pad()] = -math.inf
        if step == 0:
            scores[dictionary.eos()] = -math.inf
        best = int(scores.argmax())
        if best == dictionary.eos():
            break
        out.append(best)
    return dictionary.string(torch.tensor(out[1:]))


def run(tool, *args):
    env = dict(os.environ, OMP_NUM_THREADS="1")
    result = subprocess.run(
        [os.path.join(BIN, tool), *args], capture_output=True, text=True, env=env, timeout=600
    )
    assert result.returncode == 0, f"{tool} failed:\n{result.stdout}\n{result.stderr}"
    return result.stdout, result.stderr


def test_fairseq_vae_eval_reports_every_metric_on_every_sentence(trained, dict_dir, tmp_path):
    task, model, args = trained
    lines = random_sentences(37, seed=81)
    # an empty line: the task skips it, and the labels must still line up by line number
    lines = lines[:5] + [""] + lines[5:]
    data = make_data_bin(str(tmp_path / "bin"), dict_dir, {"test": lines})
    checkpoint = str(tmp_path / "checkpoint.pt")
    save_checkpoint(checkpoint, model, args)
    labels = tmp_path / "labels.tsv"
    labels.write_text(
        "first\tlong\n"
        + "".join(f"{(s.split() or ['-'])[0]}\t{len(s.split()) > 5}\n" for s in lines)
    )
    results = tmp_path / "results.json"
    # 37 sentences at 5 per batch: fairseq's default multiple of 8 would drop some
    stdout, _ = run(
        "fairseq-vae-eval",
        data,
        "--user-dir",
        USER_DIR,
        "--path",
        checkpoint,
        "--gen-subset",
        "test",
        "--iw-samples",
        "12",
        "--iw-chunk",
        "5",
        "--batch-size",
        "5",
        "--labels",
        str(labels),
        "--results-json",
        str(results),
        "--cpu",
    )
    report = json.loads(results.read_text())
    settings, metrics = report["settings"], report["metrics"]
    assert settings["sentences"] == 37 and settings["skipped"] == 1
    assert settings["iw_samples"] == 12
    # a word-level corpus: tokens are words (the perplexities' known answer on subwords is below)
    assert settings["tokens"] == settings["words"] == sum(len(s.split()) + 1 for s in lines if s)
    assert report["examples"][0]["input"] == lines[0]
    assert metrics["iw_nll"] < metrics["neg_elbo"]
    assert metrics["au"] == 8

    # the table prints the JSON's numbers under their names
    rows = table_rows(stdout)
    for name, key in TABLE_KEYS.items():
        assert float(rows[name].split()[0]) == pytest.approx(metrics[key], abs=1e-3), name
    assert rows["MI"].endswith(f"(at most log pool = {math.log(37):.3f})")
    assert rows["AU"] == "8 / 8"
    assert float(rows["reconstruction BLEU"].split()[0]) == pytest.approx(
        metrics["recon_bleu"], abs=0.005
    )
    assert rows["exact reconstructions"] == f"{100 * metrics['recon_exact']:.1f}%"
    assert "K=12 (chunks of 5) | MI pool=dataset (37.0 sentences) | AU threshold=0.01" in stdout

    kept = [s for s in lines if s]
    # the probes: one per factor, on every sentence, and the table prints what the JSON holds
    assert set(report["factors"]) == {"first", "long"}
    for name, factor in report["factors"].items():
        values = [
            (s.split() or ["-"])[0] if name == "first" else str(len(s.split()) > 5) for s in kept
        ]
        assert factor["classes"] == len(set(values))
        assert factor["train"] + factor["test"] == 37 and factor["train"] == 18
        accuracy, rest = rows[f"probe accuracy: {name}"].split(maxsplit=1)
        assert float(accuracy) == pytest.approx(factor["accuracy"], abs=5e-4)
        assert f"majority {factor['majority_baseline']:.3f}, {factor['classes']} classes" in rest
        # the baseline is the share of the scored half's most common class: a count out of 19
        assert factor["majority_baseline"] * 19 == pytest.approx(
            round(factor["majority_baseline"] * 19)
        )
    # "long" has two classes of several sentences each: stratified, the scored 19 hold each
    # class in its share of the 37 (up to rounding), so the majority share is known
    long_counts = [sum((len(s.split()) > 5) == v for s in kept) for v in (True, False)]
    assert min(long_counts) >= 2 and report["factors"]["long"]["split"] == "stratified"
    assert report["factors"]["long"]["majority_baseline"] * 19 == pytest.approx(
        max(long_counts) * 19 / 37, abs=1.0
    )

    # the KL is analytic: fairseq-validate's number is the same
    stdout, _ = run(
        "fairseq-validate",
        data,
        "--user-dir",
        USER_DIR,
        "--task",
        "text_vae",
        "--path",
        checkpoint,
        "--valid-subset",
        "test",
        "--batch-size",
        "5",
        "--required-batch-size-multiple",
        "1",
        "--cpu",
    )
    line = [line for line in stdout.splitlines() if "valid on" in line][-1]
    kl = float(line.split("| kl ")[1].split()[0])
    assert metrics["kl"] == pytest.approx(kl, abs=2e-3)

    # the batch pool of the MI, without the greedy decoding
    stdout, _ = run(
        "fairseq-vae-eval",
        data,
        "--path",
        checkpoint,
        "--gen-subset",
        "test",
        "--iw-samples",
        "2",
        "--mi-pool",
        "batch",
        "--batch-size",
        "10",
        "--no-bleu",
        "--results-json",
        str(results),
        "--cpu",
    )
    report = json.loads(results.read_text())
    metrics = report["metrics"]
    # 37 sentences in batches of at most 10: four batches, 9.25 sentences on average
    assert report["settings"]["mi_pool"] == "batch"
    assert report["settings"]["mi_pool_mean_size"] == pytest.approx(37 / 4)
    assert metrics["mi_upper_bound"] == pytest.approx(math.log(37 / 4))
    assert "recon_bleu" not in metrics and "examples" not in report and "BLEU" not in stdout
    rows = table_rows(stdout)
    assert float(rows["MI"].split()[0]) == pytest.approx(metrics["mi"], abs=5e-4)
    assert metrics["mi"] <= math.log(10) + 0.2


def test_reconstruction_bleu_and_exact_matches_are_those_of_a_greedy_decode_done_here(
    dict_dir, tmp_path
):
    """A model that has memorised 8 sentences (and reconstructs others as one of them): BLEU and
    the share of exact reconstructions recomputed from a greedy decoding written here."""
    task, model, args = build_tiny(dict_dir)
    d = task.source_dictionary
    known = random_sentences(8, seed=5, min_len=3, max_len=6)
    src, lengths = encode_lines(d, known)
    prev = shift_right(src, lengths, d)
    torch.manual_seed(0)
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    model.train()
    for _ in range(400):
        logits, extra = model(src, lengths, prev)
        lprobs = torch.log_softmax(logits.float(), dim=-1)
        nll = -lprobs.gather(-1, src.unsqueeze(-1)).squeeze(-1).masked_fill(src.eq(d.pad()), 0)
        loss = (nll.sum() + 0.1 * gaussian_kl(extra["mu"], extra["logvar"]).sum()) / len(known)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    model.eval()
    lines = known + random_sentences(4, seed=99, min_len=3, max_len=6)
    hyps = [greedy_reconstruction(model, d, s) for s in lines]
    exact = sum(h == r for h, r in zip(hyps, lines))
    # a check with teeth: some reconstructions exact, some not, and not all the same sentence
    assert 0 < exact < len(lines) and len(set(hyps)) > 3, hyps
    data = make_data_bin(str(tmp_path / "bin"), dict_dir, {"test": lines})
    checkpoint = str(tmp_path / "checkpoint.pt")
    save_checkpoint(checkpoint, model, args)
    results = tmp_path / "results.json"
    stdout, _ = run(
        "fairseq-vae-eval",
        data,
        "--path",
        checkpoint,
        "--gen-subset",
        "test",
        "--iw-samples",
        "2",
        "--batch-size",
        "5",
        "--results-json",
        str(results),
        "--cpu",
    )
    report = json.loads(results.read_text())
    metrics = report["metrics"]
    expected = BLEU(force=True).corpus_score(hyps, [lines])
    assert metrics["recon_bleu"] == pytest.approx(expected.score, abs=1e-6)
    assert metrics["recon_exact"] == exact / len(lines)
    assert report["examples"] == [{"input": r, "greedy": h} for r, h in zip(lines, hyps)][:3]
    rows = table_rows(stdout)
    assert rows["reconstruction BLEU"].startswith(f"{expected.score:.2f}  (greedy")
    assert rows["exact reconstructions"] == f"{100 * exact / len(lines):.1f}%"


def test_fairseq_vae_eval_perplexities_have_a_known_answer_on_a_subword_corpus(tmp_path):
    """With q(z|x) = p(z) and a decoder that ignores z, every importance weight is p(x|z), the
    same for every z: the IW-NLL is the decoder's NLL for any K, and the perplexities per token
    and per word follow from it and from counts made here."""
    from fairseq.data import Dictionary

    raw = random_sentences(12, seed=91)
    # subword-nmt style units: words of more than 3 letters are split after their 2nd
    lines = [" ".join(f"{w[:2]}@@ {w[2:]}" if len(w) > 3 else w for w in s.split()) for s in raw]
    dictionary = Dictionary()
    for line in lines:
        dictionary.encode_line(line, add_if_not_exist=True)
    dictionary.save(str(tmp_path / "dict.txt"))
    data = make_data_bin(str(tmp_path / "bin"), str(tmp_path), {"test": lines})
    task, model, args = build_tiny(data)
    with torch.no_grad():
        for head in (model.encoder.mlp_mu, model.encoder.mlp_logvar):
            head[2].weight.zero_()
            head[2].bias.zero_()  # mu = 0, logvar = 0
        model.encoder.latent_attn.out_proj.weight.zero_()  # the memory: out_proj's bias alone
        src, lengths, prev = batch_of(task, lines)
        logits, _ = model(src, lengths, prev)
    lprobs = torch.log_softmax(logits.double(), dim=-1).gather(-1, src.unsqueeze(-1)).squeeze(-1)
    nll = -lprobs.masked_fill(src.eq(task.source_dictionary.pad()), 0).sum().item()
    n_tokens = sum(len(line.split()) + 1 for line in lines)  # + 1: the end of sentence
    n_words = sum(len(line.split()) + 1 for line in raw)
    assert n_tokens > n_words
    checkpoint = str(tmp_path / "checkpoint.pt")
    save_checkpoint(checkpoint, model, args)
    results = tmp_path / "results.json"
    run(
        "fairseq-vae-eval",
        data,
        "--user-dir",
        USER_DIR,
        "--path",
        checkpoint,
        "--gen-subset",
        "test",
        "--iw-samples",
        "5",
        "--no-bleu",
        "--post-process",
        "subword_nmt",
        "--results-json",
        str(results),
        "--cpu",
    )
    report = json.loads(results.read_text())
    settings, metrics = report["settings"], report["metrics"]
    assert (settings["sentences"], settings["tokens"], settings["words"]) == (12, n_tokens, n_words)
    assert metrics["iw_nll"] == pytest.approx(nll / 12, rel=1e-5)
    assert metrics["neg_elbo"] == pytest.approx(nll / 12, rel=1e-5)
    assert metrics["iw_ppl_token"] == pytest.approx(math.exp(nll / n_tokens), rel=1e-5)
    assert metrics["iw_ppl_word"] == pytest.approx(math.exp(nll / n_words), rel=1e-5)
