#!/usr/bin/env python3
"""The conditional VAE on the shipped grammar's paraphrases, where the answer is known:
bart_cvae against the same BART fine-tuned as a plain seq2seq.

    benchmarks/cvae.py                      # trains what is missing, then measures (resumable)
    benchmarks/cvae.py --cvae-args "--bow-loss-weight 1.0" --out DIR --keep-other-settings

Data (scripts/make_pairs.py, in --out): a source fixes topic and tense, a target draws the rest;
test sources have --references targets. Both models start from the shipped BART for --updates
updates with the same batches, optimiser and seed: bart_cvae_small with SETTING, and fairseq's
`bart` at that size on the translation task. Decodings: the CVAE's --samples z ~ p(z|c) each
greedy, and beam 5 from the prior mean; the seq2seq's beam 5, top-p 0.9 (--samples a source)
and diverse beam search (--samples groups). Each is scored by metrics/conditional_quality
against the source's references and by the grammar (grammatical, topic and tense kept, each
free factor's total variation from the grammar's even draw); a "human" row scores --samples
targets the grammar draws. PPL: the CVAE's IW-PPL of p(x|c), the seq2seq's, per word.
Runs go under --out (ignored by git); the table to --results (.md, .json, .png: self-BLEU
against multi-reference BLEU), with the cost ratios of benchmarks/overhead.py --pairs.
"""

import argparse
import json
import math
import os
import random
import re
import shlex
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness  # noqa: E402

REPO = harness.REPO
SHIPPED_BART = os.path.join(REPO, "pretrained", "bart-synth.pt")
SHIPPED_DATA = os.path.join(REPO, "data-bin", "synth")
# the recommended recipe of the sentence VAE, with the conditional prior
SETTING = ["--latent-dim", "32", "--free-bits", "0.15", "--word-dropout", "0.2"]
SETTING += harness.SCHEDULES["cyclical"]
PAIRS = ["--source-lang", "src", "--target-lang", "tgt"]
SHAPE = (  # the shipped BART's dimensions (bart_base's options)
    "--encoder-embed-dim 128 --decoder-embed-dim 128 --encoder-ffn-embed-dim 512 "
    "--decoder-ffn-embed-dim 512 --encoder-layers 2 --decoder-layers 2 --encoder-attention-heads "
    "4 --decoder-attention-heads 4 --max-source-positions 256 --max-target-positions 256"
).split()
MAX_LEN_B = 40
TARGETS = {"grammatical": 0.95, "kept": 0.95, "free_tv": 0.10, "self_bleu_over_human": 10.0}


def data_jobs(args) -> dict:
    raw, bins = os.path.join(args.out, "raw"), os.path.join(args.out, "data-bin")
    make = [
        sys.executable,
        os.path.join(REPO, "scripts", "make_pairs.py"),
        "--out",
        raw,
        "--test",
        str(args.test_sources),
        "--references",
        str(args.references),
    ]
    prepare = [
        "env",
        f"DATA_BIN={bins}",
        "bash",
        os.path.join(REPO, "scripts", "prepare_data.sh"),
        raw,
        "pairs",
        "--pairs",
        "--like",
        SHIPPED_DATA,
    ]
    return {"pairs": harness.train_job([make, prepare], os.path.join(args.out, "data.log"))}


def setting_label(args) -> str:
    """The CVAE's setting as the table names it: the recipe, and --cvae-args if any."""
    extra = f", {args.cvae_args}" if args.cvae_args else ""
    return f"BART init, fb 0.15, word dropout 0.2{extra}"


def train_cmd(args, b, model: str, save_dir: str) -> list:
    data = os.path.join(args.out, "data-bin", "pairs")
    common = harness.common_train_args(b, args.updates, save_dir)
    start = ["--finetune-from-model", SHIPPED_BART]
    train = [os.path.join(harness.BIN, "fairseq-train"), data, *PAIRS]
    if model == "bart_cvae":
        recipe = "--task text_vae --arch bart_cvae_small --criterion elbo".split() + SETTING
        recipe += shlex.split(args.cvae_args)
    else:
        recipe = "--task translation --arch bart_base --criterion cross_entropy".split()
        recipe += [*SHAPE, "--share-all-embeddings"]
    return train + recipe + start + common


