"""A smaller corpus from a word-level one, for the benchmarks' --data: a fixed random slice of
the training sentences, optionally the first N validation sentences, and the whole test split.

    .venv/bin/python benchmarks/slice_corpus.py --data ../shared/data/yelp --train 9000 \\
        --valid 1000 --out benchmarks/runs/yelp-9k

The slice is the same on every machine (benchmarks/pretrained.py's seed); the 10% slice of
benchmarks/pretrained.py is this with --train a tenth of the training split. Write it under
benchmarks/runs (ignored by git): text derived from the shared corpora is never committed.
"""

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness  # noqa: E402


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", required=True, help="folder with train.txt, valid.txt and test.txt")
    p.add_argument("--train", type=int, required=True, help="training sentences to keep")
    p.add_argument("--valid", type=int, help="validation sentences to keep (default: all)")
    p.add_argument("--out", required=True, help="the folder to write")
    args = p.parse_args()
    for split in ("train", "valid", "test"):
        if not os.path.isfile(os.path.join(args.data, f"{split}.txt")):
            p.error(f"--data {args.data}: no {split}.txt there")
    try:
        dest = harness.slice_corpus(args.data, args.out, args.train, args.valid)
    except ValueError as e:
        p.error(str(e))
    print(dest)


if __name__ == "__main__":
    main()
