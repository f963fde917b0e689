#!/usr/bin/env python3
"""Decode the path between two sentences' posterior means in a trained bart_vae's latent space.

python scripts/interpolate.py "the team won the match ." "our trip was awful ." --steps 7
"""

import argparse

from hub_args import add_model_args, generation_options, load_model


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_model_args(parser)
    parser.add_argument("a", help="the first sentence (raw text)")
    parser.add_argument("b", help="the last sentence (raw text)")
    parser.add_argument("--steps", type=int, default=5, help="sentences on the path, ends included")
    parser.add_argument("--spherical", action="store_true", help="slerp instead of a line")
    args = parser.parse_args()
    vae = load_model(args)
    path = vae.interpolate(args.a, args.b, args.steps, args.spherical, **generation_options(args))
    for step, sentence in enumerate(path):
        print(f"{step / (args.steps - 1):.2f}\t{sentence}")


if __name__ == "__main__":
    main()
