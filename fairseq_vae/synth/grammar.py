"""An exact recogniser for the shipped corpus's grammar (``fairseq_vae.synth.corpus``, the
tables and generator of scripts/make_corpus.py): whether the grammar can generate a sentence,
and from which factors (topic, sentiment, tense, number).

The prior-sample evaluation asks it for the share of samples that are grammatical and for each
factor's distribution among them. It parses, from the same tables: for each of the 48 factor
combinations the four templates are compiled into one regular expression over whitespace tokens
(the language is finite, so regular), branch by branch as the realisers draw their optional
parts, including the "a"/"an" rule, the action template's guaranteed sentiment cue and the time
phrase that is either fronted or late, never both; the length bounds are checked on the tokens.
A sentence's parses are all the factor combinations whose expression matches it.
"""

import itertools
import re
from functools import lru_cache
from typing import Dict, Iterable, List, Optional

from fairseq_vae.synth import corpus
from fairseq_vae.synth.corpus import FACTOR_NAMES

# ----------------------------------------------------------------------------------------------
# The realisers of synth_corpus, as regular expressions over "token token ... . "
#
# Each piece below matches a phrase followed by one space, so pieces concatenate and an optional
# piece is just (?:...)?; a sentence is matched as its tokens joined by single spaces plus a
# trailing space.

VOWELS = "aeiou"


def _phrase(text: str) -> str:
    return re.escape(" ".join(text.split()) + " ")


def _alt(phrases: Iterable[str]) -> str:
    """Any one of the phrases; an empty table matches nothing."""
    phrases = sorted(set(phrases))
    if not phrases:
        return "(?!)"
    return "(?:" + "|".join(_phrase(p) for p in phrases) + ")"


def _any(pieces: Iterable[str]) -> str:
    pieces = list(pieces)
    return "(?:" + "|".join(pieces) + ")" if pieces else "(?!)"


def _opt(piece: str) -> str:
    return "(?:" + piece + ")?"


def _noun_phrase(dets, adjectives, nouns, an_rule=True) -> str:
    """Determiner, adjective (None: none) and noun, as ``noun_phrase`` joins them: with
    ``an_rule``, "a" becomes "an" before a vowel (of the adjective, else of the noun)."""

    def surface(det, first_word):
        return "an" if an_rule and det == "a" and first_word[0] in VOWELS else det

    heads = {}  # surface determiner -> (adjectives, bare nouns) it can precede
    for det in dets:
        for adjective in adjectives:
            for noun in nouns:
                word = noun if adjective is None else adjective
                adjs, bare = heads.setdefault(surface(det, word), (set(), set()))
                (bare if adjective is None else adjs).add(word)
    # determiners that precede the same heads share one piece: the regex stays small
    by_heads = {}
    for det, (adjs, bare) in heads.items():
        by_heads.setdefault((frozenset(adjs), frozenset(bare)), []).append(det)
    pieces = []
    for (adjs, bare), group in sorted(by_heads.items(), key=lambda kv: sorted(kv[1])):
        alternatives = ([_alt(adjs) + _alt(nouns)] if adjs else []) + ([_alt(bare)] if bare else [])
        pieces.append(_alt(group) + _any(alternatives))
    return _any(pieces)


def _forms(nouns, number) -> List[str]:
    return [noun[0] if number == "singular" else noun[1] for noun in nouns]


def _object(topic, adjectives) -> str:
    """An object noun phrase: a thing of the topic, of either number (its own draw)."""
    return _any(
        _noun_phrase(corpus.DETERMINERS[n], adjectives, _forms(corpus.THINGS[topic], n))
        for n in corpus.NUMBERS
    )


def _verb_group(verbs, tense, number, manners) -> str:
    """``conjugate`` of any of the verbs, with one of the manner adverbs (None: without)."""
    pieces = []
    for manner in manners:
        pre = _alt([manner]) if manner else ""
        if tense == "past":
            pieces.append(pre + _alt(v[2] for v in verbs))
        elif tense == "present":
            pieces.append(pre + _alt(v[1] if number == "singular" else v[0] for v in verbs))
        else:
            pieces.append(_phrase("will") + pre + _alt(v[0] for v in verbs))
    return _any(pieces)


