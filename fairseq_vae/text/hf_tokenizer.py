"""The tokenizer side of ``fairseq-vae-import-hf``: a Hugging Face BART tokenizer as the GPT-2
BPE files and dictionary fairseq reads (``encoder.json``, ``vocab.bpe``, ``dict.txt``), laid out
so that fairseq's dictionary index of every token is its Hugging Face id."""

import json
import os
from typing import Dict, List, Tuple

from fairseq.data import Dictionary

MASK = "<mask>"


class HFImportError(ValueError):
    """A folder that cannot be imported; the message names the file, field or tensor."""


def read_json(folder: str, name: str) -> dict:
    path = os.path.join(folder, name)
    if not os.path.isfile(path):
        raise HFImportError(f"missing {path}")
    with open(path, encoding="utf-8") as f:
        try:
            return json.load(f)
        except json.JSONDecodeError as error:
            raise HFImportError(f"{path} is not valid JSON: {error}") from None


def mask_id(vocab: Dict[str, int], vocab_size: int, source: str) -> int:
    """The id of <mask>, after checking that the tokenizer lays out its special tokens as
    fairseq's BART does: <s> <pad> </s> <unk> first, <mask> last. <mask> is either the last
    embedding row (bart-base, bart-large) or one past it (fine-tunes whose fairseq training
    dropped that row, such as bart-large-cnn: its config's vocab_size is one smaller)."""
    for index, symbol in enumerate(Dictionary().symbols):  # <s> <pad> </s> <unk>
        if vocab.get(symbol) != index:
            raise HFImportError(
                f"{source}: {symbol} has id {vocab.get(symbol)}, fairseq's dictionary needs {index}"
            )
    mask = vocab.get(MASK)
    if mask not in (vocab_size - 1, vocab_size):
        raise HFImportError(
            f"{source}: {MASK} has id {mask}; fairseq's BART needs it last ({vocab_size - 1}, "
            "the config's vocab_size - 1, or vocab_size when the model has no row for it)"
        )
    too_big = [token for token, index in vocab.items() if index >= vocab_size and token != MASK]
    if too_big:
        raise HFImportError(f"{source}: {too_big[0]!r} has an id beyond vocab_size {vocab_size}")
    return mask


def read_merges(path: str) -> List[str]:
    """The merges of a Hugging Face merges.txt ("a b" per line, an optional #version header)."""
    if not os.path.isfile(path):
        raise HFImportError(f"missing {path}")
    with open(path, encoding="utf-8") as f:
        lines = [line.rstrip("\n") for line in f]
    merges = [line for line in lines if line and not line.startswith("#version")]
    for number, line in enumerate(lines, 1):
        if line and not line.startswith("#version") and len(line.split(" ")) != 2:
            raise HFImportError(f"{path}:{number}: a merge must be two symbols, got {line!r}")
    return merges


def read_tokenizer_json(path: str) -> Tuple[Dict[str, int], List[str]]:
    """(vocabulary with the added tokens, merges) of a tokenizers tokenizer.json, refusing
    what fairseq's GPT-2 BPE would not reproduce."""
    with open(path, encoding="utf-8") as f:
        try:
            tokenizer = json.load(f)
        except json.JSONDecodeError as error:
            raise HFImportError(f"{path} is not valid JSON: {error}") from None
    model = tokenizer.get("model") or {}
    pre = tokenizer.get("pre_tokenizer") or {}
    # GPT-2's byte-level BPE: byte-level pre-tokenisation with GPT-2's regex, no prefix
    # space, no normaliser, plain merges (fairseq's gpt2_bpe_utils does exactly that)
    needed = [
        ("model.type", model.get("type"), "BPE"),
        ("model.dropout", model.get("dropout"), None),
        ("model.continuing_subword_prefix", model.get("continuing_subword_prefix") or "", ""),
        ("model.end_of_word_suffix", model.get("end_of_word_suffix") or "", ""),
        ("normalizer", tokenizer.get("normalizer"), None),
        ("pre_tokenizer.type", pre.get("type"), "ByteLevel"),
        ("pre_tokenizer.add_prefix_space", pre.get("add_prefix_space"), False),
        ("pre_tokenizer.use_regex", pre.get("use_regex", True), True),
    ]
    for name, value, wanted in needed:
        if value != wanted:
            raise HFImportError(
                f"{path}: {name} is {json.dumps(value)}; fairseq's GPT-2 BPE needs "
                f"{json.dumps(wanted)}"
            )
    vocab = dict(model.get("vocab") or {})
    vocab.update({token["content"]: token["id"] for token in tokenizer.get("added_tokens", [])})
    merges = [m if isinstance(m, str) else " ".join(m) for m in model.get("merges", [])]
    return vocab, merges


def read_tokenizer(folder: str) -> Tuple[Dict[str, int], List[str], str]:
    """(vocabulary, merges, the file they came from). tokenizer.json first, as transformers'
    tokenizers read it first; else vocab.json and merges.txt."""
    path = os.path.join(folder, "tokenizer.json")
    if os.path.isfile(path):
        return (*read_tokenizer_json(path), path)
    for name in ("vocab.json", "merges.txt"):
        if not os.path.isfile(os.path.join(folder, name)):
            raise HFImportError(f"missing {os.path.join(folder, name)} (and no tokenizer.json)")
    merges = read_merges(os.path.join(folder, "merges.txt"))
    return read_json(folder, "vocab.json"), merges, os.path.join(folder, "vocab.json")


def gpt2_bpe_files(vocab: Dict[str, int], merges: List[str], mask_id: int):
    """(encoder.json's mapping, vocab.bpe's text, dict.txt's text) so that fairseq's GPT-2 BPE
    and dictionary give each token its Hugging Face id."""
    n_special = len(Dictionary().symbols)
    # the special tokens are left out: fairseq's BPE must never produce them from text
    encoder = {token: i for token, i in vocab.items() if n_special <= i < mask_id}
    # fairseq's get_encoder skips the first line (GPT-2's "#version" header) and the last
    # (empty after the final newline)
    vocab_bpe = "#version: 0.2\n" + "".join(merge + "\n" for merge in merges)
    # one line per id, also for ids no token maps to, so that the indices stay aligned
    dict_txt = "".join(f"{i} 1\n" for i in range(n_special, mask_id))
    return encoder, vocab_bpe, dict_txt
