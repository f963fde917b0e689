#!/usr/bin/env python3
"""Paraphrase pairs from a corpus of several independent captions per image (Multi30k task 2:
{train,valid,test}.{1..5}.txt, line i of every file describing image i).

Output: DIR/{train,valid,test}.{src,tgt} for scripts/prepare_data.sh --pairs, and
DIR/text/{train,valid,test}.txt, every distinct caption of a split once: the text a BART is
denoising-pretrained on (scripts/prepare_data.sh DIR/text), whose segmentation the pairs then
share (--pairs --like).
* train: every ordered pair (a, b) of two different captions of the same image, 20 an image
  with five captions (a caption written twice for one image counts once). All pairs rather than a
  fresh random pairing each epoch: fairseq shuffles them every epoch anyway, and a fixed set
  is what a rerun, a resumed run and a second worker all read alike.
* valid, test: one caption of each image as the source, the next one as its target (one pair
  an image: generation and the IW bound then do each source once), and in {split}.refs the
  source's references, every other caption of the image, tab-separated on the source's line.
  The source caption rotates with the image (image i: caption i mod K): the files are sorted
  by length (file 1 the longest), so always taking one file would teach the model to lengthen
  or shorten.
Lines are kept as they are (the corpus is tokenised and lower-cased); an empty caption stops
with its file and line.
"""

import argparse
import os
import sys


def read_captions(data: str, split: str) -> list:
    """[[caption 1, ..., caption K] for each image] of a split."""
    files, k = [], 1
    while os.path.isfile(os.path.join(data, f"{split}.{k}.txt")):
        files.append(os.path.join(data, f"{split}.{k}.txt"))
        k += 1
    if len(files) < 2:
        raise ValueError(f"{data}: needs {split}.1.txt and {split}.2.txt at least (captions)")
    columns = []
    for path in files:
        with open(path, encoding="utf-8") as f:
            lines = [" ".join(line.split()) for line in f]
        for i, line in enumerate(lines, 1):
            if not line:
                raise ValueError(f"{path}:{i}: empty caption")
        columns.append(lines)
    if len({len(c) for c in columns}) != 1:
        sizes = ", ".join(f"{os.path.basename(p)} {len(c)}" for p, c in zip(files, columns))
        raise ValueError(f"{data}: the {split} files differ in line count ({sizes})")
    return [list(image) for image in zip(*columns)]


def train_pairs(images: list) -> list:
    pairs = []
    for captions in images:
        distinct = list(dict.fromkeys(captions))
        pairs += [(a, b) for a in distinct for b in distinct if a != b]
    return pairs


def reference_groups(images: list) -> list:
    """(source, [references]) for each image, the source caption rotating with the image and
    its references the captions after it, in the files' order from there."""
    groups = []
    for n, captions in enumerate(images):
        s = n % len(captions)
        groups.append((captions[s], captions[s + 1 :] + captions[:s]))
    return groups


def write(out: str, split: str, pairs: list):
    for side, text in (("src", [a for a, _ in pairs]), ("tgt", [b for _, b in pairs])):
        with open(os.path.join(out, f"{split}.{side}"), "w", encoding="utf-8", newline="\n") as f:
            f.writelines(line + "\n" for line in text)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", default=os.path.join("..", "shared", "data", "multi30k"))
    parser.add_argument("--out", required=True, help="output folder")
    args = parser.parse_args(argv)
    try:
        splits = {s: read_captions(args.data, s) for s in ("train", "valid", "test")}
    except (OSError, ValueError) as e:
        sys.exit(f"make_caption_pairs.py: error: {e}")
    os.makedirs(args.out, exist_ok=True)
    pairs = train_pairs(splits["train"])
    write(args.out, "train", pairs)
    print(f"train: {len(splits['train'])} images, {len(pairs)} pairs")
    for split in ("valid", "test"):
        groups = reference_groups(splits[split])
        write(args.out, split, [(s, refs[0]) for s, refs in groups])
        path = os.path.join(args.out, f"{split}.refs")
        with open(path, "w", encoding="utf-8", newline="\n") as f:
            f.writelines("\t".join(refs) + "\n" for _, refs in groups)
        print(f"{split}: {len(groups)} sources, {len(groups[0][1])} references each")
    os.makedirs(os.path.join(args.out, "text"), exist_ok=True)
    for split, images in splits.items():
        seen = dict.fromkeys(c for captions in images for c in captions)
        path = os.path.join(args.out, "text", f"{split}.txt")
        with open(path, "w", encoding="utf-8", newline="\n") as f:
            f.writelines(c + "\n" for c in seen)
        print(f"text/{split}.txt: {len(seen)} distinct captions")


if __name__ == "__main__":
    main()
