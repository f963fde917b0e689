#!/usr/bin/env python3
"""The conditional VAE against the same BART fine-tuned as a plain seq2seq, on paraphrases: the
shipped grammar's, where the answer is known (--corpus synth), and Multi30k's captions
(--corpus multi30k).

    benchmarks/cvae.py                      # trains what is missing, then measures (resumable)
    benchmarks/cvae.py --cvae-args "--bow-loss-weight 1.0" --out DIR --keep-other-settings
    benchmarks/cvae.py --corpus multi30k    # ../shared/data/multi30k (--multi30k)

Data, in --out: synth, scripts/make_pairs.py (a source fixes topic and tense, a target draws the
rest; test sources have --references targets) in the shipped corpus's segmentation; multi30k,
scripts/make_caption_pairs.py (every ordered pair of two captions of a training image; a test
image's source caption rotating, the other four its references), sentencepiece trained on the
training captions. Start: synth, the shipped BART; multi30k, a BART denoising-pretrained on the
training captions here (--pretrain-hours). Both models train from it for --updates updates with
the same batches, optimiser and seed: bart_cvae_small with SETTING, and fairseq's `bart` at that
size on the translation task. Decodings: the CVAE's --samples z ~ p(z|c) each greedy, and beam 5
from the prior mean; the seq2seq's beam 5, top-p 0.9 (--samples a source) and diverse beam search
(--samples groups). Each is scored by cvae_report.text_row against the source's references (and
on synth by the grammar: grammatical, topic and tense kept, the total variation of each free
factor and the template from the grammar's own draws); a "human" row scores --samples targets
the grammar draws (synth) or each test image's last reference against the other three
(multi30k). PPL: the CVAE's IW-PPL of p(x|c), the seq2seq's, per word. Runs go under --out
(ignored by git); the table to --results (cvae_report: a section a corpus, the other corpora's
rows kept), with the cost ratios of benchmarks/overhead.py --pairs (on synth).
"""

import argparse
import functools
import json
import math
import os
import random
import re
import shlex
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import cvae_report  # noqa: E402  (the table: this study's own report)
import cvae_yelp  # noqa: E402  (the Yelp corpus: sentences under their sentiment)
import harness  # noqa: E402
from cvae_report import parse_generate, row_key, text_row  # noqa: E402

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
MAX_LEN_B = {
    "synth": 40,
    "multi30k": 100,
    "yelp": 40,
}  # tokens an output at most (the shortest words)
CAPTION_VOCAB = 8000  # sentencepiece pieces for Multi30k's captions (about 10,000 word types)


def spm_model(args) -> str:
    """The segmentation both sides of the pairs use."""
    if args.corpus == "synth":
        return os.path.join(SHIPPED_DATA, "spm.model")
    return os.path.join(args.out, "data-bin", "text", "spm.model")


def start_bart(args) -> str:
    if args.corpus == "synth":
        return SHIPPED_BART
    if args.corpus == "yelp":
        return cvae_yelp.start_bart(args)
    return os.path.join(args.out, "bart", "checkpoint_last.pt")


def data_jobs(args, b: dict) -> dict:
    """The pairs in out/data-bin/pairs (and, for multi30k, the captions' own BART first)."""
    raw, bins = os.path.join(args.out, "raw"), os.path.join(args.out, "data-bin")
    prepare = ["env", f"DATA_BIN={bins}", "bash", os.path.join(REPO, "scripts", "prepare_data.sh")]
    log = os.path.join(args.out, "data.log")
    if args.corpus == "yelp":
        return cvae_yelp.data_jobs(args, b)
    if args.corpus == "synth":
        make = [sys.executable, os.path.join(REPO, "scripts", "make_pairs.py"), "--out", raw,
                "--test", str(args.test_sources), "--references", str(args.references)]  # fmt: skip
        pairs = prepare + [raw, "pairs", "--pairs", "--like", SHIPPED_DATA]
        return {"pairs": harness.train_job([make, pairs], log)}
    script = os.path.join(REPO, "scripts", "make_caption_pairs.py")
    make = [sys.executable, script, "--data", args.multi30k, "--out", raw]
    text = prepare + [os.path.join(raw, "text"), "text", "--vocab-size", str(CAPTION_VOCAB)]
    pairs = prepare + [raw, "pairs", "--pairs", "--like", os.path.join(bins, "text")]
    bart_dir = os.path.join(args.out, "bart")
    pretrain = harness.pretrain_cmd(os.path.join(bins, "text"), b, bart_dir, args.pretrain_hours)
    return {
        "pairs": harness.train_job([make, text, pairs], log),
        "pretrain": harness.train_job(
            [pretrain], os.path.join(bart_dir, "train.log"), after=["pairs"]
        ),
    }


