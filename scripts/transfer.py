#!/usr/bin/env python3
"""Attribute transfer with a trained bart_vae: fit a factor's directions in z once, then move
sentences along them (lines in, lines out).

python scripts/transfer.py --fit corpus/synth/train.txt corpus/synth/train.labels.tsv \\
    --factor tense --directions tense.pt                   # class means + classifier in z
python scripts/transfer.py --directions tense.pt --to present < in.txt > out.txt
python scripts/transfer.py --directions tense.pt --to present --method linear --strength 1.5
python scripts/transfer.py --directions tense.pt --to present --confidence 0.9  # guided
python scripts/transfer.py --analogy < triples.tsv   # a<TAB>b<TAB>c lines -> d = c + (b - a)
python scripts/transfer.py --analogy --strength 2 < triples.tsv   # d = c + 2 (b - a)

Transfer writes one output line per input line; empty input lines are an error naming the
line, and a line longer than the model's positions is skipped with a warning naming it.
See fairseq_vae/latent_space/steering.py for what each method does.
"""

import argparse
import os
import sys

from hub_args import add_model_args, generation_options, lines_that_fit, load_model

from fairseq_vae.latent_space.steering import METHODS, save_directions


def read_lines(stream, name: str):
    lines = [line.rstrip("\n") for line in stream]
    for i, line in enumerate(lines, 1):
        if not line.strip():
            raise ValueError(f"{name}:{i}: empty line")
    return lines


def main():
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        epilog=__doc__.split("\n\n", 1)[1],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_model_args(parser)
    parser.add_argument(
        "--fit",
        nargs=2,
        metavar=("SENTENCES", "LABELS"),
        help="fit directions to these sentences (one a line) and their labels TSV",
    )
    parser.add_argument("--factor", help="the labels' column to fit (with --fit)")
    parser.add_argument("--directions", metavar="FILE", help="the directions file")
    parser.add_argument("--to", help="the factor's value to move each sentence to")
    parser.add_argument("--method", choices=METHODS, default="mean")
    parser.add_argument(
        "--strength",
        type=float,
        default=1.0,
        help="times the class-mean move (with --analogy: d = c + strength * (b - a))",
    )
    parser.add_argument(
        "--confidence",
        type=float,
        help="instead of --strength: move until the latent classifier reads --to this sure",
    )
    parser.add_argument("--analogy", action="store_true", help="read a<TAB>b<TAB>c lines")
    args = parser.parse_args()
    if args.fit and not (args.factor and args.directions):
        parser.error("--fit needs --factor and --directions (the file to write)")
    if not (args.fit or args.analogy) and not (args.directions and args.to):
        parser.error("transfer needs --directions and --to (or --fit, or --analogy)")
    vae = load_model(args)
    options = generation_options(args)
    try:
        if args.fit:
            sentences = read_lines(open(args.fit[0]), args.fit[0])
            directions = vae.directions(sentences, args.fit[1], args.factor)
            checkpoint = os.path.join(args.checkpoint_dir, args.checkpoint_file)
            save_directions(args.directions, directions, vae.model, checkpoint)
            counts = dict(zip(directions.values, directions.counts.tolist()))
            print(f"wrote {args.directions}: factor {args.factor!r}, {counts}", file=sys.stderr)
        elif args.analogy:
            triples = []
            for i, line in enumerate(read_lines(sys.stdin, "stdin"), 1):
                triples.append(line.split("\t"))
                if len(triples[-1]) != 3:
                    raise ValueError(f"stdin:{i}: {len(triples[-1])} fields; a line is a, b, c")
            print("\n".join(vae.analogy(*zip(*triples), strength=args.strength, **options)))
        else:
            lines = lines_that_fit(vae, read_lines(sys.stdin, "stdin"), "stdin")
            outputs = vae.transfer(
                lines,
                args.directions,
                args.to,
                args.strength,
                args.method,
                args.confidence,
                **options,
            )
            print("\n".join(outputs))
    except ValueError as error:  # a bad file, factor or value: named in the message
        parser.exit(1, f"{parser.prog}: error: {error}\n")


if __name__ == "__main__":
    main()
