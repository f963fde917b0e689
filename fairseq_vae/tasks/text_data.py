"""The datasets the text_vae task builds: the sentences of one side (each its own source and
target), or the pairs of a source and a target; both leave out the sentences they skip without
renumbering the rest."""

import os
from typing import Optional

import numpy as np
from fairseq.data import LanguagePairDataset


class SkippingLanguagePairDataset(LanguagePairDataset):
    """A LanguagePairDataset whose batches leave out the sentences marked in ``skip``.

    They are dropped from ``ordered_indices`` rather than from the data, so every sample id
    stays the sentence's line number minus one (fairseq-generate's S-/H- ids included).
    """

    def __init__(self, skip: np.ndarray, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.skip = skip

    def ordered_indices(self):
        indices = super().ordered_indices()
        return indices[~self.skip[indices]]


def paired_dictionary(folder: str, src: Optional[str], tgt: Optional[str]) -> str:
    """The one dictionary of a paired data folder: BART embeds both sides with one table, so
    fairseq-preprocess --joined-dictionary must have written dict.{src}.txt = dict.{tgt}.txt."""
    if not (src and tgt):
        raise ValueError("paired data needs both --source-lang and --target-lang")
    paths = [os.path.join(folder, f"dict.{lang}.txt") for lang in (src, tgt)]
    for path in paths:
        if not os.path.isfile(path):
            raise FileNotFoundError(
                f"no dictionary at {path}: is {folder!r} a paired data-bin folder "
                f"(scripts/prepare_data.sh --pairs, fairseq-preprocess --source-lang {src} "
                f"--target-lang {tgt} --joined-dictionary)?"
            )
    if open(paths[0], "rb").read() != open(paths[1], "rb").read():
        raise ValueError(
            f"{paths[0]} and {paths[1]} differ: BART shares one embedding table between source "
            "and target, binarise with fairseq-preprocess --joined-dictionary"
        )
    return paths[0]


class PairedDataset(SkippingLanguagePairDataset):
    """Source and target pairs whose batches also hand the target to the model's encoder
    (``tgt_tokens``, ``tgt_lengths`` in ``net_input``): bart_cvae's posterior q(z|c, x) reads
    it; the decoder still learns it only through z and the source."""

    def collater(self, samples, pad_to_length=None):
        batch = super().collater(samples, pad_to_length)
        if batch.get("target") is not None:
            pad = self.tgt_dict.pad()
            batch["net_input"]["tgt_tokens"] = batch["target"]
            batch["net_input"]["tgt_lengths"] = batch["target"].ne(pad).sum(dim=1)
        return batch
