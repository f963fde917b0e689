"""A VAE checkpoint without some latent module's parameters, through fairseq's own tools: refused
for generation, allowed (with a warning) as the start of a --finetune-from-model run."""

import re

import torch
from conftest import USER_DIR, run_tool, train_args

import fairseq_vae  # noqa: F401  (safe globals for torch.load)

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
