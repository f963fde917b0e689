"""fairseq_vae.synth.grammar and .synth_corpus: scripts/make_corpus.py still writes the shipped
corpus byte for byte from the moved tables, and the recogniser is exact: it recognises the whole
corpus with its labels, and agrees with an exhaustive enumeration of the generator itself (every
sequence of its random choices) on a small grammar and, restricted to a sentence's own words, on
the full one, for the corpus's sentences and for corrupted ones."""

import csv
import importlib.util
import itertools
import os
import random
from collections import Counter, defaultdict

import pytest
from conftest import ROOT

from fairseq_vae.synth import corpus as sc
from fairseq_vae.synth import grammar as sg

CORPUS = os.path.join(ROOT, "corpus", "synth")
SPLITS = ("train", "valid", "test")


def read_split(split):
    with open(os.path.join(CORPUS, f"{split}.txt"), encoding="utf-8") as f:
        sentences = f.read().splitlines()
    with open(os.path.join(CORPUS, f"{split}.labels.tsv"), encoding="utf-8") as f:
        labels = [dict(row) for row in csv.DictReader(f, delimiter="\t")]
    assert len(sentences) == len(labels)
    return sentences, labels


def as_tuples(parses):
    return {tuple(p[name] for name in sc.FACTOR_NAMES) for p in parses}


# ----------------------------------------------------------------------------------------------
# The generator, run on every sequence of random choices


class DeadEnd(Exception):
    """A choice from an empty table: the realiser cannot go on (tables cut to a sentence)."""


class ScriptedRng:
    """Stands in for random.Random in the realisers: plays back a script of choice indices
    (random() < p draws 0.0, true for every p the realisers use, or almost 1.0, false), and
    extends the script with 0s; ``arity`` records how many options each draw had."""

    def __init__(self, script):
        self.script, self.arity = script, []

    def _draw(self, options):
        i = len(self.arity)
        self.arity.append(options)
        if i == len(self.script):
            self.script.append(0)
        return self.script[i]

    def choice(self, seq):
        if not seq:
            raise DeadEnd
        return seq[self._draw(len(seq))]

    def random(self):
        return (0.0, 1.0 - 1e-9)[self._draw(2)]


def every_output(realise):
    """Every word list realise(rng) can return: a depth-first walk of its choice tree."""
    script = []
    while True:
        rng = ScriptedRng(script)
        try:
            yield realise(rng)
        except DeadEnd:
            pass
        i = len(rng.arity) - 1
        while i >= 0 and script[i] == rng.arity[i] - 1:
            i -= 1
        if i < 0:
            return
        script = script[:i] + [script[i] + 1]


def language():
    """{sentence: factor tuples that generate it} of the module's tables as they are now, and
    the realiser outputs that ``realise`` would redraw for their length."""
    sentences, out_of_bounds = defaultdict(set), set()
    for combo in itertools.product(sc.TOPICS, sc.SENTIMENTS, sc.TENSES, sc.NUMBERS):
        factors = dict(zip(sc.FACTOR_NAMES, combo))
        for realiser in sc.REALISERS.values():
            for words in every_output(lambda rng, r=realiser, f=factors: r(f, rng)):
                tokens = " ".join(words).split()
                sentence = " ".join(tokens + ["."])
                if sc.MIN_WORDS <= sc.count_words(tokens) <= sc.MAX_WORDS:
                    sentences[sentence].add(combo)
                else:
                    out_of_bounds.add(sentence)
    return sentences, out_of_bounds - set(sentences)


TABLES = (
    "AGENTS",
    "THINGS",
    "TOPIC_VERBS",
    "SENTIMENT_VERBS",
    "PLACES",
    "NEUTRAL_ADJECTIVES",
    "EVALUATIVE_ADJECTIVES",
    "TOPIC_EVALUATIVE_ADJECTIVES",
    "FEELINGS",
    "MANNER_ADVERBS",
    "DEGREE_ADVERBS",
    "TIME_PHRASES",
    "DETERMINERS",
    "EXISTENTIAL_DETERMINERS",
    "PRONOUNS",
    "CONJUNCTIONS",
)


def cut(table, words):
    """The table without the entries none of whose forms are made of the given words."""
    if isinstance(table, dict):
        return {key: cut(value, words) for key, value in table.items()}
    forms = lambda entry: entry if isinstance(entry, tuple) else (entry,)  # noqa: E731
    return [e for e in table if any(set(f.split()) <= words for f in forms(e))]


