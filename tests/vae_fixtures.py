"""Helpers for the evaluation and plotting tests: a tiny trained model, a tiny data-bin made by
fairseq-preprocess with the tests' dictionary, and a checkpoint that fairseq's loader reads."""

import os
import subprocess

import torch
from conftest import BIN, build_tiny, encode_lines, random_sentences

from fairseq_vae.criterions.elbo import gaussian_kl


def train_tiny(dict_dir, steps=60, beta=0.5, seed=0, *extra):
    """(task, model, args): a tiny bart_vae trained in-process on random sentences.

    Plain Adam on NLL + beta * KL; a beta below 1 keeps the latent in use on this easy data.
    """
    task, model, args = build_tiny(dict_dir, *extra)
    d = task.source_dictionary
    torch.manual_seed(seed)
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    model.train()
    for step in range(steps):
        src, lengths = encode_lines(d, random_sentences(32, seed=1000 + step))
        prev = shift_right(src, lengths, d)
        logits, extra_out = model(src, lengths, prev)
        lprobs = torch.log_softmax(logits.float(), dim=-1)
        nll = -lprobs.gather(-1, src.unsqueeze(-1)).squeeze(-1).masked_fill(src.eq(d.pad()), 0)
        kl = gaussian_kl(extra_out["mu"], extra_out["logvar"])
        loss = (nll.sum() + beta * kl.sum()) / src.size(0)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    model.eval()
    return task, model, args


def shift_right(src, lengths, d):
    """prev_output_tokens of a right-padded batch: eos first, then the sentence without its eos."""
    prev = torch.full_like(src, d.pad())
    prev[:, 0] = d.eos()
    for i, n in enumerate(lengths.tolist()):
        prev[i, 1:n] = src[i, : n - 1]
    return prev


def save_checkpoint(path, model, args):
    """A checkpoint in the layout fairseq's loader upgrades from (options as a Namespace)."""
    torch.save(
        {
            "args": args,
            "model": model.state_dict(),
            "optimizer_history": [
                {
                    "criterion_name": "ELBOCriterion",
                    "optimizer_name": "Adam",
                    "lr_scheduler_state": {"best": None},
                    "num_updates": 0,
                }
            ],
            "extra_state": {"epoch": 1},
            "last_optimizer_state": None,
        },
        path,
    )


def make_data_bin(dest, dict_dir, splits):
    """fairseq-preprocess --only-source of {split: lines} with the tests' dictionary."""
    raw = os.path.join(dest, "raw")
    os.makedirs(raw, exist_ok=True)
    prefs = []
    for split, lines in splits.items():
        with open(os.path.join(raw, f"{split}.txt"), "w") as f:
            f.write("\n".join(lines) + "\n")
        prefs += [f"--{split}pref", os.path.join(raw, split + ".txt")]
    result = subprocess.run(
        [
            os.path.join(BIN, "fairseq-preprocess"),
            "--only-source",
            *prefs,
            "--srcdict",
            os.path.join(dict_dir, "dict.txt"),
            "--destdir",
            dest,
            "--workers",
            "1",
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return dest


__all__ = ["make_data_bin", "save_checkpoint", "shift_right", "train_tiny"]
