"""Steering (fairseq_vae.latent_space.steering): directions against numpy class means and
scikit-learn's own classifier, the moves against their closed forms, the guided move read back
by scikit-learn, the directions file, and transfer through the hub, fairseq-generate,
fairseq-interactive and scripts/transfer.py on a tiny model whose z carries the sentence's
length."""

import os
import re
import subprocess
import sys

import numpy as np
import pytest
import torch
from conftest import BIN, ROOT, USER_DIR, build_tiny, random_sentences
from sklearn.linear_model import LogisticRegression
from vae_fixtures import make_data_bin, save_checkpoint, train_tiny

from fairseq_vae.latent_space.steering import (
    Directions,
    fit_directions,
    guided_latents,
    load_directions,
    save_directions,
    shift_latents,
)
from fairseq_vae.models.bart_vae import BARTVAEModel

pytestmark = pytest.mark.usefixtures("one_thread")


def clusters(sizes, seed=0, dim=4):
    """Points of len(sizes) Gaussian classes with well-separated means, and their labels."""
    g = np.random.default_rng(seed)
    centres = 3.0 * g.standard_normal((len(sizes), dim))
    x = np.concatenate([c + g.standard_normal((n, dim)) for c, n in zip(centres, sizes)])
    labels = [f"v{k}" for k, n in enumerate(sizes) for _ in range(n)]
    return x, labels


def sklearn_classifier(x, labels):
    """The classifier fit_directions fits, fitted here by scikit-learn itself."""
    return LogisticRegression(max_iter=5000, random_state=1).fit(x, labels)


@pytest.mark.parametrize("sizes", [(40, 60), (30, 40, 50)])
def test_directions_are_the_class_means_and_scikit_learns_classifier(sizes):
    x, labels = clusters(sizes)
    d = fit_directions(torch.from_numpy(x), labels, "f")
    assert d.values == sorted(set(labels)) and d.counts.tolist() == list(sizes)
    for k, value in enumerate(d.values):
        mine = x[[lab == value for lab in labels]].mean(0)
        assert torch.allclose(d.means[k], torch.from_numpy(mine), atol=1e-12)
    reference = sklearn_classifier(x, labels)
    probs = torch.softmax(d.logits(torch.from_numpy(x)), -1).numpy()
    np.testing.assert_allclose(probs, reference.predict_proba(x), atol=1e-6)
    assert d.read(torch.from_numpy(x)) == list(reference.predict(x))


def test_mean_and_linear_moves_against_their_closed_forms():
    x, labels = clusters((50, 50, 50), seed=2)
    d = fit_directions(torch.from_numpy(x), labels, "f")
    z = torch.from_numpy(x[:3])  # read as v0 (well-separated classes)
    assert d.read(z) == ["v0"] * 3
    m = d.means
    moved = shift_latents(z, d, "v2", strength=0.5, method="mean")
    assert torch.allclose(moved, z + 0.5 * (m[2] - m[0]), atol=1e-12)
    # linear: the class-mean move projected on the boundary's normal between v0 and v2
    normal = (d.weight[2] - d.weight[0]).numpy()
    unit = normal / np.linalg.norm(normal)
    step = unit * unit.dot((m[2] - m[0]).numpy())
    moved = shift_latents(z, d, "v2", strength=2.0, method="linear")
    np.testing.assert_allclose(moved.numpy(), x[:3] + 2.0 * step, atol=1e-10)
    # a sentence already read as the target does not move
    assert torch.equal(shift_latents(z, d, "v0", strength=3.0), z)


