"""Fine-tuning bart_vae from a plain BART checkpoint pretrained with fairseq's own denoising
task."""

import glob
import os
import re
import sys

import pytest
import torch
from conftest import ROOT, USER_DIR, run_tool

import fairseq_vae  # noqa: F401  (its safe globals let torch.load read fairseq checkpoints)
from fairseq_vae.denoising import denoising_pretraining_args

SYNTH = os.path.join(ROOT, "data-bin", "synth")  # the shipped corpus


def dims(width):
    return [
        "--encoder-embed-dim",
        str(width),
        "--decoder-embed-dim",
        str(width),
        "--encoder-ffn-embed-dim",
        str(2 * width),
        "--decoder-ffn-embed-dim",
        str(2 * width),
        "--encoder-layers",
        "1",
        "--decoder-layers",
        "1",
        "--encoder-attention-heads",
        "2",
        "--decoder-attention-heads",
        "2",
        "--dropout",
        "0",
        "--attention-dropout",
        "0",
    ]


COMMON = [
    "--optimizer",
    "adam",
    "--max-tokens",
    "2000",
    "--num-workers",
    "0",
    "--cpu",
    "--seed",
    "5",
    "--no-epoch-checkpoints",
]


def pretrain_bart(data, save_dir, width, updates, *extra):
    """BART's own pretraining objective (text infilling) with fairseq's denoising task, as the
    demo's "bart-init" recipe and benchmarks/pretrained.py run it (bart_vae's 1024 positions)."""
    run_tool(
        "fairseq-train",
        data,
        "--user-dir",
        USER_DIR,
        *denoising_pretraining_args(dim=width, ffn=2 * width, layers=1, heads=2, positions=1024),
        "--dropout",
        "0",
        "--attention-dropout",
        "0",
        "--lr",
        "3e-3",
        "--max-update",
        str(updates),
        "--save-dir",
        save_dir,
        "--disable-validation",
        *COMMON,
        # its prefetch thread, left running when training stops mid-epoch, aborts at exit
        "--data-buffer-size",
        "0",
        *extra,
    )
    return os.path.join(save_dir, "checkpoint_last.pt")


def train_vae(save_dir, width, *extra, lr="0", updates="1"):
    return run_tool(
        "fairseq-train",
        SYNTH,
        "--user-dir",
        USER_DIR,
        "--task",
        "text_vae",
        "--criterion",
        "elbo",
        "--arch",
        "bart_vae",
        *dims(width),
        "--lr",
        lr,
        "--max-update",
        updates,
        "--kl-schedule",
        "constant",
        "--kl-beta-max",
        "0.1",
        "--save-dir",
        save_dir,
        *COMMON,
        *extra,
        check=False,
    )


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory):
    return pretrain_bart(SYNTH, str(tmp_path_factory.mktemp("bart")), 32, 150)


def load(path):
    return torch.load(path, map_location="cpu")["model"]


@pytest.mark.parametrize(
    "how",
    [
        ["--finetune-from-model"],
        [
            "--reset-optimizer",
            "--reset-dataloader",
            "--reset-meters",
            "--reset-lr-scheduler",
            "--restore-file",
        ],
    ],
    ids=["finetune-from-model", "restore-file"],
)
def test_bart_weights_are_copied_and_vae_parameters_initialised(pretrained, tmp_path, how):
    # --lr 0: Adam's step is exactly zero, so the saved model is the model as loaded
    out = train_vae(str(tmp_path), 32, *how, pretrained, "--disable-validation")
    assert "keep their fresh initialisation" in out, out[-3000:]
    bart, vae = load(pretrained), load(tmp_path / "checkpoint_last.pt")
    for key, tensor in bart.items():
        assert key in vae, key
        # BART's dictionary has <mask> as its last row; text_vae's does not
        vocab_rows = key.endswith(("embed_tokens.weight", "output_projection.weight"))
        expected = tensor[: vae[key].size(0)] if vocab_rows else tensor
        assert torch.equal(vae[key], expected), key
    new = [key for key in vae if key not in bart]
    assert any(k.startswith("encoder.mlp_mu.") for k in new)
    assert any(k.startswith("encoder.mlp_logvar.") for k in new)
    assert any(k.startswith("encoder.latent_attn.") for k in new)
    for key in new:
        assert vae[key].abs().sum() > 0 or key.endswith("bias"), key
    assert any(vae[k].abs().sum() > 0 for k in new)
    logged = re.search(r"(\d+) parameters not in the checkpoint", out)
    assert int(logged[1]) == len(new)


