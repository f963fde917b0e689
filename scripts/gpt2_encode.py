#!/usr/bin/env python3
"""GPT-2 byte-level BPE for BART's dictionary: text lines -> lines of BPE ids, as fairseq's
BART recipe expects before ``fairseq-preprocess --srcdict bart/dict.txt``.

Reads the local ``encoder.json`` and ``vocab.bpe`` (never downloads them). Line counts are
kept, so encoded files stay aligned with any per-line labels: a line ends at "\n" alone, as
fairseq_vae/text/check_text.py and spm_encode.py read it (a "\r" inside a line is not a line end).

    python scripts/gpt2_encode.py --encoder-json bart/encoder.json --vocab-bpe bart/vocab.bpe \\
        --inputs train.txt --outputs train.bpe
"""

import argparse

from fairseq.data.encoders.gpt2_bpe_utils import get_encoder


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--encoder-json", required=True)
    parser.add_argument("--vocab-bpe", required=True)
    parser.add_argument("--inputs", nargs="+", required=True)
    parser.add_argument("--outputs", nargs="+", required=True)
    args = parser.parse_args()
    if len(args.inputs) != len(args.outputs):
        parser.error("--inputs and --outputs need the same number of files")
    bpe = get_encoder(args.encoder_json, args.vocab_bpe)
    for source, target in zip(args.inputs, args.outputs):
        with (
            open(source, encoding="utf-8", newline="\n") as fin,
            open(target, "w", encoding="utf-8", newline="\n") as fout,
        ):
            for line in fin:
                fout.write(" ".join(map(str, bpe.encode(line.strip()))) + "\n")


if __name__ == "__main__":
    main()