DECODINGS = {  # {model: {decoding: its fairseq-generate options for n outputs a source}}
    "bart_cvae": {
        "prior-greedy": lambda n: f"--latent-source prior --latent-samples {n} --beam 1".split(),
        "prior-mean-beam5": lambda n: "--latent-source prior-mean --beam 5".split(),
    },
    "seq2seq": {
        "beam5": lambda n: "--beam 5".split(),
        "top-p": lambda n: f"--sampling --sampling-topp 0.9 --beam {n} --nbest {n}".split(),
        # fairseq-fixed's diverse beam search indexes its group-overlap buffer (sized by the
        # batch) by sentence id: it works only with the whole split in one batch
        "diverse-beam": lambda n: (
            f"--beam {n} --nbest {n} --diverse-beam-groups {n} --batch-size 100000 "
            "--max-tokens 1000000"
        ).split(),
    },
}


def generate_job(args, model: str, decoding: str) -> dict:
    d = os.path.join(args.out, model)
    # the translation task does not read the data folder's spm.model by itself
    spm = [
        "--bpe",
        "sentencepiece",
        "--sentencepiece-model",
        os.path.join(SHIPPED_DATA, "spm.model"),
    ]
    task = ["--task", "text_vae"] if model == "bart_cvae" else ["--task", "translation", *spm]
    cmd = [
        os.path.join(harness.BIN, "fairseq-generate"),
        os.path.join(args.out, "data-bin", "pairs"),
        "--user-dir",
        os.path.join(REPO, "fairseq_vae"),
        *task,
        *PAIRS,
        "--path",
        os.path.join(d, "checkpoint_last.pt"),
        "--gen-subset",
        "test",
        "--cpu",
        "--max-tokens",
        "4096",
        "--max-len-b",
        str(MAX_LEN_B),
        "--seed",
        str(harness.SEED),
        *DECODINGS[model][decoding](args.samples),
    ]
    out = os.path.join(d, f"generate-{decoding}.txt")
    return {
        "cmds": [cmd, ["touch", out + ".done"]],
        "log": out,
        "done": out + ".done",
        "after": [f"train {model}"],
    }


def score_jobs(args) -> dict:
    data = os.path.join(args.out, "data-bin", "pairs")
    cvae = os.path.join(args.out, "bart_cvae")
    report = os.path.join(cvae, "test-eval.json")
    cvae_eval = [
        os.path.join(harness.BIN, "fairseq-vae-eval"),
        data,
        "--user-dir",
        os.path.join(REPO, "fairseq_vae"),
        "--task",
        "text_vae",
        *PAIRS,
        "--path",
        os.path.join(cvae, "checkpoint_last.pt"),
        "--gen-subset",
        "test",
        "--cpu",
        "--iw-samples",
        str(args.iw_samples),
        "--max-len-b",
        str(MAX_LEN_B),
        "--results-json",
        report + ".partial",
    ]
    seq = os.path.join(args.out, "seq2seq")
    validate = [
        os.path.join(harness.BIN, "fairseq-validate"),
        data,
        "--user-dir",  # its safe loading of checkpoints (weights_only with the allow-list)
        os.path.join(REPO, "fairseq_vae"),
        "--task",
        "translation",
        *PAIRS,
        "--path",
        os.path.join(seq, "checkpoint_last.pt"),
        "--valid-subset",
        "test",
        "--cpu",
        "--max-tokens",
        "4096",
    ]
    return {
        "eval bart_cvae": {
            "cmds": [cvae_eval, ["mv", report + ".partial", report]],
            "log": os.path.join(cvae, "test-eval.log"),
            "done": report,
            "after": ["train bart_cvae"],
        },
        "validate seq2seq": harness.train_job(
            [validate], os.path.join(seq, "validate", "train.log"), after=["train seq2seq"]
        ),
    }


def cost_job(args, after: list) -> dict:
    """benchmarks/overhead.py --pairs on this data, alone (after every other job: timings)."""
    data = os.path.join(args.out, "data-bin", "pairs")
    log = os.path.join(args.out, "cost", "overhead.log")
    cmd = [sys.executable, os.path.join(REPO, "benchmarks", "overhead.py"), "--pairs", "--data",
           data, "--updates", "40"]  # fmt: skip
    return {"cmds": [cmd, ["touch", log + ".done"]], "log": log, "done": log + ".done",
            "after": after}  # fmt: skip


