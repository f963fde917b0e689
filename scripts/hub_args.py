"""What scripts/sample.py, interpolate.py and transfer.py share: which model, how to decode, and
which input lines it can read."""

import os
import sys

import torch

from fairseq_vae.models.bart_vae import BARTVAEModel


def add_model_args(parser):
    parser.add_argument("--checkpoint-dir", default="checkpoints/demo")
    parser.add_argument("--checkpoint-file", default="checkpoint_last.pt")
    parser.add_argument("--data", default="data-bin/synth", help="the model's data-bin folder")
    parser.add_argument("--cpu", action="store_true", help="stay on CPU even with a GPU")
    parser.add_argument("--beam", type=int, default=1)
    parser.add_argument("--sampling", action="store_true", help="sample words, not greedy")
    parser.add_argument("--sampling-topk", type=int, default=-1)
    parser.add_argument("--sampling-topp", type=float, default=-1.0)
    parser.add_argument("--max-len-b", type=int, default=200)


def load_model(args):
    vae = BARTVAEModel.from_pretrained(
        os.path.abspath(args.checkpoint_dir), args.checkpoint_file, os.path.abspath(args.data)
    )
    if torch.cuda.is_available() and not args.cpu:
        vae = vae.cuda()
    return vae


def generation_options(args):
    return {
        "beam": args.beam,
        "sampling": args.sampling,
        "sampling_topk": args.sampling_topk,
        "sampling_topp": args.sampling_topp,
        "max_len_b": args.max_len_b,
    }


def lines_that_fit(vae, lines, name: str) -> list:
    """The lines the model can encode: one longer than its positions is skipped with a warning
    naming it, as fairseq-interactive skips it (cutting it would decode another sentence)."""
    limit, kept = vae.max_tokens(), []
    for number, line in enumerate(lines, 1):
        tokens = len(vae.to_tokens(line))
        if tokens > limit:
            print(
                f"warning: skipping {name} line {number}: {tokens} tokens, longer than the "
                f"model's {limit} positions; nothing is generated for it",
                file=sys.stderr,
            )
        else:
            kept.append(line)
    return kept
