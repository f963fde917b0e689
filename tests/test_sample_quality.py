"""fairseq_vae.metrics.sample_quality: distinct-n, memorisation and total variation against hand
counts,
self-BLEU against sacrebleu called sentence by sentence, and the language-model perplexity of a
tiny transformer_lm against a token-by-token loop and against fairseq-eval-lm."""

import math
import os
import random
import re

import pytest
import sacrebleu
import torch
from conftest import ROOT, USER_DIR, build_tiny, random_sentences, run_tool
from fairseq.data import Dictionary, data_utils
from test_prepare_data import prepare, write_corpus
from vae_fixtures import save_checkpoint

from fairseq_vae.metrics.sample_quality import (
    distinct_n,
    encode_sentences,
    factor_tv,
    lm_perplexity,
    lm_perplexity_of_rows,
    load_lm,
    memorised,
    self_bleu,
    sentence_log_probs,
    total_variation,
)
from fairseq_vae.text.subword import build_bpe, corpus_bpe_options

SYNTH_BIN = os.path.join(ROOT, "data-bin", "synth")
SYNTH_TEXT = os.path.join(ROOT, "corpus", "synth")


# ----------------------------------------------------------------------------------------------
# distinct-n, memorisation, total variation: hand counts


def test_distinct_n_is_corpus_level():
    # unigrams a a a a b: 2 distinct of 5 (a mean of per-sentence ratios would be 0.625)
    assert distinct_n(["a a a a", "b"], 1) == pytest.approx(2 / 5)
    # bigrams (a b) (b a) (a b): 2 distinct of 3; trigrams (a b a): 1 of 1
    assert distinct_n(["a b a", "a b"], 2) == pytest.approx(2 / 3)
    assert distinct_n(["a b a", "a b"], 3) == 1.0
    # whitespace is the tokeniser: "." and "<unk>" are tokens, runs of spaces are not
    assert distinct_n(["x  .", "<unk> ."], 1) == pytest.approx(3 / 4)


def test_distinct_n_does_not_cross_sentences():
    # joined, "a" "a" would make the bigram (a a)
    with pytest.raises(ValueError, match="no 2-gram"):
        distinct_n(["a", "a"], 2)
    with pytest.raises(ValueError, match="n must be"):
        distinct_n(["a"], 0)


def test_memorised_counts_exact_copies_after_whitespace():
    train = ["the cat sat .", "a  dog ran . "]
    samples = ["the cat sat .", "  the  cat sat . ", "The cat sat .", "the cat sat", "a dog ran ."]
    assert memorised(samples, train) == pytest.approx(3 / 5)
    with pytest.raises(ValueError, match="no samples"):
        memorised([], train)


def test_total_variation_by_hand():
    # p = (1/2, 1/2, 0), q = (3/4, 0, 1/4) over a, b, c: (1/4 + 1/2 + 1/4) / 2
    assert total_variation({"a": 1, "b": 1}, {"a": 3, "c": 1}) == pytest.approx(0.5)
    assert total_variation({"a": 2, "b": 6}, {"a": 1, "b": 3}) == pytest.approx(0.0)
    assert total_variation({"a": 5}, {"b": 2}) == pytest.approx(1.0)
    # (0.2, 0.8) against (0.5, 0.5)
    assert total_variation({"x": 1, "y": 4}, {"x": 10, "y": 10}) == pytest.approx(0.3)
    assert factor_tv(
        {"tense": {"past": 1, "future": 1}, "number": {"singular": 2}},
        {"tense": {"past": 3, "future": 1}, "number": {"singular": 7, "plural": 0}},
    ) == pytest.approx({"tense": 0.25, "number": 0.0})
    with pytest.raises(ValueError, match="q_counts sums to 0"):
        total_variation({"a": 1}, {"a": 0})
    with pytest.raises(ValueError, match="p_counts has a negative count"):
        total_variation({"a": -1, "b": 2}, {"a": 1})


# ----------------------------------------------------------------------------------------------
# self-BLEU against sacrebleu