def read_cost(args) -> dict:
    """The ratios of overhead.py's table (bart_cvae over BART): update time, generation speed
    (sentences a second at a fixed length), peak training memory."""
    text = open(os.path.join(args.out, "cost", "overhead.log")).read()
    ratio = {}
    for key, label in (("update_ratio", "ms per update"), ("memory_ratio", "peak training"),
                       ("generation_ratio", "sent/s, fixed length")):  # fmt: skip
        ratio[key] = float(re.findall(rf"^{re.escape(label)}.* ([0-9.]+)$", text, re.M)[-1])
    return ratio


def parse_generate(path: str) -> dict:
    """{sentence id: (source, [hypotheses in order])} of a fairseq-generate log: its last run
    (run_logged appends, and starts each command with a "$ command" line)."""
    sources, hyps = {}, {}
    runs = re.split(r"^\$ ", open(path, encoding="utf-8").read(), flags=re.M)
    last = [run for run in runs if "fairseq-generate" in run.split("\n", 1)[0]][-1]
    for line in last.splitlines():
        m = re.match(r"^([SD])-(\d+)\t(.*)$", line)  # D: the detokenised hypothesis
        if not m:
            continue
        kind, i, rest = m[1], int(m[2]), m[3]
        if kind == "S":
            sources[i] = rest
        else:
            hyps.setdefault(i, []).append(rest.split("\t", 1)[1] if "\t" in rest else "")
    return {i: (sources[i], hyps.get(i, [])) for i in sorted(sources)}


def test_references(args) -> dict:
    """{source text: its references}, the test split as make_pairs wrote it."""
    raw = os.path.join(args.out, "raw")
    sources = open(os.path.join(raw, "test.src"), encoding="utf-8").read().splitlines()
    targets = open(os.path.join(raw, "test.tgt"), encoding="utf-8").read().splitlines()
    grouped = {}
    for s, t in zip(sources, targets):
        grouped.setdefault(s, []).append(t)
    return grouped


def grammar_measures(sources: list, outputs: list) -> dict:
    """Grammatical share; topic and tense kept (of all outputs); each free factor's total
    variation from the grammar's uniform draw (over the grammatical outputs)."""
    from fairseq_vae.metrics import sample_quality as sq
    from fairseq_vae.synth import corpus as synth_corpus
    from fairseq_vae.synth import grammar as synth_grammar
    from fairseq_vae.synth.paraphrases import FREE, KEPT

    read = [[synth_grammar.recognise(o) for o in outs] for outs in outputs]
    flat = [(synth_grammar.recognise(s), r) for s, rs in zip(sources, read) for r in rs]
    kept = {
        k: sum(r is not None and src is not None and r[k] == src[k] for src, r in flat) / len(flat)
        for k in KEPT
    }
    values = {"sentiment": synth_corpus.SENTIMENTS, "number": synth_corpus.NUMBERS}
    tv = {}
    for f in FREE:
        counts = {}
        for _, r in flat:
            if r is not None and r.get(f) is not None:
                counts[r[f]] = counts.get(r[f], 0) + 1
        tv[f] = sq.total_variation(counts, {v: 1 for v in values[f]}) if counts else None
    grammatical = sum(r is not None for _, r in flat) / len(flat)
    return {"grammatical": grammatical, "kept": kept, "free_factor_tv": tv}


def text_row(model, decoding, setting, sources, outputs, references) -> dict:
    from fairseq_vae.metrics import conditional_quality as cq

    pr = cq.precision_recall_bleu(outputs, references)
    n = max(len(o) for o in outputs)
    return {
        "corpus": "synth",
        "model": model,
        "setting": setting,
        "decoding": decoding,
        "samples_per_source": n,
        "ppl_word": None,
        "kl": None,
        "au": None,
        "multi_ref_bleu": cq.multi_reference_bleu(outputs, references),
        "precision_bleu": pr["precision"],
        "recall_bleu": pr["recall"],
        "self_bleu": cq.mean_self_bleu(outputs) if n > 1 else None,
        "distinct_2": cq.distinct(outputs, 2),
        "source_bleu": cq.source_bleu(outputs, sources),
        **grammar_measures(sources, outputs),
        "judge_accuracy": None,
    }