@pytest.mark.parametrize("sizes", [(40, 60), (30, 40, 50)])
def test_guided_move_reaches_the_confidence_scikit_learn_reads(sizes):
    x, labels = clusters(sizes, seed=3)
    d = fit_directions(torch.from_numpy(x), labels, "f")
    reference = sklearn_classifier(x, labels)
    target = d.values[-1]
    z = torch.from_numpy(x[: sizes[0]])  # the first class's points
    moved = guided_latents(z, d, target, confidence=0.9)
    column = list(reference.classes_).index(target)
    p = reference.predict_proba(moved.numpy())[:, column]
    assert (p >= 0.9 - 1e-6).all()
    distance = (moved - z).norm(dim=-1)
    if len(sizes) == 2:
        # the closed form lands on the 0.9 contour itself: the nearest point that reaches it
        np.testing.assert_allclose(p, 0.9, atol=1e-6)
        margin = reference.decision_function(x[: sizes[0]])
        wanted = np.log(9.0) - (margin if target == reference.classes_[1] else -margin)
        np.testing.assert_allclose(
            distance.numpy(), wanted / np.linalg.norm(reference.coef_), atol=1e-6
        )
    # never further than the target class's mean
    assert (distance <= (d.means[-1] - z).norm(dim=-1) + 1e-9).all()
    # points already that sure stay where they are
    sure = torch.from_numpy(x[-5:])
    assert torch.equal(guided_latents(sure, d, target, 0.5), sure)


def test_a_guided_move_short_of_its_confidence_says_so(monkeypatch, caplog):
    from fairseq_vae.latent_space import steering

    x, labels = clusters((30, 40, 50), seed=3)
    d = fit_directions(torch.from_numpy(x), labels, "f")
    z = torch.from_numpy(x[:30])
    with caplog.at_level("WARNING", logger="fairseq_vae.latent_space.steering"):
        guided_latents(z, d, "v2", confidence=0.9)
    assert not caplog.records, caplog.text
    # three steps of a twentieth of the means' spread cannot cross from v0 to v2
    monkeypatch.setattr(steering, "GUIDED_STEPS", 3)
    with caplog.at_level("WARNING", logger="fairseq_vae.latent_space.steering"):
        moved = guided_latents(z, d, "v2", confidence=0.9)
    reached = torch.softmax(d.logits(moved), -1)[:, 2]
    short = int((reached < 0.9).sum())
    assert short > 0
    assert (
        f"guided move to f=v2: {short} of 30 latents stopped after 3 steps at p(v2) "
        f"{reached.min().item():.3f} (the lowest), short of the asked confidence 0.9"
    ) in caplog.text


def test_bad_labels_and_values_are_named():
    x, labels = clusters((10, 10))
    with pytest.raises(ValueError, match="factor 'f': 19 labels for 20 sentences"):
        fit_directions(torch.from_numpy(x), labels[:-1], "f")
    with pytest.raises(ValueError, match=r"factor 'f' takes one value \(\['v0'\]\)"):
        fit_directions(torch.from_numpy(x), ["v0"] * 20, "f")
    d = fit_directions(torch.from_numpy(x), labels, "f")
    with pytest.raises(ValueError, match=r"never takes the value 'v7'.*\['v0', 'v1'\]"):
        shift_latents(torch.from_numpy(x), d, "v7")
    with pytest.raises(ValueError, match="unknown direction method 'cosine'"):
        shift_latents(torch.from_numpy(x), d, "v1", method="cosine")


# ----------------------------------------------------------------------------------------------
# a tiny model, its directions file, and transfer through the tools

SHORT_LONG = random_sentences(80, seed=91, min_len=2, max_len=9)
LENGTH = ["long" if len(s.split()) >= 6 else "short" for s in SHORT_LONG]
TEST_LINES = random_sentences(12, seed=92, min_len=2, max_len=9)


