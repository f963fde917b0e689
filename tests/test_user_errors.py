"""A user's slip is one line in fairseq's own commands too (fairseq_vae/shims/user_errors.py);
a bug keeps its traceback."""

import os
import subprocess
import sys

import pytest
from conftest import BIN, USER_DIR, train_args

from fairseq_vae.shims import user_errors


def raised_from(filename, statement):
    try:
        exec(compile(statement, filename, "exec"), {})
    except Exception as error:  # noqa: BLE001 (the error is what is looked at)
        return error
    raise AssertionError("nothing raised")


@pytest.mark.parametrize(
    "where, statement, ours",
    [
        ("inside", "raise ValueError('--x: bad')", True),
        ("inside", "raise FileNotFoundError('no such prior file p.pt')", True),
        ("inside", "{}['missing']", False),  # a KeyError of ours is a bug
        ("outside", "raise ValueError('from torch or fairseq')", False),
    ],
)
def test_only_the_plugins_own_value_errors_are_user_errors(where, statement, ours):
    folder = user_errors.PACKAGE if where == "inside" else os.path.dirname(BIN)
    error = raised_from(os.path.join(folder, "somewhere.py"), statement)
    assert user_errors.raised_by_the_plugin(error) is ours


def run(tool, *args):
    env = dict(os.environ, OMP_NUM_THREADS="1")
    return subprocess.run([os.path.join(BIN, tool), *map(str, args)], capture_output=True,
                          text=True, env=env, timeout=600)  # fmt: skip


def test_fairseq_train_reports_an_option_out_of_range_in_one_line(data_bin, tmp_path):
    result = run("fairseq-train", *train_args(data_bin, tmp_path / "ckpt"), "--kl-schedule",
                 "sawtooth", "--sawtooth-period", "0")  # fmt: skip
    assert result.returncode == 1, result.stderr[-2000:]
    assert "Traceback" not in result.stderr, result.stderr[-3000:]
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("fairseq-train: error: --sawtooth-period must be a positive"), last


def test_fairseq_generate_reports_a_prior_file_without_prior_sampling_in_one_line(data_bin):
    result = run("fairseq-generate", data_bin, "--user-dir", USER_DIR, "--task", "text_vae",
                 "--path", "unused.pt", "--prior-file", "p.pt", "--cpu")  # fmt: skip
    assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr[-3000:]
    assert result.stderr.strip().splitlines()[-1] == (
        "fairseq-generate: error: --prior-file p.pt is a prior to sample from: generate with "
        "--latent-source prior (not posterior-mean)"
    )


def test_an_error_that_is_not_the_plugins_keeps_its_traceback(data_bin):
    """fairseq's own complaint about a missing checkpoint is raised by fairseq, not by us."""
    result = run("fairseq-generate", data_bin, "--user-dir", USER_DIR, "--task", "text_vae",
                 "--path", "no-such-checkpoint.pt", "--cpu")  # fmt: skip
    assert result.returncode != 0 and "Traceback" in result.stderr, result.stderr[-3000:]


def test_the_hook_is_installed_once_by_importing_the_plugin():
    code = "import sys, fairseq_vae, importlib; print(sys.excepthook.__name__)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "one_line_for_user_errors"


def test_fairseq_generate_refuses_prior_sampling_over_a_split(data_bin, tiny_checkpoint):
    """It decoded one prior draw per test sentence and scored it against that sentence."""
    result = run("fairseq-generate", data_bin, "--user-dir", USER_DIR, "--task", "text_vae",
                 "--path", tiny_checkpoint, "--latent-source", "prior", "--cpu")  # fmt: skip
    assert result.returncode == 1 and "BLEU" not in result.stdout, result.stdout[-2000:]
    assert result.stderr.strip().splitlines()[-1] == (
        "fairseq-generate: error: --latent-source prior decodes z from the prior, not from the "
        "sentences of 'test': give --prior-samples N to generate N"
    )