def human_row(args, references: dict) -> dict:
    """--samples targets the grammar draws for each test source, scored as a system's."""
    from fairseq_vae.synth import grammar as synth_grammar
    from fairseq_vae.synth.paraphrases import paraphrase_targets

    rng = random.Random(f"{harness.SEED}:human")
    sources = list(references)
    outputs = [
        [t for t, _ in paraphrase_targets(synth_grammar.recognise(s), args.samples, rng)]
        for s in sources
    ]
    return text_row(
        "human",
        "reference",
        "the grammar's own draws",
        sources,
        outputs,
        [references[s] for s in sources],
    )


def rows(args) -> list:
    references = test_references(args)
    found = [human_row(args, references)]
    for model, decodings in DECODINGS.items():
        for decoding in decodings:
            parsed = parse_generate(os.path.join(args.out, model, f"generate-{decoding}.txt"))
            firsts = {}
            for source, hyps in parsed.values():  # one entry per source text
                firsts.setdefault(source, hyps)
            sources = [s for s in references if s in firsts]
            row = text_row(
                model,
                decoding,
                setting_label(args) if model == "bart_cvae" else "fairseq bart, translation",
                sources,
                [firsts[s] for s in sources],
                [references[s] for s in sources],
            )
            found.append(row)
    report = json.load(open(os.path.join(args.out, "bart_cvae", "test-eval.json")))["metrics"]
    seq_ppl = validate_ppl_word(args)
    for row in found:
        if row["model"] == "bart_cvae":
            row.update(ppl_word=report["iw_ppl_word"], kl=report["kl"], au=report["au"])
        elif row["model"] == "seq2seq":
            row["ppl_word"] = seq_ppl
    return found


def validate_ppl_word(args) -> float:
    """fairseq-validate's test loss (bits a sentencepiece token, </s> included) as a perplexity
    per word (+1 a sentence), fairseq-vae-eval's unit: the same total NLL over other units."""
    import sentencepiece

    log = open(os.path.join(args.out, "seq2seq", "validate", "train.log")).read()
    loss = float(re.findall(r"valid on 'test' subset \| loss ([0-9.]+)", log)[-1])
    sp = sentencepiece.SentencePieceProcessor(model_file=os.path.join(SHIPPED_DATA, "spm.model"))
    targets = open(os.path.join(args.out, "raw", "test.tgt"), encoding="utf-8").read().splitlines()
    tokens = sum(len(sp.encode(t)) + 1 for t in targets)
    words = sum(len(t.split()) + 1 for t in targets)
    return math.exp(loss * math.log(2) * tokens / words)


def row_name(r: dict) -> str:
    return f"{r['model']}, {r['setting']}"


def row_key(r: dict) -> tuple:
    return r["model"], r["setting"], r["decoding"]