def _action_pattern(topic, sentiment, tense, number) -> str:
    subject = _noun_phrase(
        corpus.DETERMINERS[number],
        [None] + corpus.NEUTRAL_ADJECTIVES[topic],
        _forms(corpus.AGENTS[topic], number),
    )
    # a sentiment cue in the verb group: a manner adverb, a sentiment verb, or both
    cued_verb = _any(
        [
            _verb_group(corpus.SENTIMENT_VERBS[sentiment], tense, number, [None]),
            _verb_group(
                corpus.SENTIMENT_VERBS[sentiment], tense, number, corpus.MANNER_ADVERBS[sentiment]
            ),
            _verb_group(corpus.TOPIC_VERBS[topic], tense, number, corpus.MANNER_ADVERBS[sentiment]),
        ]
    )
    plain_verb = _verb_group(corpus.TOPIC_VERBS[topic], tense, number, [None])
    clause = (
        _alt(corpus.CONJUNCTIONS)
        + _alt(corpus.PRONOUNS[number])
        + _phrase(corpus.BE[(tense, number)])
        + _alt(corpus.FEELINGS[sentiment])
    )
    evaluative = _evaluative(topic, sentiment)
    any_object = _object(topic, [None] + evaluative)
    # the generator adds an evaluative object adjective whenever no other cue was drawn
    cued_object = _object(topic, evaluative)
    place = _opt(_alt(corpus.PLACES[topic]))
    branches = []
    # the time phrase is fronted (with a comma) or late, never both
    for front, late in (
        (_alt(corpus.TIME_PHRASES[tense]) + _phrase(","), ""),
        ("", _opt(_alt(corpus.TIME_PHRASES[tense]))),
    ):
        tail = place + late
        branches.append(
            front
            + subject
            + _any(
                [
                    cued_verb + any_object + tail + _opt(clause),
                    plain_verb + any_object + tail + clause,
                    plain_verb + cued_object + tail,
                ]
            )
        )
    return _any(branches)


def _evaluative(topic, sentiment) -> List[str]:
    return (
        corpus.EVALUATIVE_ADJECTIVES[sentiment]
        + corpus.TOPIC_EVALUATIVE_ADJECTIVES[(topic, sentiment)]
    )


def _description_pattern(topic, sentiment, tense, number) -> str:
    return (
        _noun_phrase(corpus.DETERMINERS[number], [None], _forms(corpus.THINGS[topic], number))
        + _phrase(corpus.BE[(tense, number)])
        + _opt(_alt(corpus.DEGREE_ADVERBS))
        + _alt(_evaluative(topic, sentiment))
        + _opt(_alt(corpus.PLACES[topic]))
        + _opt(_alt(corpus.TIME_PHRASES[tense]))
    )


def _feeling_pattern(topic, sentiment, tense, number) -> str:
    return (
        _noun_phrase(
            corpus.DETERMINERS[number],
            [None] + corpus.NEUTRAL_ADJECTIVES[topic],
            _forms(corpus.AGENTS[topic], number),
        )
        + _phrase(corpus.BE[(tense, number)])
        + _opt(_alt(corpus.DEGREE_ADVERBS))
        + _alt(corpus.FEELINGS[sentiment])
        + _phrase("about")
        + _object(topic, [None] + _evaluative(topic, sentiment))
        + _opt(_alt(corpus.PLACES[topic]))
        + _opt(_alt(corpus.TIME_PHRASES[tense]))
    )


def _existential_pattern(topic, sentiment, tense, number) -> str:
    if number == "singular":
        thing = _noun_phrase(
            ["a"], _evaluative(topic, sentiment), _forms(corpus.THINGS[topic], number)
        )
    else:
        thing = _noun_phrase(
            corpus.EXISTENTIAL_DETERMINERS,
            _evaluative(topic, sentiment),
            _forms(corpus.THINGS[topic], number),
            an_rule=False,
        )
    body = (
        _phrase("there") + _phrase(corpus.BE[(tense, number)]) + thing + _alt(corpus.PLACES[topic])
    )
    fronted = _alt(corpus.TIME_PHRASES[tense]) + _phrase(",") + body
    return _any([fronted, body + _opt(_alt(corpus.TIME_PHRASES[tense]))])


_PATTERNS = {
    "action": _action_pattern,
    "description": _description_pattern,
    "feeling": _feeling_pattern,
    "existential": _existential_pattern,
}


