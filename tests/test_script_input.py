"""What the hub scripts do with input they cannot encode: an over-long line is skipped with a
warning naming it, as fairseq-interactive skips it, and no input at all is said."""

import os
import subprocess
import sys

from conftest import ROOT, WORDS


def script(name, checkpoint, data, *args, input):
    command = [sys.executable, os.path.join(ROOT, "scripts", name), "--checkpoint-dir",
               os.path.dirname(checkpoint), "--checkpoint-file", os.path.basename(checkpoint),
               "--data", data, "--cpu", *args]  # fmt: skip
    env = dict(os.environ, OMP_NUM_THREADS="1")
    return subprocess.run(command, capture_output=True, text=True, input=input, env=env,
                          timeout=600)  # fmt: skip


def test_reconstruct_skips_an_over_long_line_naming_it(data_bin, tiny_checkpoint):
    long_line = " ".join(WORDS * 40)  # 600 words, over any tiny model's positions
    text = f"the cat sat on the mat\n{long_line}\na big dog ran\n"
    result = script("sample.py", tiny_checkpoint, data_bin, "--reconstruct", input=text)
    assert result.returncode == 0, result.stderr[-2000:]
    sources = [line.split("\t")[0] for line in result.stdout.splitlines()]
    assert sources == ["the cat sat on the mat", "a big dog ran"]
    assert "skipping stdin line 2: 601 tokens, longer than the model's" in result.stderr


def test_reconstruct_says_when_stdin_holds_no_sentence(data_bin, tiny_checkpoint):
    result = script("sample.py", tiny_checkpoint, data_bin, "--reconstruct", input="\n\n")
    assert result.returncode == 1 and result.stdout == ""
    assert result.stderr.strip().endswith("error: --reconstruct: stdin holds no sentence")


def test_fit_prior_shows_its_encoding_pass(data_bin, tiny_checkpoint, tmp_path):
    """It was silent for the minutes the training split takes to encode."""
    from conftest import USER_DIR, run_tool

    out = run_tool("fairseq-vae-fit-prior", data_bin, "--user-dir", USER_DIR, "--path",
                   tiny_checkpoint, "--prior-model", "gmm", "--components", "1", "--cpu",
                   "--out", tmp_path / "prior.pt", "--no-progress-bar",
                   "--log-interval", "1")  # fmt: skip
    # fairseq's simple bar logs from the second batch on: the last line counts every sentence
    assert "fit-prior: encoding 'train':" in out and "sentences=400" in out, out
