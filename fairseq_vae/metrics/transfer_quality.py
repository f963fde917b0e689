"""Measures of attribute transfer (fairseq_vae.latent_space.steering), read from the text alone:

* ``NgramJudge``: an attribute classifier independent of the VAE, a scikit-learn logistic
  regression on word 1- and 2-gram TF-IDF features of the training TEXT (never of z); it must
  reach 0.9 accuracy on real test sentences to serve as a judge;
* ``source_bleu``: content kept, sacrebleu's corpus BLEU of each output against its own source;
* ``g_score``: the geometric mean of the accuracy (in %) and the source BLEU, the trade-off
  figure style-transfer papers report (LatentOps' "G-score (BLEU, Accuracy)");
* ``grammar_transfer``: on the shipped corpus, the grammar reads every factor of an output
  exactly: success is the target factor at the target value, "others kept" every other factor
  at the source's value (and each other factor's own share).
"""

import math
from typing import Dict, List, Optional, Sequence, Union

from sacrebleu.metrics.bleu import BLEU

JUDGE_MIN_ACCURACY = 0.9


class NgramJudge:
    """A TF-IDF word n-gram logistic regression trained on labelled sentences."""

    def __init__(
        self, sentences: Sequence[str], labels: Sequence[str], ngrams: int = 2, seed: int = 1
    ):
        from sklearn.feature_extraction.text import TfidfVectorizer
        from sklearn.linear_model import LogisticRegression
        from sklearn.pipeline import make_pipeline

        if len(sentences) != len(labels):
            raise ValueError(f"judge: {len(labels)} labels for {len(sentences)} sentences")
        if len(set(labels)) < 2:
            raise ValueError(f"judge: the labels take one value ({sorted(set(labels))})")
        # the corpora are tokenised: split on whitespace only, keep one-letter tokens
        vectorizer = TfidfVectorizer(
            ngram_range=(1, ngrams), token_pattern=None, tokenizer=str.split, lowercase=False
        )
        self.pipeline = make_pipeline(
            vectorizer, LogisticRegression(max_iter=5000, C=10.0, random_state=seed)
        )
        self.pipeline.fit(list(sentences), list(labels))

    def predict(self, sentences: Sequence[str]) -> List[str]:
        return list(self.pipeline.predict(list(sentences)))

    def accuracy(self, sentences: Sequence[str], labels: Sequence[str]) -> float:
        predicted = self.predict(sentences)
        return sum(p == y for p, y in zip(predicted, labels)) / len(labels)


def source_bleu(outputs: Sequence[str], sources: Sequence[str]) -> float:
    """Corpus BLEU-4 of the outputs, each against its own source (tokenised text: no further
    tokenisation)."""
    if len(outputs) != len(sources):
        raise ValueError(f"source_bleu: {len(outputs)} outputs for {len(sources)} sources")
    return BLEU(tokenize="none").corpus_score(list(outputs), [list(sources)]).score


def g_score(accuracy: float, bleu: float) -> float:
    return math.sqrt(max(100 * accuracy, 0.0) * max(bleu, 0.0))


def grammar_transfer(
    outputs: Sequence[str],
    sources: Sequence[Dict[str, str]],
    factor: str,
    to: Union[str, Sequence[str]],
) -> Dict[str, float]:
    """Success and others-kept shares of outputs read by the shipped corpus's grammar, for
    sources whose factors are given and a target value (one for all, or one per output); an
    ungrammatical output, or one the grammar reads two ways, counts as a failure on both."""
    from fairseq_vae.synth import grammar as synth_grammar

    targets = [to] * len(outputs) if isinstance(to, str) else list(to)
    success = kept = grammatical = 0
    each = {f: 0 for f in (sources[0] if sources else {}) if f != factor}
    for output, source, to in zip(outputs, sources, targets):
        read: Optional[Dict[str, Optional[str]]] = synth_grammar.recognise(output)
        if read is None:
            continue
        grammatical += 1
        success += read[factor] == to
        kept += all(read[f] == v for f, v in source.items() if f != factor)
        for f in each:
            each[f] += read[f] == source[f]
    n = len(outputs)
    return {
        "success": success / n,
        "others_kept": kept / n,
        "grammatical": grammatical / n,
        "kept_each": {f: k / n for f, k in each.items()},
    }


# a draw of n that holds two classes can still be rare (one sentence of a class in thousands):
# give up with the class counts rather than loop on
FEW_LABEL_REDRAWS = 1000


def check_few_label_draw(train_labels: Sequence[str], n: int) -> None:
    """Refuses a draw of n training labels that can never hold two classes."""
    counts = {label: list(train_labels).count(label) for label in sorted(set(train_labels))}
    if n < 2:
        raise ValueError(f"few labels: n={n} sentences cannot hold two classes (n must be >= 2)")
    if n > len(train_labels):
        raise ValueError(
            f"few labels: n={n} is more than the {len(train_labels)} training sentences"
        )
    if len(counts) < 2:
        raise ValueError(
            f"few labels: the {len(train_labels)} training sentences hold one class {counts}; "
            "the probes need two"
        )


def two_class_draw(rng, train_labels: Sequence[str], n: int) -> List[int]:
    """n distinct training indices whose labels hold at least two classes, drawn again until
    they do (the draws the benchmarks' tables were made with), at most FEW_LABEL_REDRAWS times."""
    for _ in range(FEW_LABEL_REDRAWS):
        chosen = rng.sample(range(len(train_labels)), n)
        if len({train_labels[i] for i in chosen}) >= 2:
            return chosen
    counts = {label: list(train_labels).count(label) for label in sorted(set(train_labels))}
    raise ValueError(
        f"few labels: {FEW_LABEL_REDRAWS} draws of n={n} of the {len(train_labels)} training "
        f"sentences all held one class (classes {counts})"
    )


def few_label_accuracy(
    train_mu,
    train_text,
    train_labels,
    test_mu,
    test_text,
    test_labels,
    n: int,
    draws: int = 5,
    seed: int = 1,
) -> Dict[str, float]:
    """Test accuracy of a logistic regression on the posterior means and of the n-gram judge,
    each trained on the same n labelled training sentences, averaged over ``draws`` seeded
    draws (a draw with a single class is drawn again, at most ``FEW_LABEL_REDRAWS`` times).

    Raises ValueError when no draw can hold two classes: n under 2, n over the number of
    training sentences, or training labels of a single class."""
    import random

    import numpy as np
    from sklearn.linear_model import LogisticRegression

    check_few_label_draw(train_labels, n)
    rng = random.Random(seed)
    latent, ngram = [], []
    for _ in range(draws):
        chosen = two_class_draw(rng, train_labels, n)
        y = [train_labels[i] for i in chosen]
        probe = LogisticRegression(max_iter=5000, random_state=seed)
        probe.fit(np.asarray(train_mu)[chosen], y)
        latent.append(float(np.mean(probe.predict(np.asarray(test_mu)) == np.asarray(test_labels))))
        judge = NgramJudge([train_text[i] for i in chosen], y, seed=seed)
        ngram.append(judge.accuracy(test_text, test_labels))
    return {"labels": n, "latent": float(np.mean(latent)), "ngram": float(np.mean(ngram))}