@pytest.fixture(scope="module")
def steer(dict_dir, tmp_path_factory):
    """(hub, checkpoint, data, directions file, a directions file of another model)."""
    _, model, args = train_tiny(dict_dir, 150, 0.1, 0)
    root = tmp_path_factory.mktemp("steering")
    os.makedirs(root / "run")
    checkpoint = str(root / "run" / "checkpoint.pt")
    save_checkpoint(checkpoint, model, args)
    data = make_data_bin(str(root / "bin"), dict_dir, {"test": TEST_LINES, "valid": TEST_LINES})
    hub = BARTVAEModel.from_pretrained(os.path.dirname(checkpoint), "checkpoint.pt", data)
    directions = hub.directions(SHORT_LONG, LENGTH, "length")
    path = str(root / "length.pt")
    save_directions(path, directions, hub.model, checkpoint)
    other = build_tiny(dict_dir)[1]
    other_path = str(root / "other.pt")
    # a label for the other model's checkpoint: the file need not exist, the message names it
    save_directions(other_path, directions, other, str(root / "other-model.pt"))
    return hub, checkpoint, data, path, other_path


def test_directions_file_loads_with_weights_only_and_refuses_another_model(steer):
    hub, checkpoint, _, path, other_path = steer
    payload = torch.load(path, weights_only=True)
    assert payload["factor"] == "length" and payload["values"] == ["long", "short"]
    loaded = load_directions(path, hub.model, checkpoint)
    assert isinstance(loaded, Directions) and torch.equal(loaded.means, payload["means"])
    assert loaded.meta["checkpoint"] == os.path.abspath(checkpoint)
    with pytest.raises(ValueError, match=r"directions .* was fitted to .*other-model\.pt"):
        hub.load_directions(other_path)


def test_transfer_moves_the_sentences_length(steer):
    hub, _, _, path, _ = steer
    short = [s for s, lab in zip(SHORT_LONG, LENGTH) if lab == "short"][:10]
    kept = hub.reconstruct(short)
    longer = hub.transfer(short, path, "long", strength=1.5)
    words = [len(s.split()) for s in kept], [len(s.split()) for s in longer]
    assert np.mean(words[1]) > np.mean(words[0]) + 1, words
    # strength 0 is the reconstruction, and a guided move reads as long
    assert hub.transfer(short, path, "long", strength=0.0) == kept
    directions = hub.load_directions(path)
    z = hub.steered_latents(hub.latent(short), directions, "long", confidence=0.95)
    p_long = torch.softmax(directions.logits(z), -1)[:, directions.index("long")]
    assert (p_long >= 0.95 - 1e-6).all()


def test_analogy_of_a_sentence_with_itself_or_at_strength_zero_is_cs_reconstruction(steer):
    hub = steer[0]
    a, b, c = SHORT_LONG[:3], SHORT_LONG[3:6], SHORT_LONG[6:9]
    kept = hub.reconstruct(c)
    assert hub.analogy(a, a, c) == kept  # b = a: no move
    assert hub.analogy(a, b, c, strength=0.0) == kept
    # a short : long pair moves c along the length direction, the further the stronger
    short = [s for s, lab in zip(SHORT_LONG, LENGTH) if lab == "short"][:8]
    long = [s for s, lab in zip(SHORT_LONG, LENGTH) if lab == "long"][:8]
    words = [np.mean([len(d.split()) for d in hub.analogy(short, long, short, strength=s)])
             for s in (0.0, 2.0)]  # fmt: skip
    assert words[1] > words[0], words


def run(tool, *args, input=None, check=True):
    env = dict(os.environ, OMP_NUM_THREADS="1")
    result = subprocess.run([os.path.join(BIN, tool), *map(str, args)], capture_output=True,
                            text=True, input=input, env=env, timeout=600)  # fmt: skip
    if check:
        assert result.returncode == 0, result.stderr
    return result


def hypotheses(stdout):
    hyps = {}
    for line in stdout.splitlines():
        match = re.match(r"H-(\d+)\t(\S+)\t?(.*)$", line)
        if match:
            hyps[int(match[1])] = match[3]
    return [hyps[i] for i in sorted(hyps)]