def sacrebleu_self_bleu(sentences):
    """The definition: sentence BLEU of each against all the others, averaged."""
    scores = [
        sacrebleu.sentence_bleu(s, sentences[:i] + sentences[i + 1 :], tokenize="none").score
        for i, s in enumerate(sentences)
    ]
    return sum(scores) / len(scores)


def test_self_bleu_of_identical_sentences_is_100():
    assert self_bleu(["the cat sat on the mat ."] * 5) == pytest.approx(100.0)


def test_self_bleu_by_hand():
    # each against the other: 1- to 4-gram precisions 4/5, 3/4, 2/3, 1/2, same length
    assert self_bleu(["a b c d e", "a b c d f"]) == pytest.approx(100 * 0.2**0.25)
    # two exact copies score 100, the third shares nothing: (100 + 100 + 0) / 3
    assert self_bleu(["a b c d", "a b c d", "e f g h"]) == pytest.approx(200 / 3)
    assert sacrebleu_self_bleu(["a b c d e", "a b c d f"]) == pytest.approx(100 * 0.2**0.25)
    # "a b": the other sentences' length 4 gives a brevity penalty exp(1 - 4/2), effective
    # order 2 (no 3-grams); the two copies score 100
    assert self_bleu(["a b", "a b c d", "a b c d"]) == pytest.approx((100 * math.exp(-1) + 200) / 3)
    # "a b c": others of length 2 and 4 tie, the shorter wins (no penalty), all n-grams match;
    # "a b": closest other length 3, penalty exp(1 - 3/2); "a b c d": precisions 3/4, 2/3,
    # 1/2 and, no 4-gram matching, exponential smoothing's 1/(2 * 1)
    expected = (100 + 100 * math.exp(-0.5) + 100 * (3 / 4 * 2 / 3 * 1 / 2 * 1 / 2) ** 0.25) / 3
    assert self_bleu(["a b c", "a b", "a b c d"]) == pytest.approx(expected)


def test_self_bleu_matches_sacrebleu_sentence_by_sentence():
    # short sentences (effective order), repeated n-grams (clipping by the largest count in
    # one reference, the hypothesis as the only holder of its largest count), ties between
    # reference lengths, an empty line, and tokens that sacrebleu's 13a would split
    tricky = [
        "a a a b",
        "a a b",
        "a b",
        "a",
        "",
        "b a a a a",
        "the <unk> did n't go .",
        "the <unk> did go .",
        "c d e f g",
        "c d e f h i",
    ]
    assert self_bleu(tricky) == pytest.approx(sacrebleu_self_bleu(tricky), abs=1e-9)
    many = random_sentences(80, seed=5, min_len=1, max_len=12)
    assert self_bleu(many) == pytest.approx(sacrebleu_self_bleu(many), abs=1e-9)


def test_self_bleu_scores_a_seeded_subset():
    many = random_sentences(60, seed=6)
    chosen = sorted(random.Random(4).sample(range(60), 15))
    subset = [many[i] for i in chosen]
    assert self_bleu(many, max_sentences=15, seed=4) == pytest.approx(
        sacrebleu_self_bleu(subset), abs=1e-9
    )
    with pytest.raises(ValueError, match="at least 2 sentences"):
        self_bleu(["a b"])


# ----------------------------------------------------------------------------------------------
# The language model: a tiny transformer_lm on a tiny sentencepiece corpus, whose words are
# split into several tokens, so that per word and per token differ

LM_ARCH = [
    "--arch",
    "transformer_lm",
    "--decoder-embed-dim",
    "16",
    "--decoder-ffn-embed-dim",
    "32",
    "--decoder-input-dim",
    "16",
    "--decoder-output-dim",
    "16",
    "--decoder-layers",
    "1",
    "--decoder-attention-heads",
    "2",
    "--decoder-learned-pos",
    "--no-scale-embedding",
    "--share-decoder-input-output-embed",
]


