"""Sample-quality measures for sentences drawn from a model: diversity, memorisation, fluency
under a reference language model, and the distance between two categorical distributions.

Sentences are strings of whitespace-separated tokens (the corpora are already tokenised: PTB and
the shipped corpus word-level, punctuation split off), and every text measure here counts those
tokens, with no further tokenisation:

* ``distinct_n``: corpus-level distinct-n, the number of distinct n-grams over the number of all
  n-grams, pooled over every sentence (n-grams never cross a sentence boundary);
* ``self_bleu``: self-BLEU-4, each sentence scored against all the others (Zhu et al. 2018);
* ``memorised``: the share of samples that are exact copies of a training sentence;
* ``lm_perplexity``: per-word perplexity under a fairseq language model (``transformer_lm``)
  on the corpus's dictionary, words counted as ``fairseq-vae-eval`` counts them;
* ``total_variation``: TV distance between two distributions given as counts.
"""

import logging
import os
import random
from collections import Counter
from typing import Dict, Hashable, List, Mapping, Optional, Sequence, Tuple

import torch
from sacrebleu.metrics.bleu import BLEU
from torch import Tensor

from fairseq_vae.metrics.eval_report import perplexity

logger = logging.getLogger("fairseq_vae.metrics.sample_quality")

SELF_BLEU_SENTENCES = 1000
BLEU_ORDER = 4


def _ngrams(tokens: Sequence[str], n: int) -> List[Tuple[str, ...]]:
    return [tuple(tokens[i : i + n]) for i in range(len(tokens) - n + 1)]


# ----------------------------------------------------------------------------------------------
# Diversity and memorisation


def distinct_n(sentences: Sequence[str], n: int) -> float:
    """Corpus-level distinct-n: distinct n-grams / all n-grams, both counted over all sentences
    together (not a mean of per-sentence ratios). A sentence shorter than n tokens adds none."""
    if n < 1:
        raise ValueError(f"distinct_n: n must be at least 1, got {n}")
    grams = [g for s in sentences for g in _ngrams(s.split(), n)]
    if not grams:
        raise ValueError(f"distinct_n: the {len(sentences)} sentences hold no {n}-gram")
    return len(set(grams)) / len(grams)


def distinct_or_none(sentences: Sequence[str], n: int) -> Optional[float]:
    """distinct-n, None (undefined) when no sentence has n tokens: short samples (a small
    --max-len-b) or a short split are reported, not an error after the whole IW pass."""
    if not any(len(s.split()) >= n for s in sentences):
        return None
    return distinct_n(sentences, n)


def self_bleu(
    sentences: Sequence[str], max_sentences: int = SELF_BLEU_SENTENCES, seed: int = 0
) -> float:
    """Self-BLEU-4 (0-100): the mean over sentences of sacrebleu's sentence BLEU of each one
    against all the others as its references.

    Exactly ``sacrebleu.sentence_bleu(s_i, [s_j for j != i], tokenize="none")`` averaged over i:
    BLEU-4 with sacrebleu's sentence-level defaults (exponential smoothing, effective order,
    case kept), multi-reference clipping (an n-gram's count is clipped to its largest count in
    any one reference), the closest reference length for the brevity penalty (the shorter on a
    tie). ``tokenize="none"`` because the sentences are already tokenised: sacrebleu's 13a would
    split PTB's "<unk>" or "n't" again and score other units than distinct-n counts.

    With more than ``max_sentences`` sentences, a random subset of that many (seeded) is scored,
    each against the others of the subset. The statistics are computed once for all sentences
    (for each n-gram its two largest counts, for the lengths their multiset), which gives
    sacrebleu's numbers in linear rather than quadratic time.
    """
    if max_sentences < 2:
        raise ValueError(f"self_bleu: max_sentences must be at least 2, got {max_sentences}")
    sentences = list(sentences)
    if len(sentences) < 2:
        raise ValueError(f"self_bleu: needs at least 2 sentences, got {len(sentences)}")
    if len(sentences) > max_sentences:
        chosen = sorted(random.Random(seed).sample(range(len(sentences)), max_sentences))
        sentences = [sentences[i] for i in chosen]

    counts = []  # per sentence: Counter of its 1..4-grams
    lengths = Counter()
    # n-gram -> [largest count, how many sentences have it, second largest count]
    top = {}
    for s in sentences:
        tokens = s.split()
        lengths[len(tokens)] += 1
        c = Counter(g for n in range(1, BLEU_ORDER + 1) for g in _ngrams(tokens, n))
        counts.append(c)
        for g, k in c.items():
            t = top.setdefault(g, [0, 0, 0])
            if k > t[0]:
                t[0], t[1], t[2] = k, 1, t[0]
            elif k == t[0]:
                t[1] += 1
            elif k > t[2]:
                t[2] = k

    total_score = 0.0
    for c in counts:
        hyp_len = sum(k for g, k in c.items() if len(g) == 1)
        correct = [0] * BLEU_ORDER
        total = [0] * BLEU_ORDER
        for g, k in c.items():
            largest, holders, second = top[g]
            # the largest count among the OTHER sentences
            other = largest if (k < largest or holders > 1) else second
            total[len(g) - 1] += k
            correct[len(g) - 1] += min(k, other)
        ref_len = _closest_other_length(hyp_len, lengths)
        score = BLEU.compute_bleu(
            correct, total, hyp_len, ref_len, smooth_method="exp", effective_order=True
        )
        total_score += score.score
    return total_score / len(counts)


