#!/usr/bin/env python3
"""Write a synthetic English-like corpus with known discrete generative factors.

The grammar (four factors drawn uniformly: topic, sentiment, tense and number, realised by four
templates) and its tables live in ``fairseq_vae/synth/corpus.py``, whose tables the recogniser of
``fairseq_vae/synth/grammar.py`` reads too: one source for both.

Output: DIR/{train,valid,test}.txt (one sentence per line) and DIR/{split}.labels.tsv
(header "topic\\tsentiment\\ttense\\tnumber", then one row per sentence, same order). Each
split has its own generator seeded from (--seed, split name), so the files are byte-identical
across runs and valid/test do not change when --train does.
"""

import argparse
import os
import random

from fairseq_vae.synth.corpus import FACTOR_NAMES, generate


def split_rng(seed, split):
    # A string seed is hashed with SHA-512 by random.Random, so it is stable across runs and
    # unaffected by PYTHONHASHSEED; one generator per split keeps valid/test fixed when the
    # train size changes.
    return random.Random(f"{seed}:{split}")


def write_split(out_dir, split, pairs):
    with open(os.path.join(out_dir, f"{split}.txt"), "w", encoding="utf-8", newline="\n") as f:
        for sentence, _ in pairs:
            f.write(sentence + "\n")
    path = os.path.join(out_dir, f"{split}.labels.tsv")
    with open(path, "w", encoding="utf-8", newline="\n") as f:
        f.write("\t".join(FACTOR_NAMES) + "\n")
        for _, factors in pairs:
            f.write("\t".join(factors[name] for name in FACTOR_NAMES) + "\n")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", default="corpus/synth", help="output folder")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--train", type=int, default=20000, help="number of train sentences")
    parser.add_argument("--valid", type=int, default=1000, help="number of valid sentences")
    parser.add_argument("--test", type=int, default=1000, help="number of test sentences")
    args = parser.parse_args(argv)

    os.makedirs(args.out, exist_ok=True)
    vocab = set()
    for split in ("train", "valid", "test"):
        pairs = generate(getattr(args, split), split_rng(args.seed, split))
        write_split(args.out, split, pairs)
        lengths = [len(s.split()) for s, _ in pairs]
        for s, _ in pairs:
            vocab.update(s.split())
        mean = sum(lengths) / max(len(lengths), 1)
        print(f"{split}: {len(pairs)} sentences, {mean:.1f} tokens/sentence on average")
    print(f"{len(vocab)} token types; written to {args.out}")


if __name__ == "__main__":
    main()
