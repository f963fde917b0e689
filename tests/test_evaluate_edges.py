"""fairseq-vae-eval at its edges: perplexities beyond a double, splits of one and two sentences,
--model-overrides that is not a dict literal, malformed label files, and a factor probe on a
label file sorted by class. The command runs in-process through its own parser and main()."""

import json
import math
import re

import numpy as np
import pytest
import torch
from conftest import USER_DIR, build_tiny, encode_lines, random_sentences
from fairseq import options
from fairseq.dataclass.utils import convert_namespace_to_omegaconf
from vae_fixtures import make_data_bin, save_checkpoint, shift_right, train_tiny

from fairseq_vae.cli import evaluate
from fairseq_vae.metrics.estimators import probe_factors, probe_split, read_labels

# the machine's two cores are shared: one thread each (conftest.one_thread)
pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def checkpoint(dict_dir, tmp_path_factory):
    """(model, path) of a tiny model whose decoder relies on z (as test_evaluate's)."""
    task, model, args = train_tiny(dict_dir, 100, 0.0, 0, "--word-dropout", "1.0")
    path = str(tmp_path_factory.mktemp("edges-ckpt") / "checkpoint.pt")
    save_checkpoint(path, model, args)
    return model, path


ONE = ["the cat sat on the mat"]
TWO = ["the cat sat on the mat", "a big dog ran under a red rug quickly"]
THREE = random_sentences(3, seed=2)


@pytest.fixture(scope="module")
def data(dict_dir, tmp_path_factory):
    """A data-bin whose splits hold one (test), two (valid) and three (train) sentences."""
    folder = str(tmp_path_factory.mktemp("edges-bin"))
    return make_data_bin(folder, dict_dir, {"train": THREE, "valid": TWO, "test": ONE})


def eval_main(data, path, *extra, split="test"):
    """fairseq-vae-eval's own parsing and main(), in this process: the report."""
    argv = [data, "--user-dir", USER_DIR, "--path", path, "--gen-subset", split, "--cpu"]
    argv += ["--iw-samples", "4", *map(str, extra)]
    args = options.parse_args_and_arch(evaluate.get_parser(), argv)
    overrides = options.parse_args_and_arch(evaluate.get_parser(), argv, suppress_defaults=True)
    return evaluate.main(convert_namespace_to_omegaconf(args), args, overrides)


def table(stdout):
    """{metric name: the value column} of the printed table."""
    body = stdout[stdout.index("\nmetric") + 1 :].splitlines()[1:]
    return dict(re.match(r"\s*(\S.*?)\s{2,}(\S.*)$", line).groups() for line in body)


# ----------------------------------------------------------------------------------------------
# Item 1: a perplexity beyond a double


def test_a_perplexity_beyond_a_double_is_inf_and_the_report_is_still_written(
    data, dict_dir, tmp_path, capsys
):
    # q(z|x) = p(z) and a decoder that ignores z: every importance weight is p(x|z), so the
    # IW-NLL is the decoder's NLL; logits scaled by 1e4 put it far above 709.78 nats per token
    lines = THREE
    task, model, args = build_tiny(dict_dir)
    with torch.no_grad():
        for head in (model.encoder.mlp_mu, model.encoder.mlp_logvar):
            head[2].weight.zero_()
            head[2].bias.zero_()
        model.encoder.latent_attn.out_proj.weight.zero_()
        model.decoder.output_projection.weight.mul_(1e4)
        d = task.source_dictionary
        src, lengths = encode_lines(d, lines)
        logits, _ = model(src, lengths, shift_right(src, lengths, d))
    lprobs = torch.log_softmax(logits.double(), -1).gather(-1, src.unsqueeze(-1)).squeeze(-1)
    nll = -lprobs.masked_fill(src.eq(d.pad()), 0).sum().item()
    n_tokens = sum(len(s.split()) + 1 for s in lines)
    assert nll / n_tokens > 720, "the construction must overflow exp"
    checkpoint = str(tmp_path / "checkpoint.pt")
    save_checkpoint(checkpoint, model, args)
    results = tmp_path / "results.json"
    eval_main(data, checkpoint, "--results-json", results, "--no-bleu", split="train")
    metrics = json.loads(results.read_text())["metrics"]  # Python's json reads Infinity as inf
    assert metrics["iw_nll"] == pytest.approx(nll / 3, rel=1e-4)
    assert metrics["neg_elbo"] == pytest.approx(nll / 3, rel=1e-4)
    for key in ("iw_ppl_token", "iw_ppl_word", "elbo_ppl_token", "elbo_ppl_word"):
        assert metrics[key] == math.inf, key
    assert '"iw_ppl_token": Infinity' in results.read_text()
    rows = table(capsys.readouterr().out)
    assert rows["IW PPL / token"] == rows["ELBO PPL / word"] == "inf"
    assert float(rows["IW-NLL"]) == pytest.approx(nll / 3, abs=1e-3 * nll)


# ----------------------------------------------------------------------------------------------
# Item 5: splits of one and two sentences