def test_generate_and_interactive_apply_a_saved_direction(steer):
    hub, checkpoint, data, path, _ = steer
    common = ["--user-dir", USER_DIR, "--task", "text_vae", "--path", checkpoint, "--cpu",
              "--beam", 1, "--direction-file", path, "--direction-to", "long"]  # fmt: skip
    generated = run("fairseq-generate", data, *common, "--gen-subset", "test",
                    "--direction-strength", 1.5, "--batch-size", 5)  # fmt: skip
    assert hypotheses(generated.stdout) == hub.transfer(TEST_LINES, path, "long", strength=1.5)
    guided = run("fairseq-generate", data, *common, "--direction-confidence", 0.95)
    assert hypotheses(guided.stdout) == hub.transfer(TEST_LINES, path, "long", confidence=0.95)
    text = "\n".join(TEST_LINES[:3]) + "\n"
    interactive = run("fairseq-interactive", data, *common, "--direction-method", "linear",
                      input=text)  # fmt: skip
    expected = hub.transfer(TEST_LINES[:3], path, "long", method="linear")
    assert hypotheses(interactive.stdout) == expected


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--direction-to", "huge"], "never takes the value 'huge'"),
        ([], "say which value to move to (--direction-to)"),
        (["--direction-to", "long", "--latent-source", "prior", "--prior-samples", 2],
         "generate with --latent-source posterior-mean (not prior)"),
    ],
)  # fmt: skip
def test_generate_refuses_bad_direction_options(steer, extra, message):
    _, checkpoint, data, path, _ = steer
    result = run("fairseq-generate", data, "--user-dir", USER_DIR, "--task", "text_vae",
                 "--path", checkpoint, "--cpu", "--direction-file", path, *extra,
                 check=False)  # fmt: skip
    assert result.returncode != 0 and message in result.stderr, result.stderr[-2000:]


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--direction-to", "Long"], "--direction-to 'Long'"),  # the values are lower-case
        (["--direction-to", "long", "--direction-file", "missing.pt"], "missing.pt"),
    ],
)  # fmt: skip
def test_interactive_refuses_bad_direction_options_before_the_first_line(steer, extra, message):
    """No line is typed: the old check, on the first sentence, never ran and the tool ended 0."""
    _, checkpoint, data, path, _ = steer
    result = run("fairseq-interactive", data, "--user-dir", USER_DIR, "--task", "text_vae",
                 "--path", checkpoint, "--cpu", "--direction-file", path, *extra, input="",
                 check=False)  # fmt: skip
    assert result.returncode != 0 and message in result.stderr, result.stderr[-2000:]


def test_transfer_script_fits_then_moves_lines(steer, tmp_path):
    hub, checkpoint, data, _, _ = steer
    sentences, labels = tmp_path / "s.txt", tmp_path / "labels.tsv"
    sentences.write_text("\n".join(SHORT_LONG) + "\n")
    labels.write_text("length\tparity\n" + "".join(
        f"{lab}\t{'even' if i % 2 else 'odd'}\n" for i, lab in enumerate(LENGTH)))  # fmt: skip
    script = [sys.executable, os.path.join(ROOT, "scripts", "transfer.py"), "--checkpoint-dir",
              os.path.dirname(checkpoint), "--checkpoint-file", "checkpoint.pt", "--data", data,
              "--cpu"]  # fmt: skip
    env = dict(os.environ, OMP_NUM_THREADS="1")
    out = tmp_path / "length.pt"

    def call(*args, input=None):
        return subprocess.run(script + [str(a) for a in args], capture_output=True, text=True,
                              input=input, env=env, timeout=600)  # fmt: skip

    fitted = call("--fit", sentences, labels, "--factor", "length", "--directions", out)
    assert fitted.returncode == 0, fitted.stderr
    moved = call("--directions", out, "--to", "long", "--strength", 1.5,
                 input="\n".join(TEST_LINES) + "\n")  # fmt: skip
    assert moved.returncode == 0, moved.stderr
    assert moved.stdout.splitlines() == hub.transfer(TEST_LINES, str(out), "long", strength=1.5)
    triple = f"{SHORT_LONG[0]}\t{SHORT_LONG[1]}\t{SHORT_LONG[2]}\n"
    analogy = call("--analogy", input=triple)
    assert analogy.stdout.splitlines() == [hub.analogy(*SHORT_LONG[:3])]
    analogy = call("--analogy", "--strength", 2, input=triple)
    assert analogy.stdout.splitlines() == [hub.analogy(*SHORT_LONG[:3], strength=2.0)]
    # bad input: a factor the labels lack, labels of other sentences, an empty line
    missing = call("--fit", sentences, labels, "--factor", "tense", "--directions", out)
    assert missing.returncode == 1 and f"{labels} has no column 'tense'" in missing.stderr
    labels.write_text("length\n" + "".join(f"{lab}\n" for lab in LENGTH[:-1]))
    short = call("--fit", sentences, labels, "--factor", "length", "--directions", out)
    assert short.returncode == 1 and f"{labels} has 79 lines of labels" in short.stderr
    empty = call("--directions", out, "--to", "long", input="a cat\n\nthe dog\n")
    assert empty.returncode == 1 and "stdin:2: empty line" in empty.stderr


