"""scripts/prepare_data.sh: sentencepiece mode, BART (GPT-2 BPE) mode, and its errors."""

import os
import subprocess
import sys

import pytest
from conftest import ROOT, random_sentences, tiny_gpt2_files
from fairseq.data import Dictionary, data_utils
from fairseq.data.encoders.gpt2_bpe_utils import get_encoder

SCRIPT = os.path.join(ROOT, "scripts", "prepare_data.sh")


def prepare(raw, name, out, *extra):
    env = dict(os.environ, PYTHON=sys.executable, DATA_BIN=str(out), WORKERS="1")
    return subprocess.run(
        ["bash", SCRIPT, str(raw), name, *extra],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )


def write_corpus(folder, sizes=(("train", 200), ("valid", 20), ("test", 20))):
    folder.mkdir(parents=True, exist_ok=True)
    for i, (split, n) in enumerate(sizes):
        (folder / f"{split}.txt").write_text("\n".join(random_sentences(n, seed=i)) + "\n")


def binarised_lines(dest, split):
    dictionary = Dictionary.load(str(dest / "dict.txt"))
    data = data_utils.load_indexed_dataset(str(dest / split), dictionary)
    return [dictionary.string(data[i]) for i in range(len(data))]


def test_sentencepiece_mode_round_trips(tmp_path):
    import sentencepiece

    write_corpus(tmp_path / "raw")
    result = prepare(tmp_path / "raw", "tiny", tmp_path / "bin", "--vocab-size", "60")
    assert result.returncode == 0, result.stderr
    dest = tmp_path / "bin" / "tiny"
    sp = sentencepiece.SentencePieceProcessor(model_file=str(dest / "spm.model"))
    original = (tmp_path / "raw" / "valid.txt").read_text().splitlines()
    decoded = [sp.decode(line.split()) for line in binarised_lines(dest, "valid")]
    assert decoded == original


def test_bart_mode_uses_local_gpt2_files_and_the_checkpoint_dict(tmp_path):
    write_corpus(tmp_path / "raw")
    bart = tiny_gpt2_files(tmp_path / "bart")
    result = prepare(tmp_path / "raw", "bart-data", tmp_path / "bin", "--bart", str(bart))
    assert result.returncode == 0, result.stderr
    dest = tmp_path / "bin" / "bart-data"
    assert (dest / "dict.txt").read_text() == (bart / "dict.txt").read_text()
    bpe = get_encoder(str(bart / "encoder.json"), str(bart / "vocab.bpe"))
    original = (tmp_path / "raw" / "test.txt").read_text().splitlines()
    lines = binarised_lines(dest, "test")
    assert [bpe.decode([int(t) for t in line.split()]) for line in lines] == original
    # the merges were applied: " cat" is the single symbol "Ġcat" (id 256 + 4)
    assert any(" cat" in line for line in original)
    assert any("260" in line.split() for line in lines)


@pytest.mark.parametrize(
    "break_it,message",
    [
        (lambda raw: (raw / "valid.txt").unlink(), "valid.txt"),
        (lambda raw: (raw / "test.txt").write_text("\n  \n"), "test.txt is empty"),
    ],
    ids=["missing-split", "empty-split"],
)
def test_bad_input_names_the_file(tmp_path, break_it, message):
    write_corpus(tmp_path / "raw")
    break_it(tmp_path / "raw")
    result = prepare(tmp_path / "raw", "bad", tmp_path / "bin")
    assert result.returncode != 0
    assert message in result.stderr
    assert not (tmp_path / "bin" / "bad").exists()


