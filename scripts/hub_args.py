"""Options shared by scripts/sample.py and scripts/interpolate.py: which model, how to decode."""

import os

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
