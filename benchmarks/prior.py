#!/usr/bin/env python3
"""Fitted priors and prior-sample quality: each trained VAE point under N(0, I) against a
Gaussian mixture and a normalizing flow fitted to its aggregate posterior (fairseq-vae-fit-prior),
on the IW-PPL of the test split and on sentences sampled from each prior.

    benchmarks/prior.sh --points synth                          # the shipped corpus (minutes)
    benchmarks/prior.sh --points "ptb, BART init, fb 0.5" \\
        --pretrained-bart benchmarks/runs/pretrained-cpu/bart/checkpoint_last.pt

Points (POINTS): the shipped corpus's BART-init point is the demo's model (scripts/demo.py,
which fine-tunes the shipped BART); a PTB point is a setting of benchmarks/ptb.py, trained in
ptb.py's own working folder (benchmarks/runs/ptb-cpu), so a training either benchmark finished
is not run again; the "BART init" ones need --pretrained-bart (benchmarks/pretrained.sh
--pretrain-only). The Yelp point is benchmarks/control.py's Yelp VAE (its own pretraining,
in its folder --yelp-out). Each corpus has its reference LM, a transformer_lm of the decoder's size
trained for the same updates (ptb.py's for PTB).

For each point, then, one after the other as their inputs are ready: a mixture and a flow fitted
to the training split's posterior samples; for each fitted prior one fairseq-vae-eval on the test
split with --prior-file (the IW-NLL and KL under N(0, I) and under the fitted prior, from the
same samples) and --prior-samples (N sentences from each prior, ancestral and greedy, with the
LM's per-word PPL, distinct-n, self-BLEU-4, memorisation and, on the shipped corpus, the
grammar's verdict; the reference LM's own samples are measured beside them, and its test PPL
is the "lm" row's). A rerun skips every finished step (its output file exists).

With --reverse-ppl, coverage as in ARAE (Zhao et al. 2018): the ancestral samples of each prior
and of the LM, and as the reference the same number of real training sentences (a seeded
choice), each train a transformer_lm of the reference LM's size for --reverse-updates updates
(validated every REVERSE_VALIDATE updates on the real valid split), whose best checkpoint's
per-word PPL on the real test split is the reverse PPL.

The table goes to --results (Markdown), the same rows to the .json beside it, and a plot of the
IW-PPL and the samples' LM PPL (relative to real sentences) per prior to the .png. Each row names
the run that made it; with --keep-other-points the rows of points not in --points are kept from
the existing .json, so points trained in different sessions share one table.
"""

import argparse
import json
import os
import re
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness  # noqa: E402  (the shared trainings, queue and machine description)

REPO = harness.REPO
BIN = harness.BIN
PRIOR_KINDS = ("gmm", "flow")
# the training texts of the reverse-PPL LMs: each prior's ancestral samples, the LM's own, and
# as many real training sentences
REVERSE_SOURCES = ("standard", *PRIOR_KINDS, "lm", "real")
REVERSE_VALIDATE = 25
POINTS = {
    "synth": dict(corpus="synth", setting="BART init (the demo)"),
    "ptb, BART init, fb 0.5": dict(corpus="ptb", setting="BART init, fb 0.5"),
    "ptb, BART init, fb 0.1": dict(corpus="ptb", setting="BART init, fb 0.1"),
    "ptb, cyclical, fb 0.25": dict(corpus="ptb", setting="cyclical, fb 0.25"),
    "yelp, BART init, fb 0.5": dict(corpus="yelp", setting="BART init, fb 0.5"),
}


def yelp_jobs(setting: str, args, b: dict) -> dict:
    """The Yelp VAE of benchmarks/control.py (its pretraining, VAE and LM, in its folder)."""

    options = argparse.Namespace(
        yelp=args.yelp,
        yelp_out=args.yelp_out,
        setting=setting,
        pretrain_hours=0.75,
        iw_samples=args.iw_samples,
    )
    jobs, paths = harness.yelp_jobs(options, b)
    return {
        "data": paths["data"],
        "checkpoint": os.path.join(paths["vae"], "checkpoint_last.pt"),
        "lm": os.path.join(paths["lm"], "checkpoint_last.pt"),
        "train_log": os.path.join(paths["vae"], "train.log"),
        "grammar": None,
        "jobs": jobs,
        "train_job": "train yelp vae",
        "lm_job": "train yelp lm",
    }