def test_a_one_sentence_split_reports_mi_au_and_the_probe_as_undefined(
    checkpoint, data, tmp_path, capsys
):
    model, path = checkpoint
    line = ONE[0]
    labels = tmp_path / "labels.tsv"
    labels.write_text("topic\ncats\n")
    results = tmp_path / "results.json"
    eval_main(data, path, "--labels", labels, "--results-json", results)
    report = json.loads(results.read_text())
    metrics = report["metrics"]
    assert report["settings"]["sentences"] == 1 and report["settings"]["tokens"] == 7
    assert metrics["mi"] is None and metrics["au"] is None and metrics["au_variances"] is None
    assert math.isfinite(metrics["iw_nll"]) and metrics["iw_nll"] <= metrics["neg_elbo"] + 1.0
    assert report["examples"] == [{"input": line, "greedy": report["examples"][0]["greedy"]}]
    # the exact-reconstruction share of one sentence is whether its greedy output is the input
    assert metrics["recon_exact"] == float(report["examples"][0]["greedy"] == line)
    factor = report["factors"]["topic"]
    assert factor["accuracy"] is None and factor["majority_baseline"] is None
    rows = table(capsys.readouterr().out)
    for name in ("MI", "AU", "probe accuracy: topic"):
        assert rows[name] == "undefined (one sentence)", rows


def test_a_two_sentence_split_has_two_examples_and_the_variances_of_two_means(
    checkpoint, data, tmp_path, capsys
):
    model, path = checkpoint
    lines = TWO
    results = tmp_path / "results.json"
    eval_main(data, path, "--results-json", results, split="valid")
    report = json.loads(results.read_text())
    assert [e["input"] for e in report["examples"]] == lines
    # the unbiased variance of two values a, b is (a - b)^2 / 2
    src, lengths = encode_lines(model.encoder.dictionary, lines)
    with torch.no_grad():
        mu, _ = model.encoder.posterior(src, lengths)
    expected = ((mu[0] - mu[1]) ** 2 / 2).tolist()
    metrics = report["metrics"]
    assert metrics["au_variances"] == pytest.approx(expected, abs=1e-5)
    assert metrics["au"] == sum(v >= 0.01 for v in expected)
    assert metrics["mi_upper_bound"] == pytest.approx(math.log(2))
    rows = table(capsys.readouterr().out)
    assert rows["AU"] == f"{metrics['au']} / 8"
    assert float(rows["MI"].split()[0]) == pytest.approx(metrics["mi"], abs=5e-4)


# ----------------------------------------------------------------------------------------------
# Item 11: --model-overrides


def test_model_overrides_are_read_as_a_literal_never_run(checkpoint, data, tmp_path):
    _, path = checkpoint
    marker = tmp_path / "ran"
    code = f"__import__('pathlib').Path({str(marker)!r}).touch()"
    with pytest.raises(ValueError, match="--model-overrides must be a Python dict literal"):
        eval_main(data, path, "--model-overrides", code, "--no-bleu", split="train")
    assert not marker.exists(), "--model-overrides was run as code"
    with pytest.raises(ValueError, match="--model-overrides must be a Python dict literal"):
        evaluate.parse_model_overrides("{'dropout': }")
    with pytest.raises(ValueError, match="--model-overrides must be a dict .* list"):
        evaluate.parse_model_overrides("['dropout', 0.25]")
    assert evaluate.parse_model_overrides(None) == {}


def test_a_dict_literal_of_model_overrides_reaches_the_loaded_model(checkpoint, data, monkeypatch):
    _, path = checkpoint
    loaded = []
    load = evaluate.load_checkpoint
    monkeypatch.setattr(
        evaluate, "load_checkpoint", lambda *a, **k: loaded.append(load(*a, **k)) or loaded[-1]
    )
    eval_main(data, path, "--model-overrides", "{'dropout': 0.25}", "--no-bleu", split="train")
    model = loaded[0][0]
    assert model.decoder.dropout_module.p == model.encoder.dropout_module.p == 0.25


# ----------------------------------------------------------------------------------------------
# Label files


@pytest.mark.parametrize(
    "text, sentences, error",
    [
        ("", None, r"labels.tsv is empty"),
        ("topic\ttense\nfood\tpast\nsport\n", None, r"labels.tsv:3: 1 fields.*no value for tense"),
        ("topic\ttense\nfood\tpast\tplural\n", None, r"labels.tsv:2: 3 fields.*column 3 has no"),
        ("topic\n\nfood\nsport\n", None, r"labels.tsv:2: blank line"),
        ("topic\ttense\nfood\t \n", None, r"labels.tsv:2: column 2 \(tense\) is empty"),
        ("topic\ttopic\n", None, r"labels.tsv:1: factor 'topic' is named twice"),
        ("topic\t\n", None, r"labels.tsv:1: column 2 of the header has no factor name"),
        # no header: the first of 3 rows is read as the names, so 2 rows for 3 sentences
        ("food\tpast\nsport\tpresent\nfood\tfuture\n", 3, r"2 lines.*3 sentences.*header miss"),
        ("topic\nfood\nsport\nfood\nsport\n", 3, r"labels.tsv has 4 lines.*the split 3 sent"),
    ],
)
def test_a_malformed_label_file_is_an_error_naming_the_file_and_line(
    tmp_path, text, sentences, error
):
    path = tmp_path / "labels.tsv"
    path.write_text(text)
    with pytest.raises(ValueError, match=error):
        read_labels(str(path), sentences=sentences)