def _closest_other_length(hyp_len: int, lengths: Counter) -> int:
    """sacrebleu's closest reference length, among the lengths without one copy of hyp_len."""
    best = None
    for length, k in lengths.items():
        if length == hyp_len and k == 1:
            continue
        key = (abs(length - hyp_len), length)  # ties go to the shorter, as in sacrebleu
        if best is None or key < best:
            best = key
    return best[1]


def normalise(sentence: str) -> str:
    """Whitespace normalised: tokens joined by single spaces."""
    return " ".join(sentence.split())


def memorised(samples: Sequence[str], training_sentences: Sequence[str]) -> float:
    """The share of samples that are, after whitespace normalisation, exactly a training
    sentence (case and punctuation kept)."""
    if not samples:
        raise ValueError("memorised: no samples")
    train = {normalise(s) for s in training_sentences}
    return sum(1 for s in samples if normalise(s) in train) / len(samples)


def total_variation(
    p_counts: Mapping[Hashable, float], q_counts: Mapping[Hashable, float]
) -> float:
    """Total variation distance, 1/2 sum_v |p(v) - q(v)|, between the categorical distributions
    whose counts are given (a value missing from one mapping has count 0 there)."""
    for name, counts in (("p_counts", p_counts), ("q_counts", q_counts)):
        if any(c < 0 for c in counts.values()):
            raise ValueError(f"total_variation: {name} has a negative count")
        if sum(counts.values()) <= 0:
            raise ValueError(f"total_variation: {name} sums to 0, no distribution")
    p_total, q_total = sum(p_counts.values()), sum(q_counts.values())
    values = set(p_counts) | set(q_counts)
    return 0.5 * sum(
        abs(p_counts.get(v, 0) / p_total - q_counts.get(v, 0) / q_total) for v in values
    )


# ----------------------------------------------------------------------------------------------
# Fluency under a reference language model


def load_lm(path: str, data: Optional[str] = None, dictionary=None, device: str = "cpu"):
    """A fairseq language model checkpoint (``--lm-path``), in eval mode on ``device``.

    ``data`` replaces the data folder recorded in the checkpoint (the LM's task reads its
    dict.txt from there); with ``dictionary`` given, the LM's must be the same symbol for
    symbol, or the perplexities would score other tokens. Loading relies on the package's
    checkpoint allow-list (imported with ``fairseq_vae``, so with this module), which lets torch
    read fairseq checkpoints with weights_only on.
    """
    from fairseq import checkpoint_utils
    from fairseq.models import FairseqLanguageModel

    if not os.path.isfile(path):
        raise ValueError(f"--lm-path {path}: no such file")
    overrides = {"data": data} if data else None
    models, _cfg, task = checkpoint_utils.load_model_ensemble_and_task(
        [path], arg_overrides=overrides
    )
    model = models[0]
    if not isinstance(model, FairseqLanguageModel):
        raise ValueError(
            f"--lm-path {path}: a {type(model).__name__}, not a fairseq language model "
            "(train one with --task language_modeling --arch transformer_lm)"
        )
    lm_dict = task.source_dictionary
    if dictionary is not None and lm_dict.symbols != dictionary.symbols:
        diff = next(
            (i for i, (a, b) in enumerate(zip(lm_dict.symbols, dictionary.symbols)) if a != b),
            min(len(lm_dict), len(dictionary)),
        )
        raise ValueError(
            f"--lm-path {path}: its dictionary ({len(lm_dict)} symbols) is not the data's "
            f"({len(dictionary)} symbols); they first differ at index {diff}"
        )
    return model.to(device).eval(), lm_dict


def encode_sentences(sentences: Sequence[str], dictionary, bpe=None) -> List[Tensor]:
    """Raw sentences -> token ids ending in </s>, as fairseq-preprocess binarised the corpus:
    through the corpus's subword model (``fairseq_vae.text.subword.build_bpe``) if there is one."""
    rows = []
    for s in sentences:
        text = bpe.encode(normalise(s)) if bpe is not None else normalise(s)
        rows.append(dictionary.encode_line(text, add_if_not_exist=False, append_eos=True).long())
    unk = sum(int(r.eq(dictionary.unk()).sum()) for r in rows)
    if unk:
        logger.warning(f"{unk} tokens of {len(rows)} sentences are not in the dictionary (<unk>)")
    return rows