def prior_path(point: dict, kind: str) -> str:
    return os.path.join(os.path.dirname(point["checkpoint"]), f"prior-{kind}.pt")


def eval_path(point: dict, kind: str, args) -> str:
    name = f"prior-eval-{kind}-K{args.iw_samples}-N{args.prior_samples}.json"
    return os.path.join(os.path.dirname(point["checkpoint"]), name)


def fit_job(point: dict, kind: str, b: dict) -> dict:
    return harness.fit_prior_job(
        point["data"], point["checkpoint"], kind, prior_path(point, kind), b, [point["train_job"]]
    )


def eval_job(point: dict, kind: str, args, b: dict) -> dict:
    extra = ["--prior-file", prior_path(point, kind), "--lm-path", point["lm"]]
    extra += ["--prior-samples", str(args.prior_samples)]
    if point["grammar"]:
        extra += ["--sample-grammar", point["grammar"]]
    return harness.vae_eval_job(
        point["data"],
        point["checkpoint"],
        "test",
        args.iw_samples,
        eval_path(point, kind, args),
        b,
        after=[f"fit {kind} {point['name']}", point["lm_job"]],
        bleu=False,
        extra=extra,
    )


def lm_test_log(point: dict) -> str:
    return os.path.join(os.path.dirname(point["lm"]), "test.log")  # ptb.py's, for PTB


def lm_test_job(point: dict, b: dict) -> dict:
    """The reference LM's own test PPL (fairseq-eval-lm), the "lm" row's ppl_word."""
    return harness.lm_eval_job(
        point["data"], point["lm"], lm_test_log(point), b, after=[point["lm_job"]]
    )


def reverse_dir(point: dict, source: str, args) -> str:
    name = f"reverse-{source}-N{args.prior_samples}-U{args.reverse_updates}"
    return os.path.join(os.path.dirname(point["checkpoint"]), name)


def reverse_jobs(point: dict, args, b: dict) -> dict:
    """For each REVERSE_SOURCES: its sentences written out, binarised with the corpus's
    dictionary beside the corpus's own valid and test splits, an LM trained on them, and
    fairseq-eval-lm of its best checkpoint on the test split."""
    jobs = {}
    tool = [sys.executable, os.path.join(REPO, "benchmarks", "sample_text.py")]
    for source in REVERSE_SOURCES:
        d = reverse_dir(point, source, args)
        text, data = os.path.join(d, "train.txt"), os.path.join(d, "data-bin")
        if source == "real":
            write = [*tool, "real", point["data"], str(args.prior_samples), str(harness.SEED)]
            after = []
        else:
            kind = source if source in PRIOR_KINDS else PRIOR_KINDS[0]
            write = [*tool, "samples", eval_path(point, kind, args), source, point["data"]]
            after = [f"eval {kind} {point['name']}"]
        binarise = [os.path.join(BIN, "fairseq-preprocess"), "--only-source", "--trainpref"]
        binarise += [text, "--srcdict", os.path.join(point["data"], "dict.txt")]
        binarise += ["--destdir", data, "--workers", "1"]
        links = [
            ["ln", "-sf", os.path.join(point["data"], f"{split}.{ext}"), data]
            for split in ("valid", "test")
            for ext in ("bin", "idx")
        ]
        lm = os.path.join(d, "lm")
        train = harness.lm_train_cmd(data, b, args.reverse_updates, lm)
        every = str(REVERSE_VALIDATE)
        train += ["--validate-interval-updates", every, "--save-interval-updates", every]
        # validated every REVERSE_VALIDATE updates only: an epoch is a few updates here
        train += ["--keep-interval-updates", "1", "--validate-interval", "1000000"]
        train += ["--save-interval", "1000000"]
        name = f"reverse {source} {point['name']}"
        jobs[name] = harness.train_job(
            [[*write, text], binarise, *links, train], os.path.join(lm, "train.log"), after
        )
        best = os.path.join(lm, "checkpoint_best.pt")
        jobs[f"eval {name}"] = harness.lm_eval_job(
            data, best, os.path.join(d, "test.log"), b, after=[name]
        )
    return jobs


def reverse_ppl(point: dict, args) -> dict:
    """{source: reverse PPL} of the finished reverse-PPL runs (empty without --reverse-ppl)."""
    if not args.reverse_ppl:
        return {}
    logs = {s: os.path.join(reverse_dir(point, s, args), "test.log") for s in REVERSE_SOURCES}
    # (with --report, the runs not finished yet are left out)
    return {
        s: harness.lm_result(log)["ppl"] for s, log in logs.items() if os.path.isfile(log + ".done")
    }