# ----------------------------------------------------------------------------------------------
# fairseq_vae.metrics.transfer_quality: the judge, BLEU against the source, the grammar's reading


def toy_reviews(n, seed):
    """Sentences whose label is carried by one word, among random filler words."""
    rng = np.random.default_rng(seed)
    words = ["good", "bad"]
    labels = [["positive", "negative"][k] for k in rng.integers(0, 2, n)]
    texts = [
        " ".join(
            list(rng.choice(["the", "food", "was", "place", "staff"], 4))
            + [words[lab == "negative"]]
        )
        for lab in labels
    ]
    return texts, labels


def test_ngram_judge_learns_the_word_that_carries_the_label():
    from fairseq_vae.metrics.transfer_quality import NgramJudge

    texts, labels = toy_reviews(200, seed=1)
    judge = NgramJudge(texts, labels)
    test_texts, test_labels = toy_reviews(50, seed=2)
    assert judge.accuracy(test_texts, test_labels) == 1.0
    flipped = [
        t.replace("good", "X").replace("bad", "good").replace("X", "bad") for t in test_texts
    ]
    assert judge.accuracy(flipped, test_labels) == 0.0
    with pytest.raises(ValueError, match="judge: the labels take one value"):
        NgramJudge(texts, ["positive"] * len(texts))


def test_source_bleu_by_hand_and_g_score():
    from fairseq_vae.metrics.transfer_quality import g_score, source_bleu

    assert source_bleu(["a b c d e"], ["a b c d e"]) == pytest.approx(100.0)
    # n-gram precisions 4/5, 3/4, 2/3, 1/2, same length: BLEU = their geometric mean
    expected = 100 * (0.8 * 0.75 * (2 / 3) * 0.5) ** 0.25
    assert source_bleu(["a b c d f"], ["a b c d e"]) == pytest.approx(expected, rel=1e-6)
    assert g_score(0.9, 40.0) == pytest.approx((90 * 40) ** 0.5)