def generating_factors(sentence, monkeypatch):
    """The factor tuples from which the FULL grammar generates the sentence, by brute force.

    A realiser's every table draw shows up in its output (one form of a noun or verb; "a" may
    show as "an"), so a derivation of the sentence only draws entries made of its words: the
    grammar cut to those entries generates the sentence from the same factors as the full one,
    and is small enough to enumerate.
    """
    words = set(sentence.split())
    if "an" in words:
        words.add("a")
    with monkeypatch.context() as m:
        for name in TABLES:
            m.setattr(sc, name, cut(getattr(sc, name), words))
        generated, _ = language()
    return generated.get(" ".join(sentence.split()), set())


# ----------------------------------------------------------------------------------------------
# One source: the script writes the shipped corpus from the module's tables


def test_make_corpus_still_writes_the_shipped_corpus(tmp_path, capsys):
    spec = importlib.util.spec_from_file_location(
        "make_corpus", os.path.join(ROOT, "scripts", "make_corpus.py")
    )
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    script.main(["--out", str(tmp_path)])  # the defaults: seed 1, 20000 / 1000 / 1000
    for split in SPLITS:
        for name in (f"{split}.txt", f"{split}.labels.tsv"):
            with open(os.path.join(CORPUS, name), "rb") as f:
                expected = f.read()
            assert (tmp_path / name).read_bytes() == expected, name


# ----------------------------------------------------------------------------------------------
# The shipped grammar


@pytest.mark.parametrize("split", SPLITS)
def test_every_corpus_sentence_is_recognised_with_its_labels(split):
    sentences, labels = read_split(split)
    rec = sg.default_recogniser()
    for sentence, label in zip(sentences, labels):
        assert rec.parse(sentence) == [label], sentence


def test_corpus_sentences_agree_with_the_brute_force_generator(monkeypatch):
    sentences, labels = read_split("test")
    for sentence, label in list(zip(sentences, labels))[:40]:
        assert generating_factors(sentence, monkeypatch) == as_tuples([label])


def corruptions(sentence, vocabulary, rng):
    """A word dropped, two neighbours transposed, a word replaced, one of each at random."""
    tokens = sentence.split()
    i = rng.randrange(len(tokens))
    j = rng.randrange(len(tokens) - 1)
    out = [
        tokens[:i] + tokens[i + 1 :],
        tokens[:j] + [tokens[j + 1], tokens[j]] + tokens[j + 2 :],
        tokens[:i] + [rng.choice(vocabulary)] + tokens[i + 1 :],
    ]
    return [" ".join(t) for t in out if " ".join(t) != sentence]


def test_corruptions_agree_with_the_brute_force_generator(monkeypatch):
    """Whatever a corruption gives, grammatical or not, the recogniser says what the
    generator says."""
    sentences, _ = read_split("valid")
    vocabulary = sorted({w for s in sentences for w in s.split()})
    rng = random.Random(0)
    rec = sg.default_recogniser()
    grammatical = rejected = 0
    for sentence in sentences[:150]:
        for corrupted in corruptions(sentence, vocabulary, rng):
            expected = generating_factors(corrupted, monkeypatch)
            assert as_tuples(rec.parse(corrupted)) == expected, corrupted
            grammatical += bool(expected)
            rejected += not expected
    assert rejected > 300 and grammatical > 5  # both kinds were met


WRONG = {
    # agreement: a plural subject with a singular verb, a singular one with a plural form
    "the players is very happy about the match .": "agreement",
    "the player are very happy about the match .": "agreement",
    "my coach cheer at a thrilling match .": "agreement",
    "some fans won a great match and he were glad .": "clause pronoun",
    # tense: the verb form against the time phrase, "will" with a past form
    "yesterday , the team wins a great match .": "tense",
    "the team will won a great match .": "tense",
    "tomorrow , there was a great match at the stadium .": "tense",
    # a word of another class in a slot, a word dropped, words transposed
    "the team happily a great match .": "no verb",
    "the team won great a match .": "transposed",
    "the team won a great match at stadium .": "dropped determiner",
    "the team won a great match": "no full stop",
    "the team won a match .": "no sentiment cue",
    "an team won a great match .": "a / an",
    "there was a excellent match at the stadium .": "a / an",
    "last night , the team won a great match yesterday .": "two time phrases",
    "the team won a great dish .": "topic mixed",
    "The team won a great match .": "case",
}


