#!/usr/bin/env python3
"""Encode text to sentencepiece pieces, or decode pieces back to text, one line at a time.

The sentencepiece pip wheel ships neither `spm_encode` nor a `python -m` entry point, so
scripts/prepare_data.sh uses this instead. Examples:

    python scripts/spm_encode.py --model data-bin/synth/spm.model --inputs a.txt --outputs a.spm
    python scripts/spm_encode.py --model data-bin/synth/spm.model --decode < a.spm > a.txt

Line counts are preserved (an empty line stays empty) so that the encoded files stay aligned
with any per-line labels.
"""

import argparse
import sys

import sentencepiece as spm


def open_many(paths, mode):
    if not paths:
        return [sys.stdin if "r" in mode else sys.stdout]
    return [open(p, mode, encoding="utf-8", newline="\n") for p in paths]


def encode_line(sp, line):
    return " ".join(sp.encode(line, out_type=str))


def decode_line(sp, line):
    return sp.decode(line.split())


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", required=True, help="sentencepiece .model file")
    parser.add_argument("--inputs", nargs="*", default=[], help="input files (default: stdin)")
    parser.add_argument("--outputs", nargs="*", default=[], help="output files (default: stdout)")
    parser.add_argument("--decode", action="store_true", help="pieces -> text instead")
    args = parser.parse_args(argv)
    if len(args.inputs) != len(args.outputs) and (args.inputs or args.outputs):
        parser.error("--inputs and --outputs must have the same number of files")

    sp = spm.SentencePieceProcessor(model_file=args.model)
    convert = decode_line if args.decode else encode_line
    for fin, fout in zip(open_many(args.inputs, "r"), open_many(args.outputs, "w")):
        for line in fin:
            fout.write(convert(sp, line.rstrip("\r\n")) + "\n")
        if fout is not sys.stdout:
            fout.close()


if __name__ == "__main__":
    main()