def sample_fields(row: dict, real: dict, reverse: dict) -> dict:
    """The issue's "samples" object of one (prior, decoding) row of a report."""
    return {
        "decoding": row["decoding"],
        "n": row["n"],
        "lm_ppl": row["lm_ppl"],
        "lm_ppl_real": real["lm_ppl"],
        "distinct_1": row["distinct_1"],
        "distinct_2": row["distinct_2"],
        "distinct_3": row["distinct_3"],
        "distinct_2_real": real["distinct_2"],
        "self_bleu4": row["self_bleu4"],
        "self_bleu4_real": real["self_bleu4"],
        "memorised": row["memorised"],
        "memorised_real": real["memorised"],
        "mean_words": row["mean_words"],
        "reverse_ppl": reverse.get(row["prior"]) if row["decoding"] != "greedy" else None,
        "reverse_ppl_real": reverse.get("real"),
        "grammatical": row["grammatical"],
        "factor_tv": row["factor_tv"],
        "examples": row["samples"][:5],
    }


def training_seconds(logfile: str):
    """A training's seconds: fairseq's wall clock in its log (harness.train_summary), or, for the
    demo (which echoes only part of each line), the sum of its "done training in" lines."""
    minutes = harness.train_summary(logfile)["minutes"]
    if minutes:
        return 60 * minutes
    done = re.findall(r"done training in ([\d.]+) seconds", open(logfile).read())
    return sum(float(s) for s in done) or None


def point_rows(point: dict, args) -> list:
    """The rows of one point: N(0, I) (from the mixture's evaluation) and each fitted prior,
    then the reference rows: the LM (its test PPL and its own samples) and the real sentences."""
    from fairseq_vae.latent_space.prior_file import load_prior

    train_seconds = training_seconds(point["train_log"])
    reverse = reverse_ppl(point, args)
    rows = []

    def add(prior, report, samples, ppl, kl, mi, fit_seconds):
        rows.append(
            {
                "corpus": point["corpus"],
                "setting": point["setting"],
                "prior": prior,
                "iw_samples": report["settings"]["iw_samples"],
                "ppl_word": ppl,
                "kl_prior": kl,
                "mi": mi,
                "fit_seconds": fit_seconds,
                "train_seconds": train_seconds,
                "samples": sample_fields(samples, report["prior_samples"]["real"], reverse),
            }
        )

    for kind in PRIOR_KINDS:
        report = json.load(open(eval_path(point, kind, args)))
        m = report["metrics"]
        fit = load_prior(prior_path(point, kind)).meta["fit"]
        fit_seconds = fit["encode_seconds"] + fit["fit_seconds"]
        priors = [("standard", m["iw_ppl_word"], m["kl"], None)] if kind == PRIOR_KINDS[0] else []
        priors.append((kind, m["prior_file"]["iw_ppl_word"], m["prior_file"]["kl_mc"], fit_seconds))
        for prior, ppl, kl, seconds in priors:
            for r in report["prior_samples"]["rows"]:
                if r["prior"] == prior:
                    add(prior, report, r, ppl, kl, m["mi"], seconds)
    report = json.load(open(eval_path(point, PRIOR_KINDS[0], args)))
    lm_ppl = harness.lm_result(lm_test_log(point))["ppl"]
    for r in report["prior_samples"]["rows"]:
        if r["prior"] == "lm":
            add("lm", report, r, lm_ppl, None, None, None)
    real = dict(report["prior_samples"]["real"], prior="real", decoding=None, samples=[])
    add("real", report, real, None, None, None, None)
    return rows


def kept_rows(path: str) -> list:
    """The rows of an earlier table's JSON; rows written before each row named its run get the
    file's own start and machine."""
    earlier = harness.read_results_json(path[: -len(".json")])
    default = {
        "command": earlier.get("command", "benchmarks/prior.py (an earlier run)"),
        "started": earlier.get("started"),
        "machine": earlier.get("machine"),
    }
    return [dict(r, made=r.get("made", default)) for r in earlier["rows"]]


def fmt(value, spec: str) -> str:
    return harness.fmt(value, spec, missing="-")


def point_name(row: dict) -> str:
    return f"{row['corpus']}, {row['setting']}"


