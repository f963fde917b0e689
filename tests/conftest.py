"""Shared helpers: a tiny dictionary and tiny bart_vae models built through fairseq's options."""

import os
import random
import sys

import pytest
import torch
from fairseq import options, tasks
from fairseq.data import Dictionary

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
USER_DIR = os.path.join(ROOT, "fairseq_vae")
BIN = os.path.dirname(sys.executable)  # fairseq's console scripts sit beside the interpreter

WORDS = "the a cat dog sat ran on under mat rug red big small quickly slowly".split()

TINY_ARCH = [
    "--arch", "bart_vae_small",
    "--encoder-embed-dim", "16", "--decoder-embed-dim", "16",
    "--encoder-ffn-embed-dim", "32", "--decoder-ffn-embed-dim", "32",
    "--encoder-layers", "1", "--decoder-layers", "1",
    "--encoder-attention-heads", "2", "--decoder-attention-heads", "2",
    "--latent-dim", "8", "--dropout", "0", "--attention-dropout", "0",
]  # fmt: skip


def random_sentences(n, seed=0, min_len=3, max_len=9):
    rng = random.Random(seed)
    return [
        " ".join(rng.choice(WORDS) for _ in range(rng.randint(min_len, max_len)))
        for _ in range(n)
    ]


@pytest.fixture(scope="session")
def dict_dir(tmp_path_factory):
    """A folder holding only a dict.txt over WORDS, enough to build a task and a model."""
    folder = tmp_path_factory.mktemp("dict")
    dictionary = Dictionary()
    for word in WORDS:
        dictionary.add_symbol(word)
    dictionary.save(str(folder / "dict.txt"))
    return str(folder)


def build_tiny(data_dir, *extra):
    """(task, model, args) for a tiny bart_vae in eval mode, parsed as fairseq-train would."""
    parser = options.get_training_parser()
    args = options.parse_args_and_arch(
        parser,
        [data_dir, "--user-dir", USER_DIR, "--task", "text_vae", "--criterion", "elbo",
         "--max-update", "100", *TINY_ARCH, *extra],
    )  # fmt: skip
    task = tasks.setup_task(args)
    torch.manual_seed(0)
    model = task.build_model(args)
    model.eval()
    return task, model, args


def encode_lines(dictionary, lines):
    """Right-padded B x T token batch (eos-terminated) and lengths."""
    rows = [dictionary.encode_line(line, add_if_not_exist=False).long() for line in lines]
    lengths = torch.tensor([len(r) for r in rows])
    tokens = torch.full((len(rows), int(lengths.max())), dictionary.pad(), dtype=torch.long)
    for i, row in enumerate(rows):
        tokens[i, : len(row)] = row
    return tokens, lengths
