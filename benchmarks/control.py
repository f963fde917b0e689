#!/usr/bin/env python3
"""Steering with the latent, measured: sentiment transfer on Yelp, transfer of each factor and
analogies on the shipped corpus, and few-label classification from z.

    benchmarks/control.sh                       # trains what is missing, then measures
    benchmarks/control.sh --corpora synth       # the shipped corpus only (minutes)

Models, trained here as the project's other benchmarks train them (resumable; a rerun skips
every finished step):
* Yelp (--yelp, ../shared/data/yelp): a BART denoising-pretrained on its training text
  (benchmarks/pretrained.py's pretraining, --pretrain-hours), bart_vae_small fine-tuned from it
  with benchmarks/ptb.py's setting --setting ("BART init, fb 0.5, 1024 tokens" by default:
  transfer must keep a sentence's content, so z must carry it; the low-rate "fb 0.1" recipe
  keeps about 3 nats of it on short sentences, too little for a BLEU of 30 against the source;
  batches of 1,024 tokens, as issue #40 found z learns faster in smaller steps), the
  same-size transformer_lm for the same updates (the reference LM), and their test-split
  evaluations (IW-PPL, KL, MI, AU, BLEU; fairseq-eval-lm);
* the shipped corpus: the demo's model (scripts/demo.py), in benchmarks/prior.py's folder, or
  with --synth-demo-args the demo's recipe with other options (in --out).

Measured (each corpus and model's numbers kept in --out/control-<corpus>-<model>.json, so a
rerun only writes the table; with --keep-other-models the results JSON keeps the measurements
of models run apart, and --report rewrites the table from it):
1. Yelp: an independent judge (fairseq_vae.metrics.transfer_quality.NgramJudge on the training
   text, its test accuracy reported); directions (fairseq_vae.latent_space.steering) fitted to
   the posterior means
   of --direction-sentences training sentences; every test sentence moved to the other
   sentiment, by the class-mean and the classifier-normal directions at STRENGTHS and by the
   guided move at CONFIDENCES, decoded greedily: transfer accuracy (the judge), BLEU against the
   source, the reference LM's PPL of the outputs over the sources', and the G-score; the
   trade-off curve (accuracy against source BLEU) in the .png.
2. Few labels: a logistic regression on the posterior means against the judge's model, both
   trained on the same 100, 1,000 and all --direction-sentences labels (5 draws each).
3. The shipped corpus: each test sentence moved to another value of each factor (the next
   one in the grammar's order), success and "others kept" read by its grammar; analogies
   a : b :: c : d over ANALOGIES triples where b differs from a in one factor (two test
   sentences, or a minimal pair the grammar realises from the same draws), d decoded from
   z_c + s (z_b - z_a) for s in ANALOGY_STRENGTHS, success when the grammar reads d as c with
   that factor changed to b's value.
"""

import argparse
import json
import os
import random
import shlex
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import control_report  # noqa: E402  (the table: this study's own report)
import harness  # noqa: E402  (corpus preparation, trainings, evaluations, the job queue)
from control_report import ANALOGIES, FEW_LABEL_DRAWS  # noqa: E402

REPO = harness.REPO
STRENGTHS = (0.5, 1.0, 1.5, 2.0, 3.0)
CONFIDENCES = (0.9, 0.99, 0.999)
SYNTH_STRENGTHS = (1.0, 1.5, 2.0)
FEW_LABELS = (100, 1000)
# d = c + strength * (b - a): Optimus' arithmetic at 1; the transfer sweep finds moves longer
# than the class-mean difference work better, so analogies are swept the same way
ANALOGY_STRENGTHS = (1.0, 1.5, 2.0, 3.0)
SEED = 1


def read_text(path: str) -> list:
    with open(path, encoding="utf-8") as f:
        return [line.rstrip("\n") for line in f]


# ----------------------------------------------------------------------------------------------
# the measurements


def load_hub(checkpoint_dir: str, data: str):
    from fairseq_vae.models.bart_vae import BARTVAEModel

    return BARTVAEModel.from_pretrained(checkpoint_dir, "checkpoint_last.pt", data).eval()