@pytest.mark.parametrize("sentence", sorted(WRONG))
def test_ungrammatical_sentences_are_rejected(sentence, monkeypatch):
    assert sg.parse(sentence) == [] and sg.recognise(sentence) is None
    assert generating_factors(sentence, monkeypatch) == set()


def test_grammatical_variants_are_recognised(monkeypatch):
    for sentence, factors in [
        ("the team won a great match .", ("sports", "positive", "past", "singular")),
        ("the team happily won a match .", ("sports", "positive", "past", "singular")),
        (
            "an old fisherman is glad about the frosts .",
            ("weather", "positive", "present", "singular"),
        ),
        ("  the team   will sadly lose a match  . ", ("sports", "negative", "future", "singular")),
    ]:
        assert as_tuples(sg.parse(sentence)) == {factors}
        assert generating_factors(sentence, monkeypatch) == {factors}


def test_length_bounds(monkeypatch):
    # MIN_WORDS = 6 and MAX_WORDS = 20 words, "," and "." not counted
    assert sg.parse("the match was very great yesterday .")
    assert sg.parse("the match was great yesterday .") == []
    longest = (
        "next summer , the veteran goalkeepers will {}complain about several embarrassing "
        "training sessions on the track and they will be nervous ."
    )
    assert as_tuples(sg.parse(longest.format(""))) == {("sports", "negative", "future", "plural")}
    assert sg.parse(longest.format("angrily ")) == []
    assert generating_factors(longest.format("angrily "), monkeypatch) == set()


def test_factor_distribution_counts_the_labels():
    sentences, labels = read_split("train")
    counts = sg.factor_distribution(sentences + ["the team won a match .", "not a sentence ."])
    for name in sc.FACTOR_NAMES:
        assert counts[name] == dict(Counter(row[name] for row in labels)), name
    assert sg.grammatical_share(sentences[:98] + ["the team won a match .", "x ."]) == 0.98


# ----------------------------------------------------------------------------------------------
# A small grammar, enumerated completely: the recogniser against the whole language

SMALL = {
    "TOPICS": ("sports", "food"),
    # "cook" is a food agent and a food verb, "love" a food verb and the positive sentiment
    # verb; "match" and "at home" belong to both topics, so some sentences have either topic
    "AGENTS": {"sports": [("fan", "fans"), ("owner", "owners")], "food": [("cook", "cooks")]},
    "THINGS": {
        "sports": [("match", "matches")],
        "food": [("match", "matches"), ("egg roll", "egg rolls")],
    },
    "TOPIC_VERBS": {
        "sports": [("win", "wins", "won")],
        "food": [("cook", "cooks", "cooked"), ("love", "loves", "loved")],
    },
    "SENTIMENT_VERBS": {
        "positive": [("love", "loves", "loved")],
        "negative": [("complain about", "complains about", "complained about")],
    },
    "PLACES": {"sports": ["at home"], "food": ["at home", "in the cafe"]},
    "NEUTRAL_ADJECTIVES": {"sports": ["old"], "food": ["busy"]},
    "EVALUATIVE_ADJECTIVES": {"positive": ["great"], "negative": ["awful"]},
    "TOPIC_EVALUATIVE_ADJECTIVES": {
        ("sports", "positive"): [],
        ("sports", "negative"): ["dull"],
        ("food", "positive"): ["tasty"],
        ("food", "negative"): [],
    },
    "FEELINGS": {"positive": ["glad"], "negative": ["upset"]},
    "MANNER_ADVERBS": {"positive": ["gladly"], "negative": ["sadly"]},
    "DEGREE_ADVERBS": ["very"],
    "TIME_PHRASES": {"past": ["last week"], "present": ["now"], "future": ["soon"]},
    "DETERMINERS": {"singular": ["a", "the"], "plural": ["the", "some"]},
    "EXISTENTIAL_DETERMINERS": ["some"],
    "PRONOUNS": {"singular": ["he"], "plural": ["they"]},
    "CONJUNCTIONS": ["and"],
}


@pytest.fixture
def small_grammar(monkeypatch):
    for name, table in SMALL.items():
        monkeypatch.setattr(sc, name, table)
    generated, out_of_bounds = language()
    return sg.Recogniser(), generated, out_of_bounds