@pytest.fixture(scope="module")
def spm_data(tmp_path_factory):
    """(raw folder, data-bin folder): random sentences through scripts/prepare_data.sh with a
    60-piece sentencepiece model."""
    folder = tmp_path_factory.mktemp("spm")
    write_corpus(folder / "raw", (("train", 400), ("valid", 40), ("test", 30)))
    result = prepare(folder / "raw", "tiny", folder / "bin", "--vocab-size", "60")
    assert result.returncode == 0, result.stderr
    return str(folder / "raw"), str(folder / "bin" / "tiny")


@pytest.fixture(scope="module")
def tiny_lm(spm_data, tmp_path_factory):
    """A transformer_lm trained for 30 updates as benchmarks/ptb.py trains its reference LM
    (--sample-break-mode eos); the checkpoint's path."""
    save_dir = tmp_path_factory.mktemp("lm")
    run_tool(
        "fairseq-train",
        spm_data[1],
        "--user-dir",
        USER_DIR,
        "--task",
        "language_modeling",
        "--criterion",
        "cross_entropy",
        "--sample-break-mode",
        "eos",
        "--tokens-per-sample",
        "128",
        *LM_ARCH,
        "--dropout",
        "0",
        "--optimizer",
        "adam",
        "--lr",
        "1e-2",
        "--max-tokens",
        "512",
        "--max-update",
        "30",
        "--save-dir",
        save_dir,
        "--no-epoch-checkpoints",
        "--disable-validation",
        "--seed",
        "1",
        "--required-batch-size-multiple",
        "1",
        "--num-workers",
        "0",
        "--cpu",
        "--data-buffer-size",
        "0",
    )
    return str(save_dir / "checkpoint_last.pt")


def split_of(raw, data, split):
    """A split's raw sentences and its binarised rows (fairseq-preprocess's), and the
    dictionary and subword model of the data folder."""
    dictionary = Dictionary.load(os.path.join(data, "dict.txt"))
    dataset = data_utils.load_indexed_dataset(os.path.join(data, split), dictionary)
    rows = [dataset[i].long() for i in range(len(dataset))]
    with open(os.path.join(raw, f"{split}.txt"), encoding="utf-8") as f:
        sentences = f.read().splitlines()
    assert len(rows) == len(sentences)
    return sentences, rows, dictionary, build_bpe(corpus_bpe_options(data))


def loop_log_prob(model, row, eos):
    """log p(row) from the model's forward pass, one prefix at a time, in float64."""
    total = 0.0
    with torch.no_grad():
        for t in range(row.numel()):
            prefix = torch.cat([torch.tensor([eos]), row[:t]]).unsqueeze(0)
            logits = model(prefix)[0][0, -1].double()
            total += float(torch.log_softmax(logits, dim=-1)[row[t]])
    return total


@pytest.mark.parametrize("corpus", ["shipped", "tiny"])
def test_raw_text_encodes_as_the_binarised_corpus(corpus, spm_data):
    raw, data = (SYNTH_TEXT, SYNTH_BIN) if corpus == "shipped" else spm_data
    sentences, rows, dictionary, bpe = split_of(raw, data, "test")
    encoded = encode_sentences(sentences, dictionary, bpe)
    assert all(torch.equal(a, b) for a, b in zip(encoded, rows))


def test_lm_perplexity_against_a_token_by_token_loop(tiny_lm, spm_data):
    sentences, rows, dictionary, bpe = split_of(*spm_data, "test")
    model, _ = load_lm(tiny_lm, data=spm_data[1], dictionary=dictionary)
    expected = [loop_log_prob(model, r, dictionary.eos()) for r in rows]
    # batches of a few sentences, in an order that is not the length order
    got = sentence_log_probs(model, rows, max_tokens=60)
    assert got == pytest.approx(expected, rel=1e-5)
    # per word: whitespace words + 1 per sentence, not the sentencepiece tokens
    words = sum(len(s.split()) + 1 for s in sentences)
    assert words < sum(r.numel() for r in rows)
    assert lm_perplexity(model, sentences, dictionary, bpe) == pytest.approx(
        math.exp(-sum(expected) / words), rel=1e-5
    )
    assert lm_perplexity_of_rows(model, rows, words) == pytest.approx(
        math.exp(-sum(expected) / words), rel=1e-5
    )


