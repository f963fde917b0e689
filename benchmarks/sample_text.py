#!/usr/bin/env python3
"""The training text of a reverse-PPL language model (benchmarks/prior.py --reverse-ppl), one
sentence a line:

    sample_text.py samples REPORT PRIOR DATA OUT  # the ancestral samples of one prior
                                                  # (standard, gmm, flow, or lm: the LM's own)
                                                  # in a fairseq-vae-eval --prior-samples report
    sample_text.py real DATA N SEED OUT           # N sentences of a binarised data folder's
                                                  # train split, a seeded choice

Both are written as the data folder's binarised text is: the samples (raw text in the report)
through its subword model when it has one (spm.model, GPT-2 BPE files), the real sentences
as their tokens. The file is written whole or not at all (renamed into place).
"""

import argparse
import json
import os
import random
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)


def report_samples(report_path: str, prior: str, data: str) -> list:
    from fairseq_vae.text.subword import build_bpe, corpus_bpe_options

    rows = json.load(open(report_path))["prior_samples"]["rows"]
    match = [r for r in rows if r["prior"] == prior and r["decoding"] == "ancestral"]
    if not match:
        kinds = sorted({r["prior"] for r in rows})
        sys.exit(f"{report_path}: no ancestral samples of prior {prior!r} (it has {kinds})")
    bpe = build_bpe(corpus_bpe_options(data))
    return [bpe.encode(s) if bpe is not None else s for s in match[0]["samples"]]


def training_sentences(data: str, n: int, seed: int) -> list:
    from fairseq.data import Dictionary

    from fairseq_vae.metrics.prior_samples import read_split_rows

    dictionary = Dictionary.load(os.path.join(data, "dict.txt"))
    rows = read_split_rows(data, "train", dictionary)
    if n > len(rows):
        sys.exit(f"{data}: asked for {n} training sentences, the split has {len(rows)}")
    chosen = sorted(random.Random(seed).sample(range(len(rows)), n))
    return [dictionary.string(rows[i][:-1]) for i in chosen]


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    sub = p.add_subparsers(dest="source", required=True)
    s = sub.add_parser("samples")
    s.add_argument("report")
    s.add_argument("prior")
    s.add_argument("data")
    s.add_argument("out")
    r = sub.add_parser("real")
    r.add_argument("data")
    r.add_argument("n", type=int)
    r.add_argument("seed", type=int)
    r.add_argument("out")
    args = p.parse_args()
    if args.source == "samples":
        lines = report_samples(args.report, args.prior, args.data)
    else:
        lines = training_sentences(args.data, args.n, args.seed)
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out + ".partial", "w") as f:
        f.write("\n".join(lines) + "\n")
    os.replace(args.out + ".partial", args.out)


if __name__ == "__main__":
    main()
