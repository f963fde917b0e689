#!/usr/bin/env python3
"""Write paraphrase pairs from the shipped grammar (fairseq_vae/synth/paraphrases.py): a source
fixes topic and tense, a target is another sentence with them kept and the other factors drawn.

Output: DIR/{train,valid,test}.{src,tgt}, line i of .tgt a target of line i of .src, for
scripts/prepare_data.sh --pairs. Training pairs each have their own source; in valid and test
each source appears with --references targets on consecutive lines, its references (what
fairseq-vae-eval --latent-samples scores against). Each split has its own generator seeded
from (--seed, split), so the files are the same on every run.
"""

import argparse
import os
import random

from fairseq_vae.synth.paraphrases import paraphrase_groups


def write_split(out: str, split: str, groups):
    lines = {"src": [], "tgt": []}
    for group in groups:
        for target, _ in group["targets"]:
            lines["src"].append(group["source"])
            lines["tgt"].append(target)
    for side, text in lines.items():
        path = os.path.join(out, f"{split}.{side}")
        with open(path, "w", encoding="utf-8", newline="\n") as f:
            f.write("".join(line + "\n" for line in text))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="corpus/synth-pairs", help="output folder")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--train", type=int, default=20000, help="training pairs")
    parser.add_argument("--valid", type=int, default=200, help="validation sources")
    parser.add_argument("--test", type=int, default=200, help="test sources")
    parser.add_argument("--references", type=int, default=4, help="targets a valid/test source")
    args = parser.parse_args(argv)
    if args.references < 1:
        parser.error(f"--references must be at least 1, got {args.references}")
    os.makedirs(args.out, exist_ok=True)
    for split, sources, per_source in (
        ("train", args.train, 1),
        ("valid", args.valid, args.references),
        ("test", args.test, args.references),
    ):
        groups = paraphrase_groups(sources, per_source, random.Random(f"{args.seed}:{split}"))
        write_split(args.out, split, groups)
        print(f"{split}: {sources} sources, {sources * per_source} pairs")
    print(f"written to {args.out}")


if __name__ == "__main__":
    main()