def test_small_grammar_language_is_recognised_exactly(small_grammar):
    rec, generated, out_of_bounds = small_grammar
    assert len(generated) > 100_000 and len(out_of_bounds) > 100
    for sentence, factors in generated.items():
        assert as_tuples(rec.parse(sentence)) == factors, sentence
    for sentence in out_of_bounds:
        assert rec.parse(sentence) == [], sentence


def test_small_grammar_corruptions_are_judged_as_the_generator_does(small_grammar):
    rec, generated, _ = small_grammar
    vocabulary = sorted({w for s in generated for w in s.split()})
    rng = random.Random(1)
    grammatical = rejected = 0
    for sentence in rng.sample(sorted(generated), 2000):
        tokens = sentence.split()
        for i in range(len(tokens)):
            variants = [tokens[:i] + tokens[i + 1 :]]
            variants += [tokens[:i] + [w] + tokens[i + 1 :] for w in rng.sample(vocabulary, 3)]
            if i + 1 < len(tokens):
                variants.append(tokens[:i] + [tokens[i + 1], tokens[i]] + tokens[i + 2 :])
            for variant in variants:
                corrupted = " ".join(variant)
                if corrupted == sentence:
                    continue
                expected = generated.get(corrupted, set())
                assert as_tuples(rec.parse(corrupted)) == expected, corrupted
                grammatical += bool(expected)
                rejected += not expected
    assert rejected > 100_000 and grammatical > 1000


def test_small_grammar_ambiguous_sentences(small_grammar):
    rec, generated, _ = small_grammar
    ambiguous = {s: f for s, f in generated.items() if len(f) > 1}
    assert ambiguous
    sentence = "the match is great at home ."
    assert generated[sentence] == {
        ("sports", "positive", "present", "singular"),
        ("food", "positive", "present", "singular"),
    }
    assert rec.recognise(sentence) == {
        "topic": None,
        "sentiment": "positive",
        "tense": "present",
        "number": "singular",
    }
    counts = sg.factor_distribution([sentence, "the match is great in the cafe ."], rec)
    assert counts["topic"] == {"sports": 0, "food": 1}
    assert counts["number"] == {"singular": 2, "plural": 0}


def test_paraphrase_targets_keep_topic_and_tense_and_draw_the_rest():
    """synth.paraphrases: the recogniser reads every target with its source's topic and tense,
    and the free factors take all their values across targets."""
    import random

    from fairseq_vae.synth.paraphrases import FREE, KEPT, paraphrase_groups

    groups = paraphrase_groups(60, 4, random.Random(0))
    seen = {f: set() for f in FREE}
    for group in groups:
        assert sg.recognise(group["source"]) == group["factors"]
        for target, factors in group["targets"]:
            assert sg.recognise(target) == factors
            assert all(factors[k] == group["factors"][k] for k in KEPT)
            for f in FREE:
                seen[f].add(factors[f])
    assert seen == {"sentiment": set(sc.SENTIMENTS), "number": set(sc.NUMBERS)}


def test_template_of_and_spread_counts_read_what_the_generator_drew():
    """synth.grammar.template_of names the template a realiser was asked for, and
    paraphrases.spread_counts counts the factors and templates of the sentences drawn."""
    from fairseq_vae.synth.paraphrases import SPREAD, spread_counts

    rng = random.Random(1)
    sentences, drawn = [], {name: Counter() for name in SPREAD}
    while len(sentences) < 300:
        factors, template = sc.sample_factors(rng), rng.choice(sc.TEMPLATES)
        tokens = " ".join(sc.REALISERS[template](factors, rng)).split()
        if not sc.MIN_WORDS <= sc.count_words(tokens) <= sc.MAX_WORDS:
            continue
        sentence = " ".join(tokens + ["."])
        assert sg.template_of(sentence, sg.recognise(sentence)) == template, sentence
        sentences.append(sentence)
        for name, value in dict(factors, template=template).items():
            if name in SPREAD:
                drawn[name][value] += 1
    assert sg.template_of("not a sentence .", sg.recognise("not a sentence .")) is None
    assert spread_counts(sentences + ["not a sentence ."]) == {k: dict(v) for k, v in drawn.items()}
    assert set(drawn["template"]) == set(sc.TEMPLATES)