def test_lm_perplexity_against_fairseq_eval_lm(tiny_lm, spm_data):
    sentences, rows, dictionary, bpe = split_of(*spm_data, "test")
    out = run_tool(
        "fairseq-eval-lm",
        spm_data[1],
        "--user-dir",
        USER_DIR,
        "--path",
        tiny_lm,
        "--gen-subset",
        "test",
        "--sample-break-mode",
        "eos",
        "--tokens-per-sample",
        "128",
        "--max-tokens",
        "4096",
        "--cpu",
    )
    tokens = int(re.findall(r"Evaluated ([0-9,]+) tokens", out)[-1].replace(",", ""))
    base2 = float(re.findall(r"Loss \(base 2\): ([0-9.]+)", out)[-1])
    assert tokens == sum(r.numel() for r in rows)
    model, _ = load_lm(tiny_lm, data=spm_data[1], dictionary=dictionary)
    words = sum(len(s.split()) + 1 for s in sentences)
    # eval-lm's loss is per token and printed to 4 decimals
    expected = math.exp(base2 * math.log(2) * tokens / words)
    assert lm_perplexity(model, sentences, dictionary, bpe) == pytest.approx(expected, rel=1e-3)


def test_load_lm_refuses_another_dictionary_and_a_vae(tiny_lm, spm_data, dict_dir, tmp_path):
    other = Dictionary.load(os.path.join(spm_data[1], "dict.txt"))
    other.add_symbol("zebra")
    with pytest.raises(ValueError, match=r"--lm-path .*checkpoint_last.pt: its dictionary"):
        load_lm(tiny_lm, data=spm_data[1], dictionary=other)
    _, vae, args = build_tiny(dict_dir)
    save_checkpoint(tmp_path / "vae.pt", vae, args)
    with pytest.raises(ValueError, match=r"vae.pt: a BARTVAEModel, not a fairseq language model"):
        load_lm(str(tmp_path / "vae.pt"), data=dict_dir)
    with pytest.raises(ValueError, match="--lm-path .*missing.pt: no such file"):
        load_lm(str(tmp_path / "missing.pt"), data=dict_dir)


def test_sentence_log_probs_refuses_rows_without_eos(tiny_lm, spm_data):
    _, rows, _, _ = split_of(*spm_data, "test")
    model, _ = load_lm(tiny_lm, data=spm_data[1])
    with pytest.raises(ValueError, match="row 1 does not end in </s>"):
        sentence_log_probs(model, [rows[0], rows[1][:-1]])


def test_sentence_log_probs_truncates_rows_over_the_lm_positions(tiny_lm, spm_data, caplog):
    _, rows, dictionary, _ = split_of(*spm_data, "test")
    model, _ = load_lm(tiny_lm, data=spm_data[1], dictionary=dictionary)
    limit = model.max_positions()
    # a sample as long as a large --max-len-b: sentences run together, one </s> at the end
    long = torch.cat([r[:-1] for r in rows] + [rows[0][-1:]])
    at_limit = long[-limit:]
    assert long.numel() > limit and at_limit.numel() == limit
    with caplog.at_level("WARNING", logger="fairseq_vae.metrics.sample_quality"):
        got = sentence_log_probs(model, [rows[0], long, at_limit])
    eos = dictionary.eos()
    expected = [loop_log_prob(model, r, eos) for r in (rows[0], long[:limit], at_limit)]
    assert got == pytest.approx(expected, rel=1e-5)
    warning = f"1 of 3 sentences are longer than the language model's {limit} positions"
    assert [r.message for r in caplog.records if warning in r.message], caplog.text
    assert f"the longest {long.numel()} tokens" in caplog.text