def results_markdown(args, rows: list) -> str:
    reverse = any(r["samples"]["reverse_ppl"] is not None for r in rows)
    lines = [
        "# Fitted priors and prior-sample quality",
        "",
        "Made by (each point's rows by one run; a rerun with --keep-other-points replaces the "
        "rows of its own points and keeps the others):",
        "",
        *harness.made_lines(rows, point_name),
        "",
        f"IW-PPL per word on the test split with K={args.iw_samples} "
        "importance samples; KL to the prior per sentence (Monte Carlo for a fitted prior); "
        f"{args.prior_samples} samples per prior and decoding; reference rows: 'lm', the "
        "corpus's transformer_lm of the decoder's size (its test PPL and its own ancestral "
        "samples), and 'real', as many real test sentences (a seeded choice). LM PPL: the "
        "samples' per word under that LM, and its ratio to the real sentences'; distinct-2 "
        "corpus-level; self-BLEU-4 over up to 1000 sentences; memorised: exact copies of a "
        "training sentence; "
        + (
            f"reverse PPL: the test PPL of an LM of that size trained on the samples for "
            f"{args.reverse_updates} updates (the real row's: on as many real training "
            "sentences); "
            if reverse
            else ""
        )
        + "grammatical and factor TV (largest over the four factors) on the shipped corpus "
        "only. Fit: encoding the training split and fitting, seconds, against the VAE's "
        "training.",
        "",
        "| corpus | setting | prior | IW-PPL | KL to prior | MI | decoding | LM PPL | x real "
        "| distinct-2 | self-BLEU-4 | memorised | reverse PPL | grammatical | factor TV "
        "| fit s / train s |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        s = r["samples"]
        tv = max(s["factor_tv"].values()) if s["factor_tv"] else None
        fit = "-"
        if r["fit_seconds"] is not None:
            fit = f"{r['fit_seconds']:.0f} / {fmt(r['train_seconds'], '.0f')}"
        ratio = s["lm_ppl"] / s["lm_ppl_real"] if s["lm_ppl"] and s["lm_ppl_real"] else None
        grammatical = None if s["grammatical"] is None else 100 * s["grammatical"]
        lines.append(
            f"| {r['corpus']} | {r['setting']} | {r['prior']} | {fmt(r['ppl_word'], '.2f')} | "
            f"{fmt(r['kl_prior'], '.2f')} | {fmt(r['mi'], '.2f')} | {s['decoding'] or '-'} | "
            f"{fmt(s['lm_ppl'], '.2f')} | {fmt(ratio, '.2f')} | {fmt(s['distinct_2'], '.3f')} | "
            f"{fmt(s['self_bleu4'], '.1f')} | {100 * s['memorised']:.1f}% | "
            f"{fmt(s['reverse_ppl'], '.2f')} | {fmt(grammatical, '.1f')}% | "
            f"{fmt(tv, '.3f')} | {fit} |"
        )
    # samples of a model trained on a shared corpus are text derived from it, which stays out of
    # the repository (with prior-examples.json): the shipped corpus's are quoted
    lines += ["", "Examples (ancestral, the shipped corpus's models):", ""]
    for r in rows:
        if r["samples"]["decoding"] == "ancestral" and r["corpus"] == "synth":
            for e in r["samples"]["examples"][:3]:
                lines.append(f"- {point_name(r)}, {r['prior']}: `{e}`")
    return "\n".join(lines) + "\n"


def plot(path: str, rows: list):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    points = list(dict.fromkeys(point_name(r) for r in rows))
    kinds = ["standard", *PRIOR_KINDS]
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    width = 0.8 / len(kinds)
    for i, kind in enumerate(kinds):
        ppl, ratio = [], []
        for p in points:
            match = [
                r
                for r in rows
                if point_name(r) == p
                and r["prior"] == kind
                and r["samples"]["decoding"] == "ancestral"
            ]
            ppl.append(match[0]["ppl_word"] if match else 0)
            s = match[0]["samples"] if match else None
            ratio.append(s["lm_ppl"] / s["lm_ppl_real"] if s and s["lm_ppl"] else 0)
        xs = [j + i * width for j in range(len(points))]
        axes[0].bar(xs, ppl, width, label=kind)
        axes[1].bar(xs, ratio, width, label=kind)
    for ax, title in zip(axes, ["IW-PPL per word (test)", "samples' LM PPL / real sentences'"]):
        ax.set_xticks([j + 0.4 - width / 2 for j in range(len(points))])
        ax.set_xticklabels(points, rotation=15, fontsize=8)
        ax.set_title(title)
        ax.legend()
    axes[1].axhline(1.0, color="grey", lw=0.8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def main():
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        epilog=__doc__.split("\n\n", 1)[1],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--points", default="synth", help=f"';'-separated, of {list(POINTS)}")
    p.add_argument(
        "--ptb",
        default=os.path.join("..", "shared", "data", "ptb"),
        help="the PTB text folder (train.txt, valid.txt, test.txt)",
    )
    p.add_argument(
        "--ptb-out",
        default=os.path.join(REPO, "benchmarks", "runs", "ptb-cpu"),
        help="ptb.py's working folder (its trainings are shared)",
    )
    p.add_argument(
        "--yelp",
        default=os.path.join("..", "shared", "data", "yelp"),
        help="the Yelp text folder",
    )
    p.add_argument(
        "--yelp-out",
        default=os.path.join(REPO, "benchmarks", "runs", "yelp-cpu"),
        help="benchmarks/control.py's Yelp folder (its trainings are shared)",
    )
    p.add_argument("--out", default=os.path.join(REPO, "benchmarks", "runs", "prior-cpu"))
    p.add_argument("--pretrained-bart", metavar="CKPT")
    p.add_argument("--iw-samples", type=int, default=100)
    p.add_argument("--prior-samples", type=int, default=1000)
    p.add_argument(
        "--reverse-ppl",
        action="store_true",
        help="also train an LM on each prior's samples and on real sentences (coverage)",
    )
    p.add_argument(
        "--reverse-updates",
        type=int,
        default=300,
        help="updates of each reverse-PPL LM (default 300; the best on valid is scored)",
    )
    p.add_argument(
        "--report",
        action="store_true",
        help="write the table from what earlier runs finished, running nothing",
    )
    p.add_argument("--results", default=os.path.join(REPO, "benchmarks", "results", "prior.md"))
    p.add_argument(
        "--keep-other-points",
        action="store_true",
        help="keep the rows of points not in --points from the existing --results JSON "
        "(each row names the run that made it), so points run apart share one table",
    )
    args = p.parse_args()
    names = [n.strip() for n in args.points.split(";") if n.strip()]
    unknown = [n for n in names if n not in POINTS]
    if unknown:
        p.error(f"--points: unknown {unknown}; choose from {list(POINTS)}")
    b = dict(harness.BUDGETS["cpu"])
    made = harness.made_by("benchmarks/prior.py")
    points, jobs = [], {}
    for name in names:
        info = POINTS[name]
        if info["corpus"] == "synth":
            point = harness.synth_jobs(os.path.abspath(args.out), b)
        elif info["corpus"] == "yelp":
            point = yelp_jobs(info["setting"], args, b)
        else:
            point = harness.ptb_jobs(info["setting"], args, b)
        point.update(name=name, **info)
        jobs.update(point.pop("jobs"))
        for kind in PRIOR_KINDS:
            jobs[f"fit {kind} {name}"] = fit_job(point, kind, b)
        for kind in PRIOR_KINDS:
            jobs[f"eval {kind} {name}"] = eval_job(point, kind, args, b)
        jobs[f"eval lm {name}"] = lm_test_job(point, b)
        if args.reverse_ppl:
            jobs.update(reverse_jobs(point, args, b))
        points.append(point)
    if not args.report:
        harness.run_queue(jobs, 2)
    else:  # the points whose evaluations have finished
        finished = [
            p for p in points if all(os.path.isfile(eval_path(p, k, args)) for k in PRIOR_KINDS)
        ]
        for point in points:
            if point not in finished:
                harness.log(f"--report: {point['name']} is not evaluated yet: left out")
        points = finished

    rows = [dict(r, made=made) for point in points for r in point_rows(point, args)]
    stem = args.results[: -len(".md")]
    if args.keep_other_points and os.path.isfile(stem + ".json"):
        ours = {point_name(r) for r in rows}
        rows = [r for r in kept_rows(stem + ".json") if point_name(r) not in ours] + rows
    os.makedirs(os.path.dirname(os.path.abspath(args.results)), exist_ok=True)
    with open(args.results, "w") as f:
        f.write(results_markdown(args, rows))
    harness.write_results_json(stem, {"rows": rows})
    plot(stem + ".png", rows)
    print(open(args.results).read())
    harness.log(f"wrote {args.results}, {stem}.json and {stem}.png")


if __name__ == "__main__":
    main()
