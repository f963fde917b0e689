"""Token ids back to the corpus's raw text, for the evaluation's BLEU, word counts and samples."""

from fairseq import utils
from torch import Tensor

from fairseq_vae.text.subword import build_bpe, describe_bpe


class Detokenizer:
    """Token ids -> raw text: the corpus's subword model (``fairseq_vae.text.subword``:
    sentencepiece or GPT-2 BPE, reversed by fairseq's own BPE object), or fairseq's
    --post-process."""

    def __init__(self, dictionary, bpe_options: dict, post_process=None):
        self.dictionary = dictionary
        self.bpe_options = bpe_options
        self.bpe = build_bpe(bpe_options)
        self.post_process = post_process

    def describe(self) -> str:
        if self.bpe is not None:
            return f"{describe_bpe(self.bpe_options)} decoding"
        if self.post_process:
            return f"fairseq --post-process {self.post_process}"
        return "none (dictionary symbols are taken as words)"

    def __call__(self, tokens: Tensor) -> str:
        tokens = utils.strip_pad(tokens, self.dictionary.pad())
        if self.bpe is not None:
            return self.bpe.decode(self.dictionary.string(tokens))
        return self.dictionary.string(tokens, bpe_symbol=self.post_process)