def truncated_rows(rows: Sequence[Tensor], limit: Optional[int]) -> List[Tensor]:
    """Each row cut to its first ``limit`` tokens (None: no limit), with a warning that counts
    the rows cut."""
    if limit is None:
        return list(rows)
    longer = [i for i, row in enumerate(rows) if row.numel() > limit]
    if longer:
        logger.warning(
            f"{len(longer)} of {len(rows)} sentences are longer than the language model's "
            f"{limit} positions (the longest {max(rows[i].numel() for i in longer)} tokens): "
            f"each is scored on its first {limit} tokens only"
        )
    return [row[:limit] for row in rows]


@torch.no_grad()
def sentence_log_probs(model, rows: Sequence[Tensor], max_tokens: int = 4096) -> List[float]:
    """log p(row) in nats under the language model, one per row (in the given order).

    Each row is a sentence's token ids ending in </s>. The model reads </s> followed by the row
    without its last token and predicts every token of the row, </s> included: what
    ``fairseq-eval-lm --sample-break-mode eos`` scores (it counts the same tokens). Rows are
    sorted by length and batched up to ``max_tokens`` tokens, right-padded (a causal model does
    not see the padding of its own row).

    A row longer than the model's ``max_positions()`` (an ancestral sample can reach
    ``--max-len-b`` + 1 tokens) is truncated: its log p is that of its first max_positions()
    tokens, the most the model reads, and a warning counts such rows. Its later tokens add no
    nats, so a perplexity over all its words is lower than the row's own would be; the rows are
    kept rather than left out so that every caller's word count stays that of all its rows.
    """
    dictionary = model.decoder.dictionary
    eos, pad = dictionary.eos(), dictionary.pad()
    for i, row in enumerate(rows):
        if row.numel() == 0 or int(row[-1]) != eos:
            raise ValueError(f"sentence_log_probs: row {i} does not end in </s>")
    rows = truncated_rows(rows, model.max_positions())
    device = next(model.parameters()).device
    order = sorted(range(len(rows)), key=lambda i: rows[i].numel())
    out = [0.0] * len(rows)
    start = 0
    while start < len(order):
        end = start + 1
        while end < len(order) and (end - start + 1) * rows[order[end]].numel() <= max_tokens:
            end += 1
        batch = [rows[i] for i in order[start:end]]
        width = batch[-1].numel()
        target = torch.full((len(batch), width), pad, dtype=torch.long)
        prev = torch.full((len(batch), width), pad, dtype=torch.long)
        for b, row in enumerate(batch):
            target[b, : row.numel()] = row
            prev[b, 0] = eos
            prev[b, 1 : row.numel()] = row[:-1]
        target, prev = target.to(device), prev.to(device)
        lprobs = model.get_normalized_probs(model(prev), log_probs=True).float()  # B x T x V
        scores = lprobs.gather(-1, target.unsqueeze(-1)).squeeze(-1).double()  # B x T
        scores = scores.masked_fill(target.eq(pad), 0.0).sum(-1)
        for b, i in enumerate(order[start:end]):
            out[i] = float(scores[b])
        start = end
    return out


def lm_perplexity(
    model, sentences: Sequence[str], dictionary, bpe=None, max_tokens: int = 4096
) -> float:
    """Per-word perplexity of raw sentences under the language model (inf beyond a double):
    exp(-sum_s log p(s) / words), words being each sentence's whitespace tokens + 1 for its end
    of sentence, as ``fairseq-vae-eval`` and benchmarks/ptb.py count them (on a word-level
    corpus, where a model token is a word or </s>, this is fairseq-eval-lm's perplexity).
    ``bpe``: the corpus's subword model (``fairseq_vae.text.subword.build_bpe``), None if none."""
    if not sentences:
        raise ValueError("lm_perplexity: no sentences")
    rows = encode_sentences(sentences, dictionary, bpe)
    words = sum(len(s.split()) + 1 for s in sentences)
    return perplexity(-sum(sentence_log_probs(model, rows, max_tokens)), words)


def lm_perplexity_of_rows(
    model, rows: Sequence[Tensor], words: int, max_tokens: int = 4096
) -> float:
    """As ``lm_perplexity`` for sentences already given as token ids (e.g. samples as the VAE
    decoded them), with their word count (+1 per sentence) given by the caller."""
    return perplexity(-sum(sentence_log_probs(model, rows, max_tokens)), words)


def factor_tv(
    sample_counts: Mapping[str, Mapping[str, int]],
    reference_counts: Mapping[str, Mapping[str, int]],
) -> Dict[str, float]:
    """``total_variation`` per factor, for {factor: {value: count}} tables such as
    ``fairseq_vae.synth.grammar.factor_distribution`` returns."""
    return {f: total_variation(sample_counts[f], reference_counts[f]) for f in reference_counts}