def setting_label(args) -> str:
    """The CVAE's setting as the table names it: the recipe, and --cvae-args if any."""
    extra = f", {args.cvae_args}" if args.cvae_args else ""
    fitted = f", fitted {args.fit_prior} prior" if args.fit_prior else ""
    return f"BART init, fb 0.15, word dropout 0.2{extra}{fitted}"


def batches(args, b: dict) -> tuple:
    """(budget, updates): --updates batches; on Yelp the same tokens in the VAE's batches."""
    setting = harness.SETTINGS[cvae_yelp.UNCONDITIONAL] if args.corpus == "yelp" else {}
    return harness.setting_batches(b, setting, args.updates)


def train_cmd(args, b, model: str, save_dir: str) -> list:
    data = os.path.join(args.out, "data-bin", "pairs")
    common = harness.common_train_args(*batches(args, b), save_dir)
    start = ["--finetune-from-model", start_bart(args)]
    train = [os.path.join(harness.BIN, "fairseq-train"), data, *PAIRS]
    if model == "bart_cvae":
        recipe = "--task text_vae --arch bart_cvae_small --criterion elbo".split() + SETTING
        # --cvae-args last, so they override the common options too (a replicate's --seed)
        return train + recipe + start + common + shlex.split(args.cvae_args)
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
    spm = ["--bpe", "sentencepiece", "--sentencepiece-model", spm_model(args)]
    task = ["--task", "text_vae"] if model == "bart_cvae" else ["--task", "translation", *spm]
    cmd = [os.path.join(harness.BIN, "fairseq-generate"),
           os.path.join(args.out, "data-bin", "pairs"), "--user-dir",
           os.path.join(REPO, "fairseq_vae"), *task, *PAIRS, "--path",
           os.path.join(d, "checkpoint_last.pt"), "--gen-subset", "test", "--cpu",
           "--max-tokens", "4096", "--max-len-b", str(MAX_LEN_B[args.corpus]),
           "--seed", str(harness.SEED), *DECODINGS[model][decoding](args.samples)]  # fmt: skip
    after, out = [f"train {model}"], generated(args, model, decoding)
    if args.fit_prior and out.endswith(f"-{args.fit_prior}.txt"):
        cmd, after = cmd + ["--prior-file", prior_path(args)], after + ["fit prior"]
    return {"cmds": [cmd, ["touch", out + ".done"]], "log": out, "done": out + ".done",
            "after": after}  # fmt: skip


def generated(args, model: str, decoding: str) -> str:
    """The output file of a decoding (of the fitted prior's draws with --fit-prior)."""
    fitted = model == "bart_cvae" and decoding == "prior-greedy" and args.fit_prior
    name = f"generate-{decoding}" + (f"-{args.fit_prior}" if fitted else "")
    return os.path.join(args.out, model, f"{name}.txt")


def prior_path(args) -> str:
    """--fit-prior's file: a density of bart_cvae's standardised latent (fairseq-vae-fit-prior)."""
    return os.path.join(args.out, "bart_cvae", f"prior-{args.fit_prior}.pt")


def eval_report(args) -> str:
    fitted = f"-{args.fit_prior}" if args.fit_prior else ""
    return os.path.join(args.out, "bart_cvae", f"test-eval-k{args.iw_samples}{fitted}.json")