def test_a_well_formed_label_file_reads_with_crlf_and_trailing_blank_lines(tmp_path):
    path = tmp_path / "labels.tsv"
    path.write_bytes(b"topic\ttense\r\nfood\tpast\r\nsport\tpresent\r\n\r\n\n")
    assert read_labels(str(path), sentences=2) == {
        "topic": ["food", "sport"],
        "tense": ["past", "present"],
    }


def test_fairseq_vae_eval_checks_the_label_count_before_evaluating(
    checkpoint, data, tmp_path, monkeypatch
):
    _, path = checkpoint
    labels = tmp_path / "labels.tsv"
    labels.write_text("food\nsport\n")  # no header
    monkeypatch.setattr(evaluate, "iw_pass", lambda *a: pytest.fail("evaluated anyway"))
    with pytest.raises(ValueError, match=f"{labels} has 1 lines.*header missing"):
        eval_main(data, path, "--labels", labels, split="valid")


# ----------------------------------------------------------------------------------------------
# Item 8: the probe's split


def test_the_probe_reads_a_factor_from_a_label_file_sorted_by_class(tmp_path):
    classes = ["a"] * 30 + ["b"] * 20 + ["c"] * 10  # the file lists one class after another
    path = tmp_path / "labels.tsv"
    path.write_text("shape\n" + "".join(f"{c}\n" for c in classes))
    labels = read_labels(str(path), sentences=60)
    centres = {"a": (3.0, 0.0), "b": (-3.0, 0.0), "c": (0.0, 3.0)}
    rng = np.random.default_rng(0)
    features = np.array([centres[c] for c in classes]) + 0.5 * rng.standard_normal((60, 2))
    result = probe_factors(features, labels, seed=3)["shape"]
    # the classes' centres are 6 noise sd apart: a probe that saw every class reads them all
    assert result["accuracy"] > 0.95
    # stratified halves of 30 / 20 / 10 sentences: the scored half holds 15 / 10 / 5
    assert result["majority_baseline"] == 0.5
    assert (result["classes"], result["train"], result["test"]) == (3, 30, 30)
    assert result["split"] == "stratified"


def test_the_probe_split_halves_every_class_and_depends_on_its_seed_only():
    y = np.array(["a"] * 9 + ["b"] * 5 + ["c"] * 2)
    train, scored, stratified = probe_split(y, seed=1)
    assert stratified and len(train) == 8 and len(scored) == 8
    assert sorted(np.concatenate([train, scored]).tolist()) == list(range(16))
    for cls, n in (("a", 9), ("b", 5), ("c", 2)):
        assert abs((y[train] == cls).sum() - n / 2) <= 0.5, cls
    again = probe_split(y, seed=1)
    assert again[0].tolist() == train.tolist()
    others = {tuple(probe_split(y, seed=s)[0].tolist()) for s in range(2, 8)}
    assert len(others - {tuple(train.tolist())}) >= 1
    # a class of one sentence cannot be stratified: a shuffle, still both halves filled
    train, scored, stratified = probe_split(np.array(["a"] * 6 + ["b"]), seed=1)
    assert not stratified and (len(train), len(scored)) == (3, 4)


def test_a_split_of_empty_lines_only_is_a_clear_error(checkpoint, dict_dir, tmp_path):
    # the zero-sentence end of "fewer than three": the task refuses it, naming the split's file
    _, path = checkpoint
    data = make_data_bin(str(tmp_path / "bin"), dict_dir, {"test": ["", ""]})
    with pytest.raises(ValueError, match="bin/test: every sentence is empty"):
        eval_main(data, path, "--no-bleu")


def test_prior_samples_on_a_one_sentence_split_with_short_samples_report_undefined_measures(
    checkpoint, data, tmp_path, capsys
):
    # one real sentence has no other to score its self-BLEU against; samples of at most two
    # tokens hold no 3-gram: both undefined, after the IW pass, never an error
    model, path = checkpoint
    results = tmp_path / "results.json"
    eval_main(
        data, path, "--prior-samples", 2, "--max-len-b", 2, "--no-bleu", "--results-json", results
    )
    section = json.loads(results.read_text())["prior_samples"]
    real = section["real"]
    assert real["n"] == 1 and real["self_bleu4"] is None and real["distinct_3"] is not None
    for row in section["rows"]:
        assert max(len(s.split()) for s in row["samples"]) <= 2, row["samples"]
        assert row["distinct_3"] is None and row["self_bleu4"] is not None
    out = capsys.readouterr().out
    real_line = next(line for line in out.splitlines() if line.startswith("real "))
    assert real_line.split()[7] == "n/a", real_line  # the self-BLEU column
    assert "n/a: undefined (self-BLEU of one sentence" in out
