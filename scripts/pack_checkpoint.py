#!/usr/bin/env python3
"""Write a fairseq checkpoint without its optimizer state, as `--no-save-optimizer-state` would.

    python scripts/pack_checkpoint.py checkpoints/bart/checkpoint_last.pt pretrained/bart-synth.pt

What `--finetune-from-model` reads (the weights and the options) is kept as it is, in fp32;
Adam's two moments, twice the size of the weights, are dropped. Prints the file's size and
SHA-256 (scripts/demo.py checks the shipped BART against it).
"""

import argparse
import hashlib
import os

import torch

import fairseq_vae  # noqa: F401  (the allow-list that lets weights_only read fairseq checkpoints)


def sha256(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("checkpoint", help="a checkpoint written by fairseq-train")
    parser.add_argument("output", help="where to write the packed checkpoint")
    args = parser.parse_args()
    state = torch.load(args.checkpoint, map_location="cpu", weights_only=True)
    if "model" not in state:
        parser.error(f"{args.checkpoint} is not a fairseq checkpoint (no 'model' entry)")
    state.pop("last_optimizer_state", None)
    if isinstance(state.get("cfg"), dict) and "checkpoint" in state["cfg"]:
        state["cfg"]["checkpoint"]["no_save_optimizer_state"] = True
    os.makedirs(os.path.dirname(os.path.abspath(args.output)), exist_ok=True)
    torch.save(state, args.output)
    size = os.path.getsize(args.output) / 2**20
    print(f"{args.output}: {size:.2f} MiB, sha256 {sha256(args.output)}")


if __name__ == "__main__":
    main()
