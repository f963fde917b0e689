"""Paraphrase pairs from the shipped grammar, where the answer is known: a source sentence fixes
some factors (topic and tense), and each of its targets is another sentence the grammar draws
with those factors kept and the free ones (sentiment, number, template, words) drawn as the
grammar draws them. A conditional model should keep the fixed factors and spread its outputs
over the free ones as the grammar does."""

from typing import Dict, List, Tuple

from .corpus import FACTOR_NAMES, realise, sample_factors
from .grammar import factor_distribution

KEPT = ("topic", "tense")
FREE = tuple(f for f in FACTOR_NAMES if f not in KEPT)
# what a target draws besides its factors: which template writes it (its words are the rest)
SPREAD = (*FREE, "template")


def paraphrase_targets(source: Dict[str, str], n: int, rng) -> List[Tuple[str, Dict[str, str]]]:
    """n (sentence, factors) targets for a source's factors: KEPT copied, the rest drawn."""
    targets = []
    for _ in range(n):
        factors = dict(sample_factors(rng), **{k: source[k] for k in KEPT})
        targets.append((realise(factors, rng), factors))
    return targets


def paraphrase_groups(sources: int, targets_per_source: int, rng) -> List[dict]:
    """``sources`` groups {"source", "factors", "targets": [(sentence, factors), ...]}."""
    groups = []
    for _ in range(sources):
        factors = sample_factors(rng)
        sentence = realise(factors, rng)
        groups.append(
            {
                "source": sentence,
                "factors": factors,
                "targets": paraphrase_targets(factors, targets_per_source, rng),
            }
        )
    return groups


def spread_counts(sentences: List[str]) -> Dict[str, Dict[str, int]]:
    """For each of SPREAD, how many of the grammatical sentences have each value ({name: {value:
    count}}, ``grammar.factor_distribution`` with the template)."""
    counts = factor_distribution(sentences, with_template=True)
    return {name: counts[name] for name in SPREAD}


def grammar_spread(sources: List[Dict[str, str]], n: int, rng) -> Dict[str, Dict[str, int]]:
    """spread_counts of n targets the grammar draws for each source's factors: the distribution
    a conditional model's samples should have (the templates are not drawn evenly: a draw
    outside the length bounds is drawn again)."""
    return spread_counts([t for f in sources for t, _ in paraphrase_targets(f, n, rng)])
