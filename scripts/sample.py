#!/usr/bin/env python3
"""Sentences from a trained bart_vae: decoded from the prior, or reconstructed from input.

python scripts/sample.py -n 10 --seed 1                 # 10 sentences from z ~ N(0, I)
python scripts/sample.py -n 10 --seed 1 --prior-file checkpoints/demo/prior-gmm.pt
                                                        # ... from a fitted prior
python scripts/sample.py --reconstruct < sentences.txt  # each line from its posterior mean
                      # (empty lines left out, over-long ones skipped with a warning)
"""

import argparse
import sys

import torch
from hub_args import add_model_args, generation_options, lines_that_fit, load_model


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_model_args(parser)
    parser.add_argument("-n", type=int, default=10, help="how many prior samples")
    parser.add_argument("--seed", type=int, default=None, help="makes the draw reproducible")
    parser.add_argument(
        "--prior-file",
        metavar="FILE",
        help="draw z from this prior, fitted to the model by fairseq-vae-fit-prior "
        "(default: N(0, I))",
    )
    parser.add_argument("--reconstruct", action="store_true", help="reconstruct stdin's lines")
    args = parser.parse_args()
    if args.reconstruct and args.prior_file:
        parser.error("--prior-file is for prior samples, not --reconstruct")
    if args.seed is not None:
        torch.manual_seed(args.seed)  # also fixes --sampling's word draws
    vae = load_model(args)
    options = generation_options(args)
    if args.reconstruct:
        lines = [line.rstrip("\n") for line in sys.stdin if line.strip()]
        if not lines:
            parser.exit(1, f"{parser.prog}: error: --reconstruct: stdin holds no sentence\n")
        lines = lines_that_fit(vae, lines, "stdin")
        for source, output in zip(lines, vae.reconstruct(lines, **options)):
            print(f"{source}\t{output}")
        return
    try:
        prior = vae.load_prior(args.prior_file) if args.prior_file else None
    except ValueError as error:  # no such file, or a prior of another model
        parser.exit(1, f"{parser.prog}: error: --prior-file: {error}\n")
    for sentence in vae.sample(args.n, seed=args.seed, prior=prior, **options):
        print(sentence)


if __name__ == "__main__":
    main()