def test_a_carriage_return_inside_a_line_neither_splits_it_nor_passes_silently(tmp_path):
    """A lone "\\r" is not a line end anywhere: gpt2_encode keeps one output line per input line,
    and prepare_data.sh (check_text) stops, naming the file and line."""
    bart = tiny_gpt2_files(tmp_path / "bart")
    lines = ["the cat sat", "the cat\rran on the mat", "a dog sat"]
    source = tmp_path / "in.txt"
    source.write_bytes("".join(line + "\r\n" for line in lines).encode())  # a Windows file
    encoded = tmp_path / "out.bpe"
    result = subprocess.run(
        [
            sys.executable,
            os.path.join(ROOT, "scripts", "gpt2_encode.py"),
            "--encoder-json",
            str(bart / "encoder.json"),
            "--vocab-bpe",
            str(bart / "vocab.bpe"),
            "--inputs",
            str(source),
            "--outputs",
            str(encoded),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    bpe = get_encoder(str(bart / "encoder.json"), str(bart / "vocab.bpe"))
    rows = encoded.read_bytes().decode().split("\n")[:-1]
    assert [bpe.decode([int(t) for t in row.split()]) for row in rows] == lines

    write_corpus(tmp_path / "raw")
    valid = tmp_path / "raw" / "valid.txt"
    rows = valid.read_text().splitlines()
    rows[6] = rows[6].replace(" ", "\r", 1)
    valid.write_bytes(("\n".join(rows) + "\n").encode())
    result = prepare(tmp_path / "raw", "cr", tmp_path / "bin", "--bart", str(bart))
    assert result.returncode != 0
    assert f"{valid}: 1 line is split by a carriage return (\\r) inside the line (line 7)" in (
        result.stderr
    )
    assert not (tmp_path / "bin" / "cr").exists()


def write_pairs(folder, sizes=(("train", 200), ("valid", 20), ("test", 20))):
    folder.mkdir(parents=True, exist_ok=True)
    for i, (split, n) in enumerate(sizes):
        (folder / f"{split}.src").write_text("\n".join(random_sentences(n, seed=i)) + "\n")
        targets = random_sentences(n, seed=100 + i)
        (folder / f"{split}.tgt").write_text("\n".join(targets) + "\n")


def test_pairs_mode_writes_both_sides_with_one_dictionary_and_segmentation(tmp_path):
    import sentencepiece

    write_pairs(tmp_path / "raw")
    result = prepare(tmp_path / "raw", "pairs", tmp_path / "bin", "--pairs", "--vocab-size", "60")
    assert result.returncode == 0, result.stderr
    dest = tmp_path / "bin" / "pairs"
    assert (dest / "dict.src.txt").read_text() == (dest / "dict.tgt.txt").read_text()
    dictionary = Dictionary.load(str(dest / "dict.src.txt"))
    sp = sentencepiece.SentencePieceProcessor(model_file=str(dest / "spm.model"))
    for side in ("src", "tgt"):
        data = data_utils.load_indexed_dataset(str(dest / f"test.src-tgt.{side}"), dictionary)
        decoded = [sp.decode(dictionary.string(data[i]).split()) for i in range(len(data))]
        assert decoded == (tmp_path / "raw" / f"test.{side}").read_text().splitlines()


def test_pairs_mode_refuses_sides_of_different_lengths_naming_both(tmp_path):
    write_pairs(tmp_path / "raw")
    raw = tmp_path / "raw"
    (raw / "valid.tgt").write_text("\n".join(random_sentences(19, seed=5)) + "\n")
    result = prepare(raw, "pairs", tmp_path / "bin", "--pairs")
    assert result.returncode == 1
    assert result.stderr.strip() == (
        f"prepare_data.sh: error: {raw}/valid.src has 20 lines but {raw}/valid.tgt has 19: "
        "the sides pair line by line"
    )
    assert not (tmp_path / "bin" / "pairs").exists()


# --- scripts/make_caption_pairs.py: paraphrase pairs from several captions per image --------


def run_caption_pairs(data, out):
    script = os.path.join(ROOT, "scripts", "make_caption_pairs.py")
    cmd = [sys.executable, script, "--data", str(data), "--out", str(out)]
    return subprocess.run(cmd, capture_output=True, text=True)


def write_captions(folder, images=3, k=5):
    folder.mkdir(exist_ok=True)
    for split in ("train", "valid", "test"):
        for c in range(1, k + 1):
            lines = [f"{split} image {i} caption {c}" for i in range(images)]
            (folder / f"{split}.{c}.txt").write_text("".join(x + "\n" for x in lines))


def test_caption_pairs_are_every_ordered_pair_and_rotating_sources_with_their_references(
    tmp_path,
):
    data, out = tmp_path / "captions", tmp_path / "pairs"
    write_captions(data)
    # an image whose captions 2 and 4 are the same sentence: it counts once (4 * 3 pairs)
    (data / "train.4.txt").write_text(
        "train image 0 caption 2\n" + "".join(f"train image {i} caption 4\n" for i in (1, 2))
    )
    assert run_caption_pairs(data, out).returncode == 0
    src = (out / "train.src").read_text().splitlines()
    tgt = (out / "train.tgt").read_text().splitlines()
    pairs = list(zip(src, tgt))
    assert len(pairs) == 2 * 20 + 4 * 3 and len(set(pairs)) == len(pairs)
    assert all(a != b and a.split()[:3] == b.split()[:3] for a, b in pairs)  # same image
    src = (out / "test.src").read_text().splitlines()
    tgt = (out / "test.tgt").read_text().splitlines()
    refs = [line.split("\t") for line in (out / "test.refs").read_text().splitlines()]
    assert len(src) == len(tgt) == len(refs) == 3
    for i in range(3):  # image i: caption i + 1 is the source, the other four its references
        assert src[i] == f"test image {i} caption {i + 1}"
        expected = {f"test image {i} caption {c}" for c in range(1, 6) if c != i + 1}
        assert len(refs[i]) == 4 and set(refs[i]) == expected
        assert tgt[i] == refs[i][0]
    # the pretraining text: every distinct caption of a split once
    text = (out / "text" / "train.txt").read_text().splitlines()
    assert len(text) == 3 * 5 - 1 and len(set(text)) == len(text)


@pytest.mark.parametrize(
    "break_it, message",
    [
        (lambda d: (d / "valid.3.txt").write_text("a\n\nb\n"), "valid.3.txt:2: empty caption"),
        (lambda d: (d / "test.2.txt").write_text("a\n"), "the test files differ in line count"),
        (lambda d: [(d / f"train.{c}.txt").unlink() for c in range(2, 6)], "train.2.txt"),
    ],
)
def test_caption_pairs_refuse_bad_input_in_one_line(tmp_path, break_it, message):
    data = tmp_path / "captions"
    write_captions(data)
    break_it(data)
    result = run_caption_pairs(data, tmp_path / "pairs")
    assert result.returncode != 0
    assert message in result.stderr and "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
