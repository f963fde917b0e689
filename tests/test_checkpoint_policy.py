"""A VAE checkpoint without some latent module's parameters, through fairseq's own tools: refused
for generation, allowed (with a warning) as the start of a --finetune-from-model run. A
checkpoint of other dimensions stops fairseq-train with our message as its last line."""

import os
import re
import subprocess

import pytest
import torch
from conftest import BIN, USER_DIR, build_tiny, run_tool, train_args
from fairseq.trainer import Trainer
from vae_fixtures import save_checkpoint

import fairseq_vae  # noqa: F401  (safe globals for torch.load)
from fairseq_vae.models.checkpoint_compat import CheckpointMismatchError
from fairseq_vae.shims.checkpoint_safety import report_checkpoint_mismatch

TO_EMBED = "decoder.embed_positions.latent_to_embed"


def generate(data_bin, checkpoint, *extra):
    return run_tool(
        "fairseq-generate",
        data_bin,
        "--user-dir",
        USER_DIR,
        "--task",
        "text_vae",
        "--path",
        checkpoint,
        "--cpu",
        "--gen-subset",
        "valid",
        *extra,
        check=False,
    )


def test_generate_with_an_override_that_adds_a_latent_module_is_refused(data_bin, tiny_checkpoint):
    out = generate(data_bin, tiny_checkpoint, "--model-overrides", "{'latent_to_embeddings': True}")
    assert f"{TO_EMBED}.weight, {TO_EMBED}.bias" in out, out[-2000:]
    assert "--latent-to-embeddings" in out and tiny_checkpoint in out
    assert not re.search(r"^H-\d+", out, re.M)  # nothing was generated from a random layer


def test_finetuning_with_a_new_latent_module_warns_and_trains(data_bin, tiny_checkpoint, tmp_path):
    out = run_tool(
        "fairseq-train",
        *train_args(
            data_bin,
            tmp_path,
            "--max-update",
            "3",
            "--latent-to-embeddings",
            "--finetune-from-model",
            tiny_checkpoint,
            "--disable-validation",
        ),
    )
    warning = re.search(r"\| WARNING \| fairseq_vae\.models\.checkpoint_compat \| (.*)", out)
    assert warning, out[-2000:]
    assert TO_EMBED in warning[1] and "--latent-to-embeddings" in warning[1]
    assert "done training" in out
    trained = str(tmp_path / "checkpoint_last.pt")
    before, after = (
        torch.load(path, map_location="cpu")["model"] for path in (tiny_checkpoint, trained)
    )
    assert f"{TO_EMBED}.weight" not in before and f"{TO_EMBED}.weight" in after
    # the encoder came from the checkpoint (3 updates at lr 3e-3 move it by little)
    key = "encoder.mlp_mu.0.weight"
    assert (after[key] - before[key]).abs().max() < 0.1 < before[key].abs().max()

    # the new checkpoint generates as trained ...
    assert re.search(r"^H-\d+", generate(data_bin, trained, "--max-len-b", "5"), re.M)
    # ... and its saved options name the --finetune-from-model file, which does not make
    # loading it with another module switched on a fine-tuning start
    out = generate(data_bin, trained, "--model-overrides", "{'latent_layer_memory': True}")
    assert "decoder.latent_layer_memory.0.weight" in out and "--latent-layer-memory" in out
    assert not re.search(r"^H-\d+", out, re.M)


def test_restore_file_with_a_new_latent_module_is_refused(data_bin, tiny_checkpoint, tmp_path):
    # --restore-file reloads the file on every relaunch: not a fine-tuning start
    reset = ["--reset-optimizer", "--reset-dataloader", "--reset-meters", "--reset-lr-scheduler"]
    args = train_args(data_bin, tmp_path, "--max-update", "3", "--latent-to-embeddings", *reset)
    out = run_tool("fairseq-train", *args, "--restore-file", tiny_checkpoint, check=False)
    assert f"{TO_EMBED}.weight, {TO_EMBED}.bias" in out, out[-2000:]
    assert "--finetune-from-model" in out  # what to do instead
    assert not (tmp_path / "checkpoint_last.pt").exists()


MISMATCH = "fairseq-train: error: checkpoint tensor "  # the plugin's error, in one line


@pytest.mark.parametrize(
    "saved, how, message",
    [
        (
            ["--latent-dim", "16"],  # the run's is TINY_ARCH's 8
            "resume",
            r"encoder\.mlp_mu\.2\.weight has shape \(16, 8\) but the model's is \(8, 8\): the "
            r"checkpoint was trained with other dimensions \(size 16 vs 8 in dimension 0\); "
            r"choose the matching --arch and latent options "
            r"\(--latent-dim, --latent-memory-slots\)",
        ),
        (
            ["--encoder-embed-dim", "24", "--decoder-embed-dim", "24"],  # the run's are 16
            "--finetune-from-model",
            r"encoder\.embed_tokens\.weight has shape \((\d+), 24\) but the model's is "
            r"\(\1, 16\): the checkpoint was trained with other dimensions \(width 24 vs 16\); "
            r"choose the matching --arch$",
        ),
    ],
    ids=["resume-latent-dim", "finetune-embed-dim"],
)
def test_checkpoint_of_other_dimensions_stops_training_with_our_message_last(
    data_bin, tmp_path, saved, how, message
):
    # fairseq's trainer raises "please ensure that the architectures match" from any load
    # error; checkpoint_safety re-raises ours, so it is what a user reads last
    _, model, args = build_tiny(data_bin, *saved)
    save_dir = tmp_path / "run"
    save_dir.mkdir()
    checkpoint = save_dir / "checkpoint_last.pt" if how == "resume" else tmp_path / "other.pt"
    save_checkpoint(checkpoint, model, args)
    extra = [] if how == "resume" else [how, checkpoint]
    result = subprocess.run(
        [
            os.path.join(BIN, "fairseq-train"),
            *map(str, train_args(data_bin, save_dir, "--max-update", "2", *extra)),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode != 0, result.stdout[-3000:]
    last = [line for line in result.stderr.splitlines() if line.strip()][-1]
    assert re.fullmatch(re.escape(MISMATCH) + message, last), result.stderr[-3000:]
    assert "please ensure that the architectures match" not in last
    if how != "resume":
        assert not (save_dir / "checkpoint_last.pt").exists()


def test_only_our_mismatch_replaces_the_trainers_generic_load_error():
    assert hasattr(Trainer.load_checkpoint, "__wrapped__")  # applied, and once

    def load_failing(cause, generic=True):
        def load_checkpoint(self, filename):
            try:
                raise cause
            except Exception:  # as fairseq's trainer does: the cause only as the context
                if not generic:
                    raise RuntimeError("out of memory")  # noqa: B904
                raise Exception(f"Cannot load model parameters from {filename}")  # noqa: B904

        return report_checkpoint_mismatch(load_checkpoint)

    ours = CheckpointMismatchError("checkpoint tensor x has shape (2,) but the model's is (3,)")
    with pytest.raises(CheckpointMismatchError) as raised:
        load_failing(ours)(None, "c.pt")
    assert raised.value is ours and raised.value.__suppress_context__
    # anything else, a plain ValueError under the generic error or another error over ours,
    # passes through unchanged
    for cause, generic, expected in (
        (ValueError("size mismatch"), True, Exception),
        (ours, False, RuntimeError),
    ):
        with pytest.raises(Exception) as raised:
            load_failing(cause, generic)(None, "c.pt")
        assert type(raised.value) is expected and raised.value.__context__ is cause
