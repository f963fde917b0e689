#!/usr/bin/env python3
"""Steering with the latent, measured: sentiment transfer on Yelp, transfer of each factor and
analogies on the shipped corpus, and few-label classification from z.

    benchmarks/control.sh                       # trains what is missing, then measures
    benchmarks/control.sh --corpora synth       # the shipped corpus only (minutes)

Models, trained here as the project's other benchmarks train them (resumable; a rerun skips
every finished step):
* Yelp (--yelp, ../shared/data/yelp): a BART denoising-pretrained on its training text
  (benchmarks/pretrained.py's pretraining, --pretrain-hours), bart_vae_small fine-tuned from it
  with benchmarks/ptb.py's setting --setting ("BART init, fb 0.5" by default: transfer must
  keep a sentence's content, so z must carry it; the low-rate "fb 0.1" recipe keeps about 3
  nats of it on short sentences, too little for a BLEU of 30 against the source), the
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
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import prior  # noqa: E402  (the demo model's training)
import ptb  # noqa: E402  (corpus preparation, trainings, evaluations, the job queue)

import pretrained  # noqa: E402  (the denoising pretraining)

REPO = ptb.REPO
STRENGTHS = (0.5, 1.0, 1.5, 2.0, 3.0)
CONFIDENCES = (0.9, 0.99, 0.999)
SYNTH_STRENGTHS = (1.0, 1.5, 2.0)
FEW_LABELS = (100, 1000)
FEW_LABEL_DRAWS = 5
ANALOGIES = 500
# d = c + strength * (b - a): Optimus' arithmetic at 1; the transfer sweep finds moves longer
# than the class-mean difference work better, so analogies are swept the same way
ANALOGY_STRENGTHS = (1.0, 1.5, 2.0, 3.0)
SEED = 1
TARGETS = {
    "yelp_accuracy": 0.9,
    "yelp_bleu": 30.0,
    "yelp_ppl_ratio": 1.5,
    "synth_success": 0.95,
    "synth_kept": 0.9,
    "analogy": 0.8,
}


def log(msg: str):
    print(f"[control {time.strftime('%H:%M:%S')}] {msg}", flush=True)


def read_text(path: str) -> list:
    with open(path, encoding="utf-8") as f:
        return [line.rstrip("\n") for line in f]


# ----------------------------------------------------------------------------------------------
# the trainings


def yelp_jobs(args, b: dict) -> dict:
    """The Yelp pretraining, VAE and LM, and their test evaluations, as run_queue jobs."""
    out = os.path.abspath(args.yelp_out)
    data = ptb.prepare(args.yelp, out)
    bart_dir = os.path.join(out, "bart")
    bart = os.path.join(bart_dir, "checkpoint_last.pt")
    vae = os.path.join(out, "vae", ptb.setting_dir(args.setting))
    lm = os.path.join(out, "lm")
    k = args.iw_samples
    jobs = {
        "pretrain yelp": ptb.train_job(
            [pretrained.pretrain_cmd(data, b, bart_dir, args.pretrain_hours)],
            os.path.join(bart_dir, "train.log"),
        ),
        "train yelp lm": ptb.train_job(
            [ptb.lm_train_cmd(data, b, b["max_update"], lm)], os.path.join(lm, "train.log")
        ),
        "train yelp vae": ptb.train_job(
            ptb.vae_train_cmds(data, b, ptb.SETTINGS[args.setting], b["max_update"], vae, bart),
            os.path.join(vae, "train.log"),
            after=["pretrain yelp"],
        ),
    }
    jobs["eval yelp vae"] = ptb.vae_eval_job(
        data,
        os.path.join(vae, "checkpoint_last.pt"),
        "test",
        k,
        os.path.join(vae, f"test-K{k}.json"),
        b,
        after=["train yelp vae"],
    )
    jobs["eval yelp lm"] = ptb.lm_eval_job(
        data,
        os.path.join(lm, "checkpoint_last.pt"),
        os.path.join(lm, "test.log"),
        b,
        after=["train yelp lm"],
    )
    paths = {"data": data, "vae": vae, "lm": lm, "report": os.path.join(vae, f"test-K{k}.json")}
    return jobs, paths


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

    texts = {s: read_text(os.path.join(args.yelp, f"{s}.txt")) for s in ("train", "test")}
    labels = {
        s: read_labels(os.path.join(args.yelp, f"{s}.labels.tsv"), len(texts[s]))["sentiment"]
        for s in texts
    }
    log(f"fitting the judge on {len(texts['train'])} training sentences")
    judge = NgramJudge(texts["train"], labels["train"], seed=SEED)
    judge_accuracy = judge.accuracy(texts["test"], labels["test"])
    log(f"judge accuracy on test: {judge_accuracy:.4f}")

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
    log(f"encoding {len(chosen)} training and {len(texts['test'])} test sentences")
    train_mu = hub.encode(train_text)[0].cpu()
    test_mu = hub.encode(texts["test"])[0].cpu()
    directions = fit_directions(train_mu, train_labels, "sentiment", SEED)
    sources_ppl = sq.lm_perplexity(lm, texts["test"], hub.dictionary)
    other = {v: next(w for w in directions.values if w != v) for v in directions.values}
    targets = [other[v] for v in labels["test"]]

    rows = []
    settings = [("mean", s) for s in STRENGTHS] + [("linear", s) for s in STRENGTHS]
    settings += [("guided", c) for c in CONFIDENCES]
    for method, strength in settings:
        log(f"transfer: {method} {strength}")
        outputs = transfer_outputs(hub, test_mu, directions, targets, method, strength)
        accuracy = judge.accuracy(outputs, targets)
        bleu = source_bleu(outputs, texts["test"])
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
                "examples": [[texts["test"][i], outputs[i]] for i in range(5)],
            }
        )
    reconstructed = hub.decode(test_mu, beam=1)
    few = []
    for n in (*FEW_LABELS, len(chosen)):
        log(f"few labels: {n}")
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
        "few_labels": few,
        "evaluation": json.load(open(paths["report"]))["metrics"],
        "iw_samples": args.iw_samples,
        "lm_test_ppl": ptb.lm_result(os.path.join(paths["lm"], "test.log"))["ppl"],
        "training": {
            k: ptb.train_summary(os.path.join(paths[k], "train.log")) for k in ("vae", "lm")
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
            log(f"synth {factor} {method} {strength}: {read}")
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
            log(f"analogies, {pairs}, strength {strength}: {row['success']:.3f}")
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


# ----------------------------------------------------------------------------------------------
# the report


def fmt(value, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def best_yelp(rows: list) -> dict:
    """The Yelp row that meets the most targets at once, then the highest G-score."""

    def met(r):
        return (
            (r["accuracy"] >= TARGETS["yelp_accuracy"])
            + (r["source_bleu"] >= TARGETS["yelp_bleu"])
            + (r["lm_ppl_ratio"] <= TARGETS["yelp_ppl_ratio"])
        )

    return max(rows, key=lambda r: (met(r), r["g_score"]))


def model_label(corpus: str, args) -> str:
    """What a measurement's model is called in the table: the Yelp VAE's setting, or the demo's
    model of the shipped corpus (with the options it was trained with, if not its own)."""
    if corpus == "yelp":
        return args.setting
    if not args.synth_demo_args:
        return "the demo's model"
    return f"the demo's recipe with {args.synth_demo_args}"


def measurement_name(m: dict) -> str:
    return f"{m['corpus']}, {m['model']}"


def markdown(measurements: list) -> str:
    lines = [
        "# Steering with the latent",
        "",
        "Made by (each measurement by one run; a rerun with --keep-other-models replaces the "
        "measurements of its own models and keeps the others):",
        "",
        *ptb.made_lines(measurements, measurement_name),
        "",
        "Greedy decoding; transfer moves each test sentence to the other "
        "value (Yelp) or the next value of the factor (the shipped corpus). method: mean = "
        "the class-mean difference times the strength; linear = that move projected on the "
        "latent classifier's normal; guided = the smallest move the latent classifier reads "
        "as the target with the given probability (strength column). accuracy: the judge "
        "(Yelp) or the grammar (shipped corpus) reads the target value; source BLEU: each "
        "output against its own source; LM PPL ratio: the reference LM's PPL of the outputs "
        "over the sources'; G: sqrt(100 accuracy x BLEU).",
        "",
    ]
    for m in measurements:
        lines += yelp_section(m) if m["corpus"] == "yelp" else synth_section(m)
    return "\n".join(lines) + "\n"


def yelp_section(m: dict) -> list:
    e = m["evaluation"]
    lines = [
        f"## Yelp ({m['model']}, {m['direction_sentences']} training sentences for the directions)",
        "",
        f"Judge (word 1-2-gram TF-IDF logistic regression on the training text): test accuracy "
        f"{m['judge_accuracy']:.3f}. VAE on test: IW-PPL {e['iw_ppl_word']:.2f} "
        f"(K={m['iw_samples']}), KL {e['kl']:.2f}, MI {e['mi']:.2f}, AU {e['au']}, BLEU "
        f"{e.get('recon_bleu', float('nan')):.2f}; same-size transformer_lm PPL "
        f"{m['lm_test_ppl']:.2f}. Reconstructions: BLEU {m['reconstruction_bleu']:.1f}, "
        f"the judge keeps the source's sentiment in {m['reconstruction_judge_keeps']:.3f}.",
        "",
        "| method | strength | accuracy | source BLEU | LM PPL ratio | G |",
        "|---|---|---|---|---|---|",
    ]
    for r in m["transfer"]:
        lines.append(
            f"| {r['method']} | {r['strength']} | {r['accuracy']:.3f} | "
            f"{r['source_bleu']:.1f} | {r['lm_ppl_ratio']:.2f} | {r['g_score']:.1f} |"
        )
    best = best_yelp(m["transfer"])
    lines += [
        "",
        f"Best operating point: {best['method']} {best['strength']} (accuracy "
        f"{best['accuracy']:.3f}, BLEU {best['source_bleu']:.1f}, PPL ratio "
        f"{best['lm_ppl_ratio']:.2f}); target: accuracy >= 0.90 and BLEU >= 30 at once, "
        "PPL ratio <= 1.5.",
        "",
        f"Few labels (test accuracy, mean of {FEW_LABEL_DRAWS} draws):",
        "",
        "| labels | latent | n-gram |",
        "|---|---|---|",
    ]
    for r in m["few_labels"]:
        lines.append(f"| {r['labels']} | {r['latent']:.3f} | {r['ngram']:.3f} |")
    return lines + [""]


def synth_section(m: dict) -> list:
    keeps = m["reconstruction_keeps"]
    lines = [
        f"## The shipped corpus ({m['model']})",
        "",
        "Each factor's share kept by plain reconstruction (greedy from the posterior mean), "
        "the ceiling of 'kept' below: "
        + ", ".join(f"{f} {v:.3f}" for f, v in keeps.items())
        + ". success: the grammar reads the target value; kept: every other factor at the "
        "source's value, then each one's own share.",
        "",
        "| factor | method | strength | success | others kept | "
        + " | ".join(f"{f} kept" for f in keeps)
        + " | source BLEU |",
        "|---|---|---|---|---|" + "---|" * len(keeps) + "---|",
    ]
    for r in m["transfer"]:
        each = " | ".join(fmt(r["kept_each"].get(f), ".3f") for f in keeps)
        lines.append(
            f"| {r['factor']} | {r['method']} | {r['strength']} | {r['accuracy']:.3f} "
            f"| {r['others_kept']:.3f} | {each} | {r['source_bleu']:.1f} |"
        )
    lines += [
        "",
        "Analogies a : b :: c : d (b differs from a in one factor; c has another value of it "
        f"than b; {ANALOGIES} triples of each kind), d decoded from z_c + strength "
        "(z_b - z_a). Pairs: two test sentences, which also differ in whatever else the "
        "grammar drew for each, or minimal pairs, which the grammar realises from the same "
        "draws, so that b is a with only the factor's words changed. success: d has c's "
        "factors with b's value of the changed one (target >= 0.8).",
        "",
        "| pairs | strength | success | changed factor right | all but sentiment right |",
        "|---|---|---|---|---|",
    ]
    for a in m["analogies"]:
        lines.append(
            f"| {a['pairs']} | {a['strength']} | {a['success']:.3f} "
            f"| {a['changed_factor']:.3f} | {a['success_but_sentiment']:.3f} |"
        )
    return lines + [""]


def plot(path: str, measurements: list):
    """Yelp's trade-off curves, accuracy against source BLEU, one per model and method."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4.5))
    for m in measurements:
        rows = m["transfer"]
        for method in dict.fromkeys(r["method"] for r in rows):
            mine = [r for r in rows if r["method"] == method]
            ax.plot(
                [r["source_bleu"] for r in mine],
                [r["accuracy"] for r in mine],
                "o-",
                label=f"{m['model']}: {method}",
            )
            for r in mine:
                ax.annotate(str(r["strength"]), (r["source_bleu"], r["accuracy"]), fontsize=7)
    ax.axhline(TARGETS["yelp_accuracy"], color="grey", lw=0.8)
    ax.axvline(TARGETS["yelp_bleu"], color="grey", lw=0.8)
    ax.set_xlabel("BLEU against the source")
    ax.set_ylabel("transfer accuracy (judge)")
    ax.set_title("Yelp sentiment transfer")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def best_analogy(measurements: list):
    """The issue's {n, success}: the best row of every model's sweep, with its model, pairs and
    strength."""
    rows = [dict(a, model=m["model"]) for m in measurements for a in m["analogies"]]
    if not rows:
        return None
    best = max(rows, key=lambda a: a["success"])
    return {k: best[k] for k in ("n", "success", "model", "pairs", "strength")}


