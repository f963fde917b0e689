"""The measures of conditional generation (fairseq_vae.metrics.conditional_quality) against
sacrebleu called on hand-built cases, and against the cases whose answer is known."""

import pytest
import sacrebleu

from fairseq_vae.metrics import conditional_quality as cq

OUTPUTS = [["the cat sat on the mat", "a dog ran on the rug"], ["red rugs are big"]]
REFERENCES = [["the cat sat on a mat", "the dog ran on the rug today"], ["big red rugs"]]


def sentence(h, r):
    return sacrebleu.sentence_bleu(h, [r], tokenize="none").score


def test_multi_reference_bleu_scores_the_first_output_against_every_reference_of_its_source():
    expected = sacrebleu.corpus_bleu(
        ["the cat sat on the mat", "red rugs are big"],
        [["the cat sat on a mat", "big red rugs"], ["the dog ran on the rug today", None]],
        tokenize="none",
    ).score
    assert cq.multi_reference_bleu(OUTPUTS, REFERENCES) == pytest.approx(expected)
    # an output that is one of its references scores 100, whichever reference it is
    assert cq.multi_reference_bleu([["a b c d e"]], [["x y z", "a b c d e"]]) == pytest.approx(100)


def test_precision_is_the_best_reference_per_output_and_recall_the_best_output_per_reference():
    first = [[sentence(o, r) for r in REFERENCES[0]] for o in OUTPUTS[0]]
    second = sentence(OUTPUTS[1][0], REFERENCES[1][0])
    precision = (max(first[0]) + max(first[1])) / 2
    recall = (max(first[0][0], first[1][0]) + max(first[0][1], first[1][1])) / 2
    got = cq.precision_recall_bleu(OUTPUTS, REFERENCES)
    assert got["precision"] == pytest.approx((precision + second) / 2)
    assert got["recall"] == pytest.approx((recall + second) / 2)
    # one output that copies one of two references: precision 100, recall half covered
    one = cq.precision_recall_bleu([["a b c d e"]], [["a b c d e", "v w x y z"]])
    assert one["precision"] == pytest.approx(100)
    assert one["recall"] == pytest.approx((100 + sentence("a b c d e", "v w x y z")) / 2)


def test_self_bleu_is_100_when_every_latent_gives_the_same_sentence():
    assert cq.mean_self_bleu([["a b c d"] * 3, ["e f g h i"] * 2]) == pytest.approx(100)
    apart = cq.mean_self_bleu([["a b c d", "e f g h"], ["i j k l", "m n o p"]])
    assert apart < 5
    with pytest.raises(ValueError, match="source 1 has 1 output"):
        cq.mean_self_bleu([["a b", "c d"], ["e f"]])


def test_source_bleu_is_100_for_a_copy_and_the_groups_must_pair():
    assert cq.source_bleu([["a b c d"], ["e f g h"]], ["a b c d", "e f g h"]) == pytest.approx(100)
    assert cq.distinct([["a a", "a b"]], 1) == pytest.approx(2 / 4)
    assert cq.distinct([["a", "b"]], 2) is None  # no output holds a 2-gram: undefined
    with pytest.raises(ValueError, match="2 sources of outputs but 1 of references"):
        cq.multi_reference_bleu(OUTPUTS, REFERENCES[:1])
    with pytest.raises(ValueError, match="source 0 has 0 outputs"):
        cq.precision_recall_bleu([[]], [["a"]])