def transfer_outputs(hub, mu, directions, targets: list, method: str, strength: float) -> list:
    """Each sentence's posterior mean (a row of mu) moved to its target value and decoded
    greedily; ``method`` "guided" takes ``strength`` as the confidence."""
    from fairseq_vae.latent_space.steering import move_latents

    guided = method == "guided"
    outputs = [None] * len(targets)
    for to in directions.values:
        idx = [i for i, t in enumerate(targets) if t == to]
        if not idx:
            continue
        z = move_latents(
            mu[idx],
            directions,
            to,
            strength,
            "mean" if guided else method,
            strength if guided else None,
        )
        for i, text in zip(idx, hub.decode(z, beam=1)):
            outputs[i] = text
    return outputs


def measure_yelp(args, paths: dict) -> dict:
    from fairseq_vae.latent_space.steering import fit_directions
    from fairseq_vae.metrics import sample_quality as sq
    from fairseq_vae.metrics.estimators import read_labels
    from fairseq_vae.metrics.transfer_quality import (
        NgramJudge,
        few_label_accuracy,
        g_score,
        source_bleu,
    )

    texts = {s: read_text(os.path.join(args.yelp, f"{s}.txt")) for s in ("train", "valid", "test")}
    labels = {
        s: read_labels(os.path.join(args.yelp, f"{s}.labels.tsv"), len(texts[s]))["sentiment"]
        for s in texts
    }
    harness.log(f"fitting the judge on {len(texts['train'])} training sentences")
    judge = NgramJudge(texts["train"], labels["train"], seed=SEED)
    judge_accuracy = judge.accuracy(texts["test"], labels["test"])
    harness.log(f"judge accuracy on test: {judge_accuracy:.4f}")

    hub = load_hub(paths["vae"], paths["data"])
    lm, _ = sq.load_lm(
        os.path.join(paths["lm"], "checkpoint_last.pt"),
        data=paths["data"],
        dictionary=hub.dictionary,
    )
    chosen = sorted(
        random.Random(SEED).sample(range(len(texts["train"])), args.direction_sentences)
    )
    train_text = [texts["train"][i] for i in chosen]
    train_labels = [labels["train"][i] for i in chosen]
    harness.log(f"encoding {len(chosen)} training and {len(texts['test'])} test sentences")
    train_mu = hub.encode(train_text)[0].cpu()
    test_mu = hub.encode(texts["test"])[0].cpu()
    directions = fit_directions(train_mu, train_labels, "sentiment", SEED)
    other = {v: next(w for w in directions.values if w != v) for v in directions.values}

    def sweep(split: str, mu) -> list:
        """Every (method, strength) on a split: valid chooses the reported point, test reports."""
        sources_ppl = sq.lm_perplexity(lm, texts[split], hub.dictionary)
        targets = [other[v] for v in labels[split]]
        rows = []
        for method, strength in settings:
            harness.log(f"transfer on {split}: {method} {strength}")
            outputs = transfer_outputs(hub, mu, directions, targets, method, strength)
            accuracy = judge.accuracy(outputs, targets)
            bleu = source_bleu(outputs, texts[split])
            ratio = sq.lm_perplexity(lm, outputs, hub.dictionary) / sources_ppl
            rows.append(
                {
                    "corpus": "yelp",
                    "factor": "sentiment",
                    "method": method,
                    "strength": strength,
                    "accuracy": accuracy,
                    "source_bleu": bleu,
                    "lm_ppl_ratio": ratio,
                    "others_kept": None,
                    "g_score": g_score(accuracy, bleu),
                    "examples": [[texts[split][i], outputs[i]] for i in range(5)],
                }
            )
        return rows, sources_ppl

    settings = [("mean", s) for s in STRENGTHS] + [("linear", s) for s in STRENGTHS]
    settings += [("guided", c) for c in CONFIDENCES]
    valid_rows, _ = sweep("valid", hub.encode(texts["valid"])[0].cpu())
    rows, sources_ppl = sweep("test", test_mu)
    reconstructed = hub.decode(test_mu, beam=1)
    few = []
    for n in (*FEW_LABELS, len(chosen)):
        harness.log(f"few labels: {n}")
        draws = FEW_LABEL_DRAWS if n < len(chosen) else 1
        few.append(
            few_label_accuracy(
                train_mu.numpy(),
                train_text,
                train_labels,
                test_mu.numpy(),
                texts["test"],
                labels["test"],
                n,
                draws,
                SEED,
            )
        )
    return {
        "judge_accuracy": judge_accuracy,
        "sources_lm_ppl": sources_ppl,
        "reconstruction_bleu": source_bleu(reconstructed, texts["test"]),
        "reconstruction_judge_keeps": judge.accuracy(reconstructed, labels["test"]),
        "direction_sentences": len(chosen),
        "transfer": rows,
        "transfer_valid": [{k: v for k, v in r.items() if k != "examples"} for r in valid_rows],
        "few_labels": few,
        "evaluation": json.load(open(paths["report"]))["metrics"],
        "iw_samples": args.iw_samples,
        "lm_test_ppl": harness.lm_result(os.path.join(paths["lm"], "test.log"))["ppl"],
        "training": {
            k: harness.train_summary(os.path.join(paths[k], "train.log")) for k in ("vae", "lm")
        },
    }


