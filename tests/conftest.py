"""Shared helpers: a tiny dictionary and tiny bart_vae models built through fairseq's options."""

import json
import os
import random
import subprocess
import sys

import pytest
import torch
from fairseq import options, tasks
from fairseq.data import Dictionary
from fairseq.data.encoders.gpt2_bpe_utils import bytes_to_unicode

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
USER_DIR = os.path.join(ROOT, "fairseq_vae")
BIN = os.path.dirname(sys.executable)  # fairseq's console scripts sit beside the interpreter

WORDS = "the a cat dog sat ran on under mat rug red big small quickly slowly".split()

TINY_ARCH = [
    "--arch",
    "bart_vae_small",
    "--encoder-embed-dim",
    "16",
    "--decoder-embed-dim",
    "16",
    "--encoder-ffn-embed-dim",
    "32",
    "--decoder-ffn-embed-dim",
    "32",
    "--encoder-layers",
    "1",
    "--decoder-layers",
    "1",
    "--encoder-attention-heads",
    "2",
    "--decoder-attention-heads",
    "2",
    "--latent-dim",
    "8",
    "--dropout",
    "0",
    "--attention-dropout",
    "0",
]


def random_sentences(n, seed=0, min_len=3, max_len=9):
    rng = random.Random(seed)
    return [
        " ".join(rng.choice(WORDS) for _ in range(rng.randint(min_len, max_len))) for _ in range(n)
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
        [
            data_dir,
            "--user-dir",
            USER_DIR,
            "--task",
            "text_vae",
            "--criterion",
            "elbo",
            "--max-update",
            "100",
            *TINY_ARCH,
            *extra,
        ],
    )
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


def autoencoder_sample(dictionary, lines):
    """A text_vae training batch of ``lines``: each sentence is its own target, and the
    decoder input is the target shifted right behind </s> (fairseq's prev_output_tokens)."""
    src, lengths = encode_lines(dictionary, lines)
    prev = torch.roll(src.masked_fill(src.eq(dictionary.eos()), dictionary.pad()), 1, dims=1)
    prev[:, 0] = dictionary.eos()
    return {
        "net_input": {"src_tokens": src, "src_lengths": lengths, "prev_output_tokens": prev},
        "target": src,
        "ntokens": int(src.ne(dictionary.pad()).sum()),
    }


def run_tool(tool, *args, cwd=None, input=None, check=True):
    """Runs one of fairseq's console scripts; returns stdout + stderr."""
    result = subprocess.run(
        [os.path.join(BIN, tool), *map(str, args)],
        capture_output=True,
        text=True,
        cwd=cwd,
        input=input,
        timeout=900,
    )
    if check:
        assert result.returncode == 0, f"{tool} failed:\n{result.stdout}\n{result.stderr}"
    return result.stdout + result.stderr


@pytest.fixture(scope="session")
def data_bin(tmp_path_factory):
    """A binarised word-level corpus of random sentences: train, valid and test."""
    raw = tmp_path_factory.mktemp("raw")
    for split, n, seed in (("train", 400, 0), ("valid", 40, 1), ("test", 30, 2)):
        (raw / f"{split}.txt").write_text("\n".join(random_sentences(n, seed)) + "\n")
    dest = tmp_path_factory.mktemp("data-bin")
    run_tool(
        "fairseq-preprocess",
        "--only-source",
        "--trainpref",
        raw / "train.txt",
        "--validpref",
        raw / "valid.txt",
        "--testpref",
        raw / "test.txt",
        "--destdir",
        dest,
        "--workers",
        "1",
    )
    return str(dest)


def train_args(data, save_dir, *extra):
    """fairseq-train's arguments for a tiny bart_vae on ``data``."""
    return [
        data,
        "--user-dir",
        USER_DIR,
        "--task",
        "text_vae",
        "--criterion",
        "elbo",
        *TINY_ARCH,
        "--optimizer",
        "adam",
        "--lr",
        "3e-3",
        "--max-tokens",
        "400",
        "--save-dir",
        save_dir,
        "--no-epoch-checkpoints",
        "--seed",
        "3",
        "--required-batch-size-multiple",
        "1",
        "--num-workers",
        "0",
        "--cpu",
        # fairseq's prefetch thread, left running when training stops mid-epoch, can abort the
        # process at exit ("terminate called without an active exception") after a good run
        "--data-buffer-size",
        "0",
        *extra,
    ]


@pytest.fixture(scope="session")
def tiny_checkpoint(data_bin, tmp_path_factory):
    """A tiny bart_vae trained for 60 updates: enough to decode word sequences."""
    save_dir = tmp_path_factory.mktemp("tiny-ckpt")
    run_tool(
        "fairseq-train",
        *train_args(
            data_bin,
            save_dir,
            "--max-update",
            "60",
            "--kl-schedule",
            "constant",
            "--kl-beta-max",
            "0.2",
        ),
    )
    return str(save_dir / "checkpoint_last.pt")


def tiny_gpt2_files(folder):
    """A byte-level BPE with a few merges, in GPT-2's file formats, and a BART-style dict."""
    folder.mkdir()
    byte_symbols = list(bytes_to_unicode().values())
    merges = [("t", "h"), ("th", "e"), ("Ġ", "c"), ("Ġc", "a"), ("Ġca", "t")]
    vocab = byte_symbols + ["".join(m) for m in merges]
    (folder / "encoder.json").write_text(json.dumps({s: i for i, s in enumerate(vocab)}))
    (folder / "vocab.bpe").write_text("#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in merges))
    # BART's dict.txt lists GPT-2 ids (as words) with counts
    (folder / "dict.txt").write_text("".join(f"{i} {1000 - i}\n" for i in range(len(vocab))))
    return folder


@pytest.fixture(scope="module")
def one_thread():
    """Torch on one thread for a module's in-process work: on the two shared cores two threads
    fighting for one core are about ten times slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
