"""Paraphrase pairs from the shipped grammar, where the answer is known: a source sentence fixes
some factors (topic and tense), and each of its targets is another sentence the grammar draws
with those factors kept and the free ones (sentiment, number, template, words) drawn as the
grammar draws them. A conditional model should keep the fixed factors and spread its outputs
over the free ones as the grammar does."""

from typing import Dict, List, Tuple

from .corpus import FACTOR_NAMES, realise, sample_factors

KEPT = ("topic", "tense")
FREE = tuple(f for f in FACTOR_NAMES if f not in KEPT)


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