def measure_synth(args, point: dict) -> dict:
    from fairseq_vae.latent_space.steering import fit_directions
    from fairseq_vae.metrics.estimators import read_labels
    from fairseq_vae.metrics.transfer_quality import grammar_transfer, source_bleu
    from fairseq_vae.synth import grammar as synth_grammar
    from fairseq_vae.synth.corpus import FACTOR_NAMES

    corpus = os.path.join(REPO, "corpus", "synth")
    texts = {s: read_text(os.path.join(corpus, f"{s}.txt")) for s in ("train", "test")}
    labels = {s: read_labels(os.path.join(corpus, f"{s}.labels.tsv"), len(texts[s])) for s in texts}
    hub = load_hub(os.path.dirname(point["checkpoint"]), point["data"])
    train_mu = hub.encode(texts["train"])[0].cpu()
    test_mu = hub.encode(texts["test"])[0].cpu()
    factors = [{f: labels["test"][f][i] for f in FACTOR_NAMES} for i in range(len(texts["test"]))]
    rows = []
    for factor in FACTOR_NAMES:
        directions = fit_directions(train_mu, labels["train"][factor], factor, SEED)
        values = directions.values
        targets = [values[(values.index(f[factor]) + 1) % len(values)] for f in factors]
        settings = [("mean", s) for s in SYNTH_STRENGTHS] + [("linear", s) for s in SYNTH_STRENGTHS]
        settings += [("guided", c) for c in CONFIDENCES]
        for method, strength in settings:
            outputs = transfer_outputs(hub, test_mu, directions, targets, method, strength)
            read = grammar_transfer(outputs, factors, factor, targets)
            rows.append(
                {
                    "corpus": "synth",
                    "factor": factor,
                    "method": method,
                    "strength": strength,
                    "accuracy": read["success"],
                    "source_bleu": source_bleu(outputs, texts["test"]),
                    "lm_ppl_ratio": None,
                    "others_kept": read["others_kept"],
                    "kept_each": read["kept_each"],
                    "grammatical": read["grammatical"],
                    "examples": [[texts["test"][i], targets[i], outputs[i]] for i in range(3)],
                }
            )
            harness.log(f"synth {factor} {method} {strength}: {read}")
    # what the decoder keeps of each factor without any move: the ceiling of "others kept"
    reconstructed = [synth_grammar.recognise(t) for t in hub.decode(test_mu, beam=1)]
    kept_by_reconstruction = {
        f: sum(r is not None and r[f] == s[f] for r, s in zip(reconstructed, factors))
        / len(factors)
        for f in FACTOR_NAMES
    }

    return {
        "transfer": rows,
        "reconstruction_keeps": kept_by_reconstruction,
        "analogies": synth_analogies(hub, texts["test"], factors),
    }


def synth_analogies(hub, test: list, factors: list) -> list:
    """A row per kind of pair and strength (score_analogies' numbers)."""
    rows = []
    for pairs, triples in (
        ("test sentences", corpus_triples(test, factors)),
        ("minimal pairs", minimal_pair_triples(factors)),
    ):
        for strength in ANALOGY_STRENGTHS:
            row = {"pairs": pairs, "strength": strength}
            row.update(score_analogies(hub, triples, test, factors, strength))
            harness.log(f"analogies, {pairs}, strength {strength}: {row['success']:.3f}")
            rows.append(row)
    return rows


