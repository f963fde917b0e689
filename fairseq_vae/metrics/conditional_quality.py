"""What conditional generation is scored by: several outputs per source against several
references per source (paraphrases of a caption, the targets a grammar allows for a source).

For S sources, ``outputs[s]`` are the N sentences generated for source s (one per z) and
``references[s]`` its R references; everything is tokenised text (``tokenize="none"``, as in
sample_quality: the corpus's own tokens are the unit), BLEU-4 on a 0-100 scale.

* ``multi_reference_bleu``: corpus BLEU of the first output of each source (the first z, or
  the only hypothesis) against all its references, sacrebleu's corpus_bleu;
* ``precision_recall_bleu``: Zhao et al. (2017, NeuralDialog-CVAE)'s pair: precision, the mean
  over all outputs of the best sentence BLEU against any one reference (are the outputs each
  like some reference?), and recall, the mean over all references of the best sentence BLEU of
  any one output against it (is every reference covered by some output?), both averaged over
  sources. Sentence BLEU is sacrebleu's sentence_bleu with one reference (its exponential
  smoothing): their code used NLTK's smoothing 7; the definition, not the smoothing, is theirs;
* ``mean_self_bleu``: sample_quality.self_bleu among each source's N outputs, averaged over
  sources (100 when every z gives the same sentence);
* ``source_bleu``: corpus BLEU of the first outputs against their sources (a copy scores 100).
"""

from typing import Dict, List, Optional, Sequence

import sacrebleu

from . import sample_quality as sq


def check_groups(outputs: Sequence[Sequence[str]], references: Sequence[Sequence[str]]):
    if not outputs:
        raise ValueError("no source to score: every group of outputs is missing")
    if len(outputs) != len(references):
        raise ValueError(f"{len(outputs)} sources of outputs but {len(references)} of references")
    for s, (outs, refs) in enumerate(zip(outputs, references)):
        if not outs or not refs:
            raise ValueError(f"source {s} has {len(outs)} outputs and {len(refs)} references")


def multi_reference_bleu(
    outputs: Sequence[Sequence[str]], references: Sequence[Sequence[str]]
) -> float:
    """Corpus BLEU of each source's first output against all of that source's references (a
    source with fewer references than others has its list padded with None, as sacrebleu
    takes a reference stream per position)."""
    check_groups(outputs, references)
    width = max(len(refs) for refs in references)
    streams = [[refs[k] if k < len(refs) else None for refs in references] for k in range(width)]
    first = [outs[0] for outs in outputs]
    return sacrebleu.corpus_bleu(first, streams, tokenize="none").score


def pair_bleu(hypothesis: str, reference: str) -> float:
    return sacrebleu.sentence_bleu(hypothesis, [reference], tokenize="none").score


def precision_recall_bleu(
    outputs: Sequence[Sequence[str]], references: Sequence[Sequence[str]]
) -> Dict[str, float]:
    """{"precision": .., "recall": ..}: NeuralDialog-CVAE's precision- and recall-BLEU."""
    check_groups(outputs, references)
    precision, recall = [], []
    for outs, refs in zip(outputs, references):
        table = [[pair_bleu(o, r) for r in refs] for o in outs]  # N x R
        precision.append(sum(max(row) for row in table) / len(outs))
        recall.append(sum(max(col) for col in zip(*table)) / len(refs))
    return {"precision": sum(precision) / len(precision), "recall": sum(recall) / len(recall)}


def mean_self_bleu(outputs: Sequence[Sequence[str]]) -> float:
    """Self-BLEU-4 among each source's outputs (at least 2 each), averaged over sources."""
    scores: List[float] = []
    for s, outs in enumerate(outputs):
        if len(outs) < 2:
            raise ValueError(f"source {s} has {len(outs)} output: self-BLEU needs at least 2")
        scores.append(sq.self_bleu(outs, max_sentences=max(2, len(outs))))
    return sum(scores) / len(scores)


def source_bleu(outputs: Sequence[Sequence[str]], sources: Sequence[str]) -> float:
    """Corpus BLEU of each source's first output against the source itself."""
    if len(outputs) != len(sources):
        raise ValueError(f"{len(outputs)} sources of outputs but {len(sources)} sources")
    first = [outs[0] for outs in outputs]
    return sacrebleu.corpus_bleu(first, [list(sources)], tokenize="none").score


def distinct(outputs: Sequence[Sequence[str]], n: int) -> Optional[float]:
    """Corpus-level distinct-n over every output of every source; None (undefined) when no
    output holds an n-gram (all shorter than n words)."""
    return sq.distinct_or_none([o for outs in outputs for o in outs], n)