def test_grammar_transfer_reads_the_shipped_corpus_labels():
    from fairseq_vae.metrics.estimators import read_labels
    from fairseq_vae.metrics.transfer_quality import grammar_transfer

    lines = open(os.path.join(ROOT, "corpus", "synth", "valid.txt")).read().splitlines()[:200]
    labels = read_labels(os.path.join(ROOT, "corpus", "synth", "valid.labels.tsv"))
    factors = [{f: labels[f][i] for f in labels} for i in range(len(lines))]
    # as "outputs", the sentences themselves: the target value is each one's own tense
    i = next(k for k in range(len(lines)) if factors[k]["tense"] == "past")
    same = [k for k in range(len(lines)) if factors[k]["tense"] == "past"][:20]
    scores = grammar_transfer([lines[k] for k in same], [factors[k] for k in same], "tense", "past")
    assert scores == {
        "success": 1.0,
        "others_kept": 1.0,
        "grammatical": 1.0,
        "kept_each": {"topic": 1.0, "sentiment": 1.0, "number": 1.0},
    }
    # another sentence as the output of each source: the share with every other factor equal
    others = [k for k in range(len(lines)) if k != i][:40]
    out = [lines[k] for k in others]
    scores = grammar_transfer(out, [factors[i]] * len(out), "tense", "past")
    kept = sum(all(factors[k][f] == factors[i][f] for f in labels if f != "tense") for k in others)
    assert scores["others_kept"] == pytest.approx(kept / len(out))
    assert scores["success"] == pytest.approx(
        sum(factors[k]["tense"] == "past" for k in others) / 40
    )
    same_topic = sum(factors[k]["topic"] == factors[i]["topic"] for k in others) / len(out)
    assert scores["kept_each"]["topic"] == pytest.approx(same_topic)
    broken = grammar_transfer(["time the was ."], [factors[i]], "tense", "past")
    assert broken["success"] == broken["others_kept"] == broken["grammatical"] == 0.0


def test_few_label_accuracy_on_a_latent_that_holds_the_label():
    from fairseq_vae.metrics.transfer_quality import few_label_accuracy

    texts, labels = toy_reviews(300, seed=3)
    test_texts, test_labels = toy_reviews(100, seed=4)
    mu = np.array([[5.0 if lab == "positive" else -5.0, 0.0] for lab in labels])
    test_mu = np.array([[5.0 if lab == "positive" else -5.0, 0.0] for lab in test_labels])
    noise = np.random.default_rng(5)
    mu, test_mu = (
        mu + 0.1 * noise.standard_normal(mu.shape),
        test_mu + 0.1 * noise.standard_normal(test_mu.shape),
    )
    row = few_label_accuracy(mu, texts, labels, test_mu, test_texts, test_labels, n=10, draws=3)
    assert row["labels"] == 10 and row["latent"] == 1.0
    assert 0.4 < row["ngram"] <= 1.0


@pytest.mark.parametrize(
    "n, labels, named",
    [
        (1, ["a", "b"] * 5, "n=1"),
        (11, ["a", "b"] * 5, "10 training sentences"),
        (4, ["a"] * 10, "one class {'a': 10}"),
    ],
)
def test_few_label_accuracy_refuses_a_draw_that_cannot_hold_two_classes(n, labels, named):
    import signal

    from fairseq_vae.metrics.transfer_quality import few_label_accuracy

    def hung(*_):
        raise AssertionError("few_label_accuracy drew again and again")

    # the old code resampled forever here: fail in a second rather than hang the suite
    previous = signal.signal(signal.SIGALRM, hung)
    signal.alarm(5)
    try:
        mu = np.arange(len(labels), dtype=float)[:, None]
        texts = [f"w{i} w{i}" for i in range(len(labels))]
        with pytest.raises(ValueError, match=re.escape(named)):
            few_label_accuracy(mu, texts, labels, mu, texts, labels, n=n, draws=1)
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


def test_few_label_accuracy_gives_up_on_a_class_it_cannot_draw(monkeypatch):
    from fairseq_vae.metrics import transfer_quality

    # one "b" in 1000: a draw of 2 holds it once in 500, never in 3 tries
    monkeypatch.setattr(transfer_quality, "FEW_LABEL_REDRAWS", 3)
    labels = ["a"] * 999 + ["b"]
    mu = np.zeros((1000, 1))
    texts = ["w"] * 1000
    with pytest.raises(ValueError, match=r"3 draws of n=2 .* one class \(classes \{'a': 999"):
        transfer_quality.few_label_accuracy(mu, texts, labels, mu, texts, labels, n=2, draws=1)