def corpus_triples(test: list, factors: list) -> list:
    """(a, b, c's index, factor, b's value) over test sentences: a and b differ in one factor
    (and in whatever else the grammar drew for each), c has another value of it than b."""
    from fairseq_vae.synth.corpus import FACTOR_NAMES

    rng = random.Random(SEED)
    triples = []
    while len(triples) < ANALOGIES:
        a, b, c = (rng.randrange(len(factors)) for _ in range(3))
        differ = [f for f in FACTOR_NAMES if factors[a][f] != factors[b][f]]
        if len(differ) == 1 and factors[c][differ[0]] != factors[b][differ[0]]:
            triples.append((test[a], test[b], c, differ[0], factors[b][differ[0]]))
    return triples


def minimal_pair_triples(factors: list) -> list:
    """(a, b, c's index, factor, b's value) where a and b are a minimal pair: the grammar
    (fairseq_vae.synth.corpus) realises two factor settings that differ in one factor from the
    same random draws, so b is a with only that factor's words changed; c is a test sentence
    with another value of it."""
    from fairseq_vae.synth import corpus as synth_corpus
    from fairseq_vae.synth.corpus import FACTOR_NAMES

    values = {
        "topic": synth_corpus.TOPICS,
        "sentiment": synth_corpus.SENTIMENTS,
        "tense": synth_corpus.TENSES,
        "number": synth_corpus.NUMBERS,
    }
    rng = random.Random(SEED)
    triples = []
    while len(triples) < ANALOGIES:
        f = rng.choice(FACTOR_NAMES)
        a_factors = synth_corpus.sample_factors(rng)
        b_value = rng.choice([v for v in values[f] if v != a_factors[f]])
        draws = rng.randrange(2**31)
        a = synth_corpus.realise(a_factors, random.Random(draws))
        b = synth_corpus.realise(dict(a_factors, **{f: b_value}), random.Random(draws))
        c = rng.randrange(len(factors))
        if factors[c][f] != b_value:
            triples.append((a, b, c, f, b_value))
    return triples


def score_analogies(hub, triples: list, test: list, factors: list, strength: float) -> dict:
    """Decodes z_c + strength (z_b - z_a) for (a, b, c, factor, b's value) and reads d with the
    grammar: success is d with c's factors and b's value of the factor."""
    from fairseq_vae.synth import grammar as synth_grammar
    from fairseq_vae.synth.corpus import FACTOR_NAMES

    outputs = hub.analogy(
        [t[0] for t in triples],
        [t[1] for t in triples],
        [test[t[2]] for t in triples],
        strength=strength,
        beam=1,
    )
    hits = changed = but_sentiment = 0
    for (_, _, c, f, value), out in zip(triples, outputs):
        wanted = dict(factors[c], **{f: value})
        read = synth_grammar.recognise(out) or dict.fromkeys(FACTOR_NAMES)
        hits += all(read[k] == v for k, v in wanted.items())
        changed += read[f] == wanted[f]
        but_sentiment += all(read[k] == v for k, v in wanted.items() if k != "sentiment")
    n = len(triples)
    return {
        "n": n,
        "success": hits / n,
        "changed_factor": changed / n,
        "success_but_sentiment": but_sentiment / n,
        "examples": [[t[0], t[1], test[t[2]], d] for t, d in zip(triples[:5], outputs[:5])],
    }


def model_label(corpus: str, args) -> str:
    """What a measurement's model is called in the table: the Yelp VAE's setting, or the demo's
    model of the shipped corpus (with the options it was trained with, if not its own)."""
    if corpus == "yelp":
        return args.setting
    if not args.synth_demo_args:
        return "the demo's model"
    return f"the demo's recipe with {args.synth_demo_args}"