def control_json(measurements: list) -> dict:
    """The issue's schema (judge accuracy, transfer rows, analogy, few labels; each row names
    its model), and every measurement whole, from which --report rewrites the table."""
    yelp = [m for m in measurements if m["corpus"] == "yelp"]
    synth = [m for m in measurements if m["corpus"] == "synth"]
    keys = (
        "corpus",
        "factor",
        "method",
        "strength",
        "accuracy",
        "source_bleu",
        "lm_ppl_ratio",
        "others_kept",
    )
    return {
        "judge_accuracy": yelp[0]["judge_accuracy"] if yelp else None,
        "transfer": [
            dict({k: r[k] for k in keys}, model=m["model"])
            for m in measurements
            for r in m["transfer"]
        ],
        "analogy": best_analogy(synth),
        "analogies": [
            dict({k: v for k, v in a.items() if k != "examples"}, model=m["model"])
            for m in synth
            for a in m["analogies"]
        ],
        "few_labels": [dict(r, model=m["model"]) for m in yelp for r in m["few_labels"]],
        "measurements": measurements,
    }


def measure(args, corpus: str, paths: dict, synth_point: dict, made: dict) -> dict:
    """A corpus's measurement on this run's model, kept in --out so a rerun only reports it."""
    label = model_label(corpus, args)
    kept = os.path.join(args.out, f"control-{corpus}-{ptb.setting_dir(label)}.json")
    if os.path.isfile(kept):
        log(f"{corpus}, {label}: measured in an earlier run ({kept})")
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
    p.add_argument("--setting", default="BART init, fb 0.5", choices=list(ptb.SETTINGS))
    p.add_argument(
        "--synth-demo-args",
        default="",
        metavar="ARGS",
        help="the shipped corpus: train scripts/demo.py with these options (in --out), such as "
        "'--free-bits 2.0' or '--word-dropout 0.3', instead of using the demo's model",
    )
    p.add_argument("--pretrain-hours", type=float, default=0.75)
    p.add_argument("--iw-samples", type=int, default=100)
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
        write_results(args.results, json.load(open(stem + ".json"))["measurements"])
        return
    corpora = [c.strip() for c in args.corpora.split(";") if c.strip()]
    if set(corpora) - {"yelp", "synth"}:
        p.error(f"--corpora: unknown {sorted(set(corpora) - {'yelp', 'synth'})}")
    if "yelp" in corpora and not ptb.SETTINGS[args.setting].get("bart_init"):
        p.error("--setting: a BART-init setting (the Yelp VAE fine-tunes its pretraining)")
    b = dict(ptb.BUDGETS["cpu"])
    made = ptb.made_by("benchmarks/control.py")
    jobs, paths, synth_point = {}, None, None
    if "yelp" in corpora:
        more, paths = yelp_jobs(args, b)
        jobs.update(more)
    if "synth" in corpora:
        if not args.synth_demo_args:
            folder = os.path.join(REPO, "benchmarks", "runs", "prior-cpu")
        else:
            folder = os.path.join(os.path.abspath(args.out), ptb.setting_dir(args.synth_demo_args))
        synth_point = prior.synth_jobs(folder, b, shlex.split(args.synth_demo_args))
        # steering needs the VAE only, not the shipped corpus's reference LM
        jobs[synth_point["train_job"]] = synth_point.pop("jobs")[synth_point["train_job"]]
    ptb.run_queue(jobs, 2)

    os.makedirs(args.out, exist_ok=True)
    measurements = [measure(args, c, paths, synth_point, made) for c in corpora]
    if args.keep_other_models and os.path.isfile(stem + ".json"):
        ours = {(m["corpus"], m["model"]) for m in measurements}
        earlier = json.load(open(stem + ".json"))["measurements"]
        measurements = [m for m in earlier if (m["corpus"], m["model"]) not in ours] + measurements
    write_results(args.results, measurements)


def write_results(path: str, measurements: list):
    """The markdown table, the JSON with the same numbers and Yelp's trade-off plot."""
    measurements = sorted(measurements, key=lambda m: m["corpus"] != "yelp")
    with open(path, "w") as f:
        f.write(markdown(measurements))
    stem = path[: -len(".md")]
    json.dump(control_json(measurements), open(stem + ".json", "w"), indent=1)
    yelp = [m for m in measurements if m["corpus"] == "yelp"]
    if yelp:
        plot(stem + ".png", yelp)
    print(open(path).read())
    log(f"wrote {path} and {stem}.json")


if __name__ == "__main__":
    main()