def markdown(args, table: list) -> str:
    fmt = harness.fmt
    lines = [
        "# The conditional VAE on the shipped grammar's paraphrases",
        "",
        *harness.made_lines(table, row_name),
        "",
        f"{args.test_sources} test sources with {args.references} references each; "
        f"{args.samples} outputs a source for the sampling decodings; {args.updates} updates "
        "each from the shipped BART. PPL: per word (+1 a sentence) of the test targets, IW-PPL "
        f"of p(x|c) with K={args.iw_samples} for bart_cvae. BLEU-4 on 0-100.",
        "",
        "| model | setting | decoding | N | PPL | KL | AU | multi-ref BLEU | precision / recall "
        "BLEU | self-BLEU | distinct-2 | BLEU to source | grammatical | topic / tense kept | TV "
        "sentiment / number |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in table:
        tv = r["free_factor_tv"]
        lines.append(
            f"| {r['model']} | {r['setting']} | {r['decoding']} | {r['samples_per_source']} | "
            f"{fmt(r['ppl_word'], '.3f')} | {fmt(r['kl'], '.2f')} | {fmt(r['au'], 'd')} | "
            f"{r['multi_ref_bleu']:.1f} | {r['precision_bleu']:.1f} / {r['recall_bleu']:.1f} | "
            f"{fmt(r['self_bleu'], '.1f')} | {fmt(r['distinct_2'], '.3f')} | "
            f"{r['source_bleu']:.1f} | {r['grammatical']:.3f} | {r['kept']['topic']:.3f} / "
            f"{r['kept']['tense']:.3f} | {fmt(tv['sentiment'], '.3f')} / "
            f"{fmt(tv['number'], '.3f')} |"
        )
    cost = read_cost(args)
    lines += [
        "",
        "Cost (benchmarks/overhead.py --pairs: the same batches, alternating, 40 timed updates): "
        f"a bart_cvae update {cost['update_ratio']:.2f}x a seq2seq update, generation from the "
        f"prior {cost['generation_ratio']:.2f}x the seq2seq's greedy speed, peak training "
        f"memory {cost['memory_ratio']:.2f}x.",
    ]
    return "\n".join(lines) + "\n"


def plot(path: str, table: list):
    plt = harness.pyplot()
    fig, ax = plt.subplots(figsize=(6, 4.5))
    for r in table:
        if r["self_bleu"] is not None:
            ax.scatter(r["self_bleu"], r["multi_ref_bleu"], label=f"{r['model']}, {r['decoding']}")
    ax.set(
        xlabel="self-BLEU among a source's outputs (lower: more diverse)",
        ylabel="multi-reference BLEU",
        title="shipped grammar's paraphrases",
    )
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main():
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        epilog=__doc__.split("\n\n", 1)[1],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--out", default=os.path.join(REPO, "benchmarks", "runs", "cvae-cpu"))
    p.add_argument("--results", default=os.path.join(REPO, "benchmarks", "results", "cvae.md"))
    p.add_argument("--updates", type=int, default=1600)
    p.add_argument(
        "--cvae-args",
        default="",
        help="more bart_cvae options after the recipe's (they win), e.g. a remedy against a z "
        "the decoder leaves unused: '--bow-loss-weight 1.0 --free-bits 0.5'",
    )
    p.add_argument("--samples", type=int, default=10, help="outputs a source (z, samples, groups)")
    p.add_argument("--test-sources", type=int, default=200)
    p.add_argument("--references", type=int, default=4)
    p.add_argument("--iw-samples", type=int, default=100)
    p.add_argument("--report", action="store_true", help="rewrite the table from its JSON")
    p.add_argument(
        "--keep-other-settings",
        action="store_true",
        help="keep the rows of other bart_cvae settings from the existing --results JSON (each "
        "row names the run that made it), so settings run apart share one table",
    )
    args = p.parse_args()
    args.out = os.path.abspath(args.out)
    b = dict(harness.BUDGETS["cpu"])
    if not args.report:
        jobs = data_jobs(args)
        for model in ("bart_cvae", "seq2seq"):
            d = os.path.join(args.out, model)
            jobs[f"train {model}"] = harness.train_job(
                [train_cmd(args, b, model, d)], os.path.join(d, "train.log"), after=["pairs"]
            )
        for model, decodings in DECODINGS.items():
            for decoding in decodings:
                jobs[f"generate {model} {decoding}"] = generate_job(args, model, decoding)
        jobs.update(score_jobs(args))
        jobs["cost"] = cost_job(args, after=list(jobs))
        harness.run_queue(jobs, 2)
    stem = args.results[: -len(".md")]
    if args.report:  # the rows as the runs that made them wrote them
        table = harness.read_results_json(stem)["rows"]
    else:
        made = harness.made_by("benchmarks/cvae.py")
        table = [dict(r, made=made) for r in rows(args)]
    if args.keep_other_settings and os.path.isfile(stem + ".json"):
        # this run adds its bart_cvae rows; the rows of the shared models stay the earlier run's
        earlier = harness.read_results_json(stem)["rows"]
        new = [
            r for r in table if r["model"] == "bart_cvae" or row_key(r) not in map(row_key, earlier)
        ]
        table = [r for r in earlier if row_key(r) not in {row_key(o) for o in new}] + new
    with open(args.results, "w") as f:
        f.write(markdown(args, table))
    harness.write_results_json(stem, {"rows": table, "cost": read_cost(args), "targets": TARGETS})
    plot(stem + ".png", table)
    print(open(args.results).read())
    harness.log(f"wrote {args.results}, {stem}.json and {stem}.png")


if __name__ == "__main__":
    main()