def test_checkpoint_of_other_width_names_both_sizes(pretrained, tmp_path):
    out = train_vae(str(tmp_path), 24, "--finetune-from-model", pretrained)
    message = (
        r"checkpoint tensor encoder\.embed_tokens\.weight has shape \((\d+), 32\) but "
        r"the model's is \(\1, 24\): the checkpoint was trained with other dimensions "
        r"\(width 32 vs 24\); choose the matching --arch"
    )
    assert re.search(r"\| ERROR \| fairseq_vae\.models\.checkpoint_compat \| " + message, out), out[
        -2000:
    ]
    assert not os.path.exists(tmp_path / "checkpoint_last.pt")  # it stopped there


def test_checkpoint_with_another_dictionary_names_both_sizes(data_bin, tmp_path):
    other = pretrain_bart(data_bin, str(tmp_path / "other"), width=32, updates=1)
    out = train_vae(str(tmp_path / "vae"), 32, "--finetune-from-model", other)
    n_ckpt = len(open(os.path.join(data_bin, "dict.txt")).readlines()) + 4 + 1  # + <mask>
    n_synth = len(open(os.path.join(SYNTH, "dict.txt")).readlines()) + 4
    assert f"dictionary has {n_ckpt} entries but this task's has {n_synth}" in out, out[-2000:]


def valid_nll(out):
    line = [ln for ln in out.splitlines() if "valid on 'valid' subset" in ln][-1]
    return float(re.search(r"\| nll_loss ([\d.]+)", line)[1])


def test_finetuning_beats_training_from_scratch(pretrained, tmp_path):
    # same seed, optimiser, learning rate and number of updates for both
    finetuned = train_vae(
        str(tmp_path / "ft"), 32, "--finetune-from-model", pretrained, lr="3e-3", updates="20"
    )
    scratch = train_vae(str(tmp_path / "scratch"), 32, lr="3e-3", updates="20")
    assert valid_nll(finetuned) < valid_nll(scratch), (valid_nll(finetuned), valid_nll(scratch))


def test_a_kept_pretraining_checkpoint_is_the_shorter_pretraining(tmp_path):
    """benchmarks/pretrained.py --pretrain-keep-every: the checkpoint kept at update 30 of a
    60-update pretraining under inverse_sqrt (the benchmarks' schedule) is the 30-update
    pretraining, as the rate does not depend on the total, and benchmarks/ptb.py reports its own
    update count, not its folder's."""
    sys.path.insert(0, os.path.join(ROOT, "benchmarks"))
    import harness

    schedule = ["--lr-scheduler", "inverse_sqrt", "--warmup-updates", "10"]
    longer = pretrain_bart(
        SYNTH, str(tmp_path / "long"), 32, 60, *schedule, "--save-interval-updates", "30"
    )
    [kept] = glob.glob(os.path.join(os.path.dirname(longer), "checkpoint_*_30.pt"))
    short = pretrain_bart(SYNTH, str(tmp_path / "short"), 32, 30, *schedule)
    for name, value in load(short).items():
        torch.testing.assert_close(load(kept)[name], value, rtol=0, atol=0, msg=name)
    assert harness.bart_pretraining(kept, SYNTH)["updates"] == 30
    assert harness.bart_pretraining(longer, SYNTH)["updates"] == 60
