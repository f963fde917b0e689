"""Every tool on a corpus prepared with GPT-2 BPE (``scripts/prepare_data.sh --bart``): words,
BLEU and printed sentences are those of the raw text, never strings of BPE ids."""

import json
import os
import re
import subprocess
import sys

import pytest
from conftest import ROOT, USER_DIR, random_sentences, run_tool, tiny_gpt2_files, train_args

from fairseq_vae.models.bart_vae import BARTVAEModel


@pytest.fixture(scope="module")
def gpt2_corpus(tmp_path_factory):
    """(raw test sentences, data-bin folder, checkpoint): the tests' sentences through a tiny
    byte-level GPT-2 BPE, and a tiny bart_vae trained on them for a few updates."""
    root = tmp_path_factory.mktemp("gpt2-corpus")
    (root / "raw").mkdir()
    splits = {
        "train": random_sentences(100, 0),
        "valid": random_sentences(10, 1),
        "test": random_sentences(24, 2),
    }
    for split, lines in splits.items():
        (root / "raw" / f"{split}.txt").write_text("\n".join(lines) + "\n")
    bart = tiny_gpt2_files(root / "bart")
    env = dict(os.environ, PYTHON=sys.executable, DATA_BIN=str(root / "bin"), WORKERS="1")
    result = subprocess.run(
        [
            "bash",
            os.path.join(ROOT, "scripts", "prepare_data.sh"),
            str(root / "raw"),
            "corpus",
            "--bart",
            str(bart),
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    data = str(root / "bin" / "corpus")
    run_tool(
        "fairseq-train",
        *train_args(
            data,
            str(root / "ckpt"),
            "--max-update",
            "30",
            "--kl-schedule",
            "constant",
            "--kl-beta-max",
            "0.1",
        ),
    )
    return splits["test"], data, str(root / "ckpt" / "checkpoint_last.pt")


@pytest.fixture(scope="module")
def hub(gpt2_corpus):
    _, data, checkpoint = gpt2_corpus
    return BARTVAEModel.from_pretrained(
        os.path.dirname(checkpoint), os.path.basename(checkpoint), data
    )


def is_text(sentence):
    """Words of the tests' vocabulary, as the raw text has them; BPE ids would be digits."""
    return not re.search(r"\d", sentence)


def test_fairseq_vae_eval_counts_raw_words_and_scores_raw_text(gpt2_corpus, hub, tmp_path):
    from sacrebleu.metrics import BLEU

    raw, data, checkpoint = gpt2_corpus
    results = tmp_path / "results.json"
    run_tool(
        "fairseq-vae-eval",
        data,
        "--user-dir",
        USER_DIR,
        "--path",
        checkpoint,
        "--gen-subset",
        "test",
        "--iw-samples",
        "2",
        "--batch-size",
        "8",
        "--results-json",
        results,
        "--cpu",
    )
    report = json.loads(results.read_text())
    settings, metrics = report["settings"], report["metrics"]
    assert settings["words"] == sum(len(line.split()) + 1 for line in raw)
    assert settings["tokens"] > settings["words"]  # GPT-2 symbols are not words here
    assert settings["detokenizer"].startswith("gpt2 (")
    assert [example["input"] for example in report["examples"]] == raw[:3]

    # the hub decodes the same greedy reconstructions from the posterior mean
    hypotheses = hub.reconstruct(raw)
    assert [example["greedy"] for example in report["examples"]] == hypotheses[:3]
    assert all(is_text(h) for h in hypotheses) and any(hypotheses)
    expected = BLEU(force=True).corpus_score(hypotheses, [raw]).score
    assert metrics["recon_bleu"] == pytest.approx(expected, abs=1e-9)
    assert metrics["iw_ppl_word"] > metrics["iw_ppl_token"]  # fewer words than symbols


def test_fairseq_generate_reads_and_prints_raw_text_by_default(gpt2_corpus):
    raw, data, checkpoint = gpt2_corpus
    out = run_tool(
        "fairseq-generate",
        data,
        "--user-dir",
        USER_DIR,
        "--task",
        "text_vae",
        "--path",
        checkpoint,
        "--gen-subset",
        "test",
        "--beam",
        "1",
        "--cpu",
        "--scoring",
        "sacrebleu",
    )
    targets = dict(re.findall(r"^T-(\d+)\t(.*)$", out, flags=re.M))
    assert [targets[str(i)] for i in range(len(raw))] == raw
    hypotheses = re.findall(r"^D-\d+\t\S+\t(.*)$", out, flags=re.M)
    assert len(hypotheses) == len(raw) and all(is_text(h) for h in hypotheses)
    assert re.search(r"Generate test with beam=1: BLEU = [\d.]+", out)


def test_hub_and_scripts_speak_raw_text(gpt2_corpus, hub):
    raw, data, checkpoint = gpt2_corpus
    assert [hub.to_text(hub.to_tokens(line)) for line in raw] == raw
    assert all(is_text(s) for s in hub.interpolate(raw[0], raw[1], steps=3) + hub.sample(3))
    # scripts/sample.py and interpolate.py are this hub behind a command line
    result = subprocess.run(
        [
            sys.executable,
            os.path.join(ROOT, "scripts", "sample.py"),
            "-n",
            "3",
            "--seed",
            "1",
            "--checkpoint-dir",
            os.path.dirname(checkpoint),
            "--data",
            data,
            "--cpu",
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert len(lines) == 3 and all(is_text(line) for line in lines), result.stdout