def measure(args, corpus: str, paths: dict, synth_point: dict, made: dict) -> dict:
    """A corpus's measurement on this run's model, kept in --out so a rerun only reports it."""
    label = model_label(corpus, args)
    kept = os.path.join(args.out, f"control-{corpus}-{harness.setting_dir(label)}.json")
    if os.path.isfile(kept):
        harness.log(f"{corpus}, {label}: measured in an earlier run ({kept})")
    else:
        found = measure_yelp(args, paths) if corpus == "yelp" else measure_synth(args, synth_point)
        found = dict({"corpus": corpus, "model": label, "made": made}, **found)
        json.dump(found, open(kept + ".partial", "w"), indent=1)
        os.replace(kept + ".partial", kept)
    return json.load(open(kept))


def main():
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        epilog=__doc__.split("\n\n", 1)[1],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--corpora", default="yelp;synth", help="';'-separated, of yelp and synth")
    p.add_argument(
        "--yelp",
        default=os.path.join("..", "shared", "data", "yelp"),
        help="the Yelp text folder (train/valid/test .txt and .labels.tsv)",
    )
    p.add_argument("--yelp-out", default=os.path.join(REPO, "benchmarks", "runs", "yelp-cpu"))
    p.add_argument("--out", default=os.path.join(REPO, "benchmarks", "runs", "control-cpu"))
    p.add_argument(
        "--setting", default=harness.CONTROL_YELP_SETTING, choices=list(harness.SETTINGS)
    )
    p.add_argument(
        "--synth-demo-args",
        default="",
        metavar="ARGS",
        help="the shipped corpus: train scripts/demo.py with these options (in --out), such as "
        "'--free-bits 2.0' or '--word-dropout 0.3', instead of using the demo's model",
    )
    p.add_argument("--pretrain-hours", type=float, default=0.75)
    p.add_argument("--iw-samples", type=int, default=100)
    p.add_argument(
        "--slots",
        type=int,
        default=2,
        help="trainings at once, one thread each (1: one at a time, leaving a core to another run)",
    )
    p.add_argument("--direction-sentences", type=int, default=20000)
    p.add_argument("--results", default=os.path.join(REPO, "benchmarks", "results", "control.md"))
    p.add_argument(
        "--keep-other-models",
        action="store_true",
        help="keep the measurements of other models (and corpora) from the existing --results "
        "JSON, so models measured apart share one table",
    )
    p.add_argument(
        "--report",
        action="store_true",
        help="rewrite the table from the --results JSON's measurements, running nothing",
    )
    args = p.parse_args()
    stem = args.results[: -len(".md")]
    if args.report:
        control_report.write_results(args.results, harness.read_results_json(stem)["measurements"])
        return
    corpora = [c.strip() for c in args.corpora.split(";") if c.strip()]
    if set(corpora) - {"yelp", "synth"}:
        p.error(f"--corpora: unknown {sorted(set(corpora) - {'yelp', 'synth'})}")
    if "yelp" in corpora and not harness.SETTINGS[args.setting].get("bart_init"):
        p.error("--setting: a BART-init setting (the Yelp VAE fine-tunes its pretraining)")
    b = dict(harness.BUDGETS["cpu"])
    made = harness.made_by("benchmarks/control.py")
    jobs, paths, synth_point = {}, None, None
    if "yelp" in corpora:
        more, paths = harness.yelp_jobs(args, b)
        jobs.update(more)
    if "synth" in corpora:
        if not args.synth_demo_args:
            folder = os.path.join(REPO, "benchmarks", "runs", "prior-cpu")
        else:
            folder = os.path.join(
                os.path.abspath(args.out), harness.setting_dir(args.synth_demo_args)
            )
        synth_point = harness.synth_jobs(folder, b, shlex.split(args.synth_demo_args))
        # steering needs the VAE only, not the shipped corpus's reference LM
        jobs[synth_point["train_job"]] = synth_point.pop("jobs")[synth_point["train_job"]]
    harness.run_queue(jobs, args.slots)

    os.makedirs(args.out, exist_ok=True)
    measurements = [measure(args, c, paths, synth_point, made) for c in corpora]
    if args.keep_other_models and os.path.isfile(stem + ".json"):
        ours = {(m["corpus"], m["model"]) for m in measurements}
        earlier = harness.read_results_json(stem)["measurements"]
        measurements = [m for m in earlier if (m["corpus"], m["model"]) not in ours] + measurements
    control_report.write_results(args.results, measurements)


if __name__ == "__main__":
    main()