class Recogniser:
    """Which factor combinations the grammar can generate a sentence from.

    Built from synth_corpus's tables as they are when it is constructed (tests shrink them to
    compare with an exhaustive enumeration of the generator).
    """

    def __init__(self):
        self.values = {
            "topic": corpus.TOPICS,
            "sentiment": corpus.SENTIMENTS,
            "tense": corpus.TENSES,
            "number": corpus.NUMBERS,
        }
        self.patterns = []
        for topic, sentiment, tense, number in itertools.product(
            corpus.TOPICS, corpus.SENTIMENTS, corpus.TENSES, corpus.NUMBERS
        ):
            branches = [p(topic, sentiment, tense, number) for p in _PATTERNS.values()]
            factors = {"topic": topic, "sentiment": sentiment, "tense": tense, "number": number}
            self.patterns.append((factors, re.compile(_any(branches) + _phrase("."))))

    def parse(self, sentence: str) -> List[Dict[str, str]]:
        """Every factor combination (dicts over FACTOR_NAMES) that can generate the sentence;
        [] when none can. Whitespace is normalised, nothing else (case is kept)."""
        tokens = sentence.split()
        if (
            not tokens
            or tokens[-1] != "."
            or not corpus.MIN_WORDS <= corpus.count_words(tokens) <= corpus.MAX_WORDS
        ):
            return []
        text = " ".join(tokens) + " "
        return [dict(f) for f, pattern in self.patterns if pattern.fullmatch(text)]

    def recognise(self, sentence: str) -> Optional[Dict[str, Optional[str]]]:
        """The sentence's factors, or None if the grammar cannot generate it. A factor on
        which the parses disagree (a sentence the grammar can generate from more than one
        value) is None."""
        parses = self.parse(sentence)
        if not parses:
            return None
        return {
            name: parses[0][name] if all(p[name] == parses[0][name] for p in parses) else None
            for name in FACTOR_NAMES
        }


@lru_cache(maxsize=1)
def default_recogniser() -> Recogniser:
    """The recogniser of the shipped tables, built once (about a second)."""
    return Recogniser()


def parse(sentence: str) -> List[Dict[str, str]]:
    """``Recogniser.parse`` with the shipped grammar."""
    return default_recogniser().parse(sentence)


def recognise(sentence: str) -> Optional[Dict[str, Optional[str]]]:
    """``Recogniser.recognise`` with the shipped grammar."""
    return default_recogniser().recognise(sentence)


@lru_cache(maxsize=None)
def _template_patterns(topic: str, sentiment: str, tense: str, number: str):
    return {
        name: re.compile(make(topic, sentiment, tense, number) + _phrase("."))
        for name, make in _PATTERNS.items()
    }


def template_of(sentence: str, factors: Dict[str, Optional[str]]) -> Optional[str]:
    """The template (synth_corpus.TEMPLATES) that writes ``sentence`` from ``factors`` (as
    ``recognise`` gives them), or None: a factor unknown, no template, or more than one."""
    if factors is None or any(factors.get(name) is None for name in FACTOR_NAMES):
        return None
    text = " ".join(sentence.split()) + " "
    patterns = _template_patterns(*(factors[name] for name in FACTOR_NAMES))
    names = [name for name, pattern in patterns.items() if pattern.fullmatch(text)]
    return names[0] if len(names) == 1 else None


def grammatical_share(sentences: List[str], recogniser: Optional[Recogniser] = None) -> float:
    """The share of sentences the grammar can generate."""
    if not sentences:
        raise ValueError("grammatical_share: no sentences")
    recogniser = recogniser or default_recogniser()
    return sum(1 for s in sentences if recogniser.parse(s)) / len(sentences)


def factor_distribution(
    sentences: Iterable[str], recogniser: Optional[Recogniser] = None, with_template: bool = False
) -> Dict[str, Dict[str, int]]:
    """For each factor, how many of the grammatical sentences have each of its values:
    {factor: {value: count}}, every value of the grammar listed (0 if unseen). Ungrammatical
    sentences are left out; so is a factor of a sentence the grammar can generate with more
    than one value of it (``recognise`` gives None). ``with_template``: "template" counted as a
    factor too (``template_of``, the shipped grammar's templates)."""
    recogniser = recogniser or default_recogniser()
    values = dict(recogniser.values, template=corpus.TEMPLATES)
    names = (*FACTOR_NAMES, "template") if with_template else FACTOR_NAMES
    counts = {name: {value: 0 for value in values[name]} for name in names}
    for sentence in sentences:
        factors = recogniser.recognise(sentence)
        if factors is None:
            continue
        if with_template:
            factors = dict(factors, template=template_of(sentence, factors))
        for name, value in factors.items():
            if value is not None:
                counts[name][value] += 1
    return counts