def score_jobs(args) -> dict:
    data = os.path.join(args.out, "data-bin", "pairs")
    cvae, report = os.path.join(args.out, "bart_cvae"), eval_report(args)
    cvae_eval = [
        os.path.join(harness.BIN, "fairseq-vae-eval"), data, "--user-dir",
        os.path.join(REPO, "fairseq_vae"), "--task", "text_vae", *PAIRS,
        "--path", os.path.join(cvae, "checkpoint_last.pt"), "--gen-subset", "test", "--cpu",
        "--iw-samples", str(args.iw_samples),
        "--max-len-b", str(MAX_LEN_B[args.corpus]), "--results-json", report + ".partial",
    ]  # fmt: skip
    fitted = ["--prior-file", prior_path(args), "--latent-source", "prior"]
    cvae_eval += fitted if args.fit_prior else []
    seq = os.path.join(args.out, "seq2seq")
    # --user-dir: its safe loading of checkpoints (weights_only with the allow-list)
    validate = [os.path.join(harness.BIN, "fairseq-validate"), data, "--user-dir",
                os.path.join(REPO, "fairseq_vae"), "--task", "translation", *PAIRS, "--path",
                os.path.join(seq, "checkpoint_last.pt"), "--valid-subset", "test", "--cpu",
                "--max-tokens", "4096"]  # fmt: skip
    return {
        "eval bart_cvae": {
            "cmds": [cvae_eval, ["mv", report + ".partial", report]],
            "log": report[: -len(".json")] + ".log",
            "done": report,
            "after": ["train bart_cvae"] + (["fit prior"] if args.fit_prior else []),
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


def run_cost(args) -> bool:
    """The cost of a model of this size, measured once: by synth's main run, not its others."""
    return args.corpus == "synth" and not args.keep_other_settings


def read_cost(args) -> dict:
    """The ratios of overhead.py's table (bart_cvae over BART): update time, generation speed
    (sentences a second at a fixed length), peak training memory."""
    text = open(os.path.join(args.out, "cost", "overhead.log")).read()
    ratio = {}
    for key, label in (("update_ratio", "ms per update"), ("memory_ratio", "peak training"),
                       ("generation_ratio", "sent/s, fixed length")):  # fmt: skip
        ratio[key] = float(re.findall(rf"^{re.escape(label)}.* ([0-9.]+)$", text, re.M)[-1])
    return ratio


def test_references(args) -> dict:
    """{source text: its references}: synth's test split as make_pairs wrote it (each source on
    consecutive lines with its targets), multi30k's test.src with test.refs."""
    raw = os.path.join(args.out, "raw")
    sources = open(os.path.join(raw, "test.src"), encoding="utf-8").read().splitlines()
    if args.corpus == "multi30k":
        refs = open(os.path.join(raw, "test.refs"), encoding="utf-8").read().splitlines()
        return {s: r.split("\t") for s, r in zip(sources, refs)}
    targets = open(os.path.join(raw, "test.tgt"), encoding="utf-8").read().splitlines()
    grouped = {}
    for s, t in zip(sources, targets):
        grouped.setdefault(s, []).append(t)
    return grouped


def grammar_measures(sources: list, outputs: list) -> dict:
    """Grammatical share; topic and tense kept (of all outputs); the total variation of each free
    factor and the template from the grammar's own draws for the same sources."""
    from fairseq_vae.metrics import sample_quality as sq
    from fairseq_vae.synth import grammar as synth_grammar
    from fairseq_vae.synth.paraphrases import KEPT, spread_counts

    read = [[synth_grammar.recognise(o) for o in outs] for outs in outputs]
    flat = [(synth_grammar.recognise(s), r) for s, rs in zip(sources, read) for r in rs]
    kept = {
        k: sum(r is not None and src is not None and r[k] == src[k] for src, r in flat) / len(flat)
        for k in KEPT
    }
    own, made = grammar_spread(tuple(sources)), spread_counts([o for os in outputs for o in os])
    tv = {f: sq.total_variation(made[f], own[f]) if sum(made[f].values()) else None for f in own}
    grammatical = sum(r is not None for _, r in flat) / len(flat)
    return {"grammatical": grammatical, "kept": kept, "free_factor_tv": tv}


@functools.lru_cache(maxsize=1)
def grammar_spread(sources: tuple) -> dict:
    """The grammar's spread over 50 targets of each source (the same draws for every row)."""
    from fairseq_vae.synth import grammar as synth_grammar
    from fairseq_vae.synth import paraphrases

    factors = [synth_grammar.recognise(s) for s in sources]
    return paraphrases.grammar_spread(factors, 50, random.Random(f"{harness.SEED}:spread"))


def scored_row(args, model, decoding, setting, sources, outputs, references) -> dict:
    more = grammar_measures(sources, outputs) if args.corpus == "synth" else None
    return text_row(args.corpus, model, decoding, setting, sources, outputs, references, more)


def human_row(args, references: dict) -> dict:
    """synth: --samples targets the grammar draws for each test source, scored as a system's;
    multi30k: each test image's last reference, scored against the other three."""
    sources = list(references)
    if args.corpus == "multi30k":
        outputs = [[references[s][-1]] for s in sources]
        held_out = [references[s][:-1] for s in sources]
        return scored_row(args, "human", "reference", "a fifth caption", sources, outputs, held_out)
    from fairseq_vae.synth import grammar as synth_grammar
    from fairseq_vae.synth.paraphrases import paraphrase_targets

    rng = random.Random(f"{harness.SEED}:human")
    outputs = [
        [t for t, _ in paraphrase_targets(synth_grammar.recognise(s), args.samples, rng)]
        for s in sources
    ]
    refs = [references[s] for s in sources]
    return scored_row(args, "human", "reference", "the grammar's own draws", sources, outputs, refs)


def rows(args, b: dict) -> tuple:
    """The table's rows of this corpus, and its transfer points and comparisons (yelp)."""
    report = json.load(open(eval_report(args)))["metrics"]
    if args.corpus == "yelp":
        return cvae_yelp.measure(args, b, report, setting_label(args))
    references = test_references(args)
    found = [human_row(args, references)]
    for model, decodings in DECODINGS.items():
        for decoding in decodings:
            if args.fit_prior and decoding == "prior-mean-beam5":
                continue  # p(z|c)'s own mean: the row of the setting without --fit-prior
            parsed = parse_generate(generated(args, model, decoding))
            firsts = {}
            for source, hyps in parsed.values():  # one entry per source text
                firsts.setdefault(source, hyps)
            sources = [s for s in references if s in firsts]
            row = scored_row(
                args,
                model,
                decoding,
                setting_label(args) if model == "bart_cvae" else "fairseq bart, translation",
                sources,
                [firsts[s] for s in sources],
                [references[s] for s in sources],
            )
            found.append(row)
    seq_ppl = validate_ppl_word(args)
    for row in found:
        if row["model"] == "bart_cvae":
            row.update(ppl_word=report["iw_ppl_word"], kl=report["kl"], au=report["au"])
            if args.fit_prior:  # log p(x|c) and the KL under the fitted prior
                fit = report["prior_file"]
                row.update(ppl_word=fit["iw_ppl_word"], kl=fit["kl_mc"])
        elif row["model"] == "seq2seq":
            row["ppl_word"] = seq_ppl
    return found, [], None


def validate_ppl_word(args) -> float:
    """fairseq-validate's test loss (bits a sentencepiece token, </s> included) as a perplexity
    per word (+1 a sentence), fairseq-vae-eval's unit: the same total NLL over other units."""
    import sentencepiece

    log = open(os.path.join(args.out, "seq2seq", "validate", "train.log")).read()
    loss = float(re.findall(r"valid on 'test' subset \| loss ([0-9.]+)", log)[-1])
    sp = sentencepiece.SentencePieceProcessor(model_file=spm_model(args))
    targets = open(os.path.join(args.out, "raw", "test.tgt"), encoding="utf-8").read().splitlines()
    tokens = sum(len(sp.encode(t)) + 1 for t in targets)
    words = sum(len(t.split()) + 1 for t in targets)
    return math.exp(loss * math.log(2) * tokens / words)


def description(args) -> str:
    """What the corpus's section says of its settings."""
    b, updates = batches(args, dict(harness.BUDGETS["cpu"]))
    common = (
        f"{args.samples} outputs a source for the sampling decodings. PPL: per word (+1 a "
        f"sentence) of the test targets, IW-PPL of p(x|c) with K={args.iw_samples} for "
        "bart_cvae. BLEU-4 on 0-100."
    )
    if args.corpus == "yelp":
        return (
            f"Yelp's test split: {args.label_samples} samples a label from z ~ p(z|c), each "
            "greedy, beside the test sentences themselves (the human row); each test sentence "
            f"encoded with its own label and decoded under the other. {updates} updates of "
            f"{b['max_tokens']} tokens from benchmarks/control.py's Yelp BART; the judge, "
            "reference LM and unconditional VAE are control.py's. IW-PPL of p(x|label) per word "
            f"with K={args.iw_samples}."
        )
    if args.corpus == "synth":
        return (
            f"{args.test_sources} test sources with {args.references} references each; "
            + common.replace(" PPL:", f" {args.updates} updates each from the shipped BART. PPL:")
        )
    with open(os.path.join(args.out, "raw", "test.src"), encoding="utf-8") as f:
        images = sum(1 for _ in f)
    return (
        f"{images:,} test images, one caption the source (rotating with the image), the other "
        f"four its references; {args.updates} updates each from a BART denoising-pretrained on the "
        f"training captions (`--stop-time-hours {args.pretrain_hours}`); the human row: each "
        f"image's last reference against the other three. {common}"
    )


def merged(args, stem: str, table: list, transfer: list, compared) -> dict:
    """This run's rows in the results JSON: other corpora's rows, settings and cost kept; with
    --keep-other-settings also this corpus's other bart_cvae settings (the rows of the shared
    models stay the earlier run's)."""
    earlier = harness.read_results_json(stem) if os.path.isfile(stem + ".json") else {"rows": []}
    old = earlier["rows"]
    if args.keep_other_settings:
        new = [r for r in table if r["model"] == "bart_cvae" or row_key(r) not in map(row_key, old)]
        table = [r for r in old if row_key(r) not in {row_key(o) for o in new}] + new
    else:
        table = [r for r in old if r.get("corpus", "synth") != args.corpus] + table
    ours = {"description": description(args), **({"compared": compared} if compared else {})}
    settings = dict(earlier.get("settings", {}), **{args.corpus: ours})
    cost = read_cost(args) if run_cost(args) else earlier.get("cost")
    # one point a corpus and method: this run's replaces an earlier one
    keys = {(t["corpus"], t["method"]) for t in transfer}
    kept = [t for t in earlier.get("transfer", []) if (t["corpus"], t["method"]) not in keys]
    transfer = kept + transfer
    return {"rows": table, "cost": cost, "settings": settings, "transfer": transfer}


def main():
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        epilog=__doc__.split("\n\n", 1)[1],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--corpus", choices=["synth", "multi30k", "yelp"], default="synth")
    p.add_argument("--multi30k", default=os.path.join("..", "shared", "data", "multi30k"))
    p.add_argument("--yelp", default=os.path.join("..", "shared", "data", "yelp"))
    p.add_argument(
        "--yelp-out",
        default=os.path.join(REPO, "benchmarks", "runs", "yelp-cpu"),
        help="benchmarks/control.py's Yelp folder: its BART, LM and data are reused",
    )
    p.add_argument("--label-samples", type=int, default=1000, help="yelp: samples a label")
    p.add_argument("--pretrain-hours", type=float, default=0.75, help="multi30k's, yelp's BART")
    p.add_argument("--out", help="default: benchmarks/runs/cvae-cpu (synth), cvae-multi30k")
    p.add_argument("--results", default=os.path.join(REPO, "benchmarks", "results", "cvae.md"))
    p.add_argument("--updates", type=int, default=1600)
    p.add_argument(
        "--cvae-args",
        default="",
        help="more bart_cvae options after the recipe's (they win), e.g. a remedy against a z "
        "the decoder leaves unused: '--bow-loss-weight 1.0 --free-bits 0.5'",
    )
    p.add_argument("--fit-prior", choices=["gmm", "flow"], help="bart_cvae's samples and IW-PPL "
                   "under a prior fitted to its standardised latent")  # fmt: skip
    p.add_argument("--samples", type=int, default=10, help="outputs a source (z, samples, groups)")
    p.add_argument("--test-sources", type=int, default=200, help="synth")
    p.add_argument("--references", type=int, default=4, help="synth")
    p.add_argument("--iw-samples", type=int, help="IW bound's K (default: synth 1000, else 100)")
    p.add_argument("--slots", type=int, default=2, help="jobs at once, one thread each")
    p.add_argument("--report", action="store_true", help="rewrite the table from its JSON")
    p.add_argument(
        "--keep-other-settings",
        action="store_true",
        help="keep the rows of other bart_cvae settings (and the cost) from the existing "
        "--results JSON (each row names the run that made it): settings run apart, one table",
    )
    args = p.parse_args()
    stem = args.results[: -len(".md")]
    if args.report:  # the rows as the runs that made them wrote them
        cvae_report.write_results(args.results, harness.read_results_json(stem))
        return
    folder = "cvae-cpu" if args.corpus == "synth" else f"cvae-{args.corpus}"
    args.out = os.path.abspath(args.out or os.path.join(REPO, "benchmarks", "runs", folder))
    args.iw_samples = args.iw_samples or (1000 if args.corpus == "synth" else 100)
    # the jobs run in the repository's root
    args.multi30k, args.yelp = os.path.abspath(args.multi30k), os.path.abspath(args.yelp)
    b = dict(harness.BUDGETS["cpu"])
    jobs = data_jobs(args, b)
    start = ["pairs"] if args.corpus == "synth" else ["pairs", "pretrain"]
    # on Yelp the label is the source: no seq2seq to compare, the hub measures the samples
    models = ["bart_cvae"] if args.corpus == "yelp" else ["bart_cvae", "seq2seq"]
    for model in models:
        d = os.path.join(args.out, model)
        jobs[f"train {model}"] = harness.train_job(
            [train_cmd(args, b, model, d)], os.path.join(d, "train.log"), after=start
        )
        for decoding in DECODINGS[model] if args.corpus != "yelp" else ():
            jobs[f"generate {model} {decoding}"] = generate_job(args, model, decoding)
    jobs.update({k: v for k, v in score_jobs(args).items() if k.split()[1] in models})
    if args.fit_prior:
        ckpt, data = os.path.join(args.out, "bart_cvae", "checkpoint_last.pt"), args.out
        jobs["fit prior"] = harness.fit_prior_job(os.path.join(data, "data-bin", "pairs"), ckpt,
                                                  args.fit_prior, prior_path(args), b,
                                                  after=["train bart_cvae"])  # fmt: skip
    if run_cost(args):
        jobs["cost"] = cost_job(args, after=list(jobs))
    harness.run_queue(jobs, args.slots)
    made = harness.made_by("benchmarks/cvae.py")
    table, transfer, compared = rows(args, b)
    table = [dict(r, made=made) for r in table]
    transfer = [dict(t, made=made) for t in transfer]
    cvae_report.write_results(args.results, merged(args, stem, table, transfer, compared))
    print(open(args.results).read())
    harness.log(f"wrote {args.results}, {stem}.json and {stem}.png")


if __name__ == "__main__":
    main()
