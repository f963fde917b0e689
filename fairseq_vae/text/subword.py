"""The corpus's own subword segmentation, found beside its binarised data.

``scripts/prepare_data.sh`` leaves it in the data-bin folder: ``spm.model`` (sentencepiece), or
in BART mode GPT-2's ``encoder.json`` and ``vocab.bpe``. Every tool that turns token ids back into
text (fairseq-generate and fairseq-interactive through the text_vae task, fairseq-vae-eval, the
hub interface and the scripts on top of it) asks this module, so words, BLEU and printed
sentences are always those of the raw text. Nothing is downloaded.
"""

import argparse
import os
from typing import Optional

from fairseq import utils
from fairseq.data import encoders


def corpus_bpe_options(data: Optional[str]) -> dict:
    """fairseq's ``--bpe`` options for the subword files in the data folder ({} if none).

    ``data`` may be fairseq's colon-separated list of folders: the first one is read, as
    fairseq reads its dictionary from it.
    """
    if not data:
        return {}
    folder = utils.split_paths(data)[0]
    spm = os.path.join(folder, "spm.model")
    if os.path.isfile(spm):
        return {"bpe": "sentencepiece", "sentencepiece_model": spm}
    encoder_json = os.path.join(folder, "encoder.json")
    vocab_bpe = os.path.join(folder, "vocab.bpe")
    if os.path.isfile(encoder_json) and os.path.isfile(vocab_bpe):
        return {"bpe": "gpt2", "gpt2_encoder_json": encoder_json, "gpt2_vocab_bpe": vocab_bpe}
    return {}


def build_bpe(options: dict):
    """fairseq's BPE object (``encode``/``decode`` of text) for options as above, or None."""
    return encoders.build_bpe(argparse.Namespace(**options)) if options else None


def describe_bpe(options: dict) -> str:
    """Which segmentation the options name, and its files, for reports."""
    if not options:
        return "none"
    files = [value for key, value in options.items() if key != "bpe"]
    return f"{options['bpe']} ({', '.join(files)})"


# above this share of unknown words a sentence is most likely cased or segmented unlike the
# training text (a capitalised sentence on a lowercased corpus becomes all <unk>)
UNKNOWN_WARNING_SHARE = 0.5


def unknown_share(tokens, unk: int, eos: int) -> float:
    """The share of a sentence's tokens (its </s> left out) that are ``unk``."""
    words = [int(t) for t in tokens if int(t) != eos]
    return sum(t == unk for t in words) / len(words) if words else 0.0


def unknown_warning(where: str, share: float) -> str:
    return (
        f"{where}: {100 * share:.0f}% of its tokens are unknown to the dictionary (<unk>); is "
        "it cased and written like the training text (the shipped corpus is lowercased, with a "
        "space before punctuation)?"
    )
