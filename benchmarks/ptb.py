#!/usr/bin/env python3
"""A word-level corpus (Penn Treebank by default): bart_vae's operating points against
fairseq's own transformer_lm at equal decoder size and budget.

    benchmarks/ptb.sh --budget cpu                 # the LM and the default setting
    benchmarks/ptb.sh --budget cpu --sweep         # the LM and every setting of SETTINGS
    benchmarks/ptb.sh --data DIR --sweep           # any corpus: DIR/{train,valid,test}.txt
    benchmarks/ptb.sh --budget gpu                 # bart_vae base sizes, bf16, on one GPU

The corpus is already tokenised word-level text, so it is binarised word-level with
fairseq-preprocess --only-source (no BPE): a model token is a word or the end of sentence, and
perplexities are per word +1 </s> per sentence, the unit of the text-VAE literature. The report
names the corpus (the --data folder) and counts its sentences and tokens from the text.

Both models train on the same binarised data, for the same number of updates, with the same
batches (--max-tokens), optimiser, learning rate schedule, dropout and seed, and a decoder of the
same width, depth, heads, activation, positions and tied embeddings. Then on the test split:

* transformer_lm: fairseq-eval-lm --sample-break-mode eos, PPL = 2 ** (base-2 loss per token);
* bart_vae: fairseq-vae-eval, IW-NLL and IW-PPL with K importance samples, -ELBO, KL, MI, AU
  and reconstruction BLEU (greedy from the posterior mean).

Each VAE setting (a KL remedy: cyclical annealing with free bits, BN-VAE at a few gammas, i.e.
KL targets, Li et al.'s autoencoder-then-reset-decoder recipe, z in every decoder layer) is an
operating point on the rate/distortion curve. With several settings every point is evaluated
with --sweep-iw-samples (100) and the chosen one (CHOICE_RULE) again with --iw-samples (500).
The table goes to --results (Markdown), with the same rows in a .json and the KL against
IW-PPL and BLEU plot in a .png of the same name beside it.

Everything else is written under --out (default benchmarks/runs/ptb-<budget>, ignored by git).
The data is read from --data and never copied into the repository.
"""

import argparse
import datetime
import json
import os
import sys
from typing import List, Optional

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from harness import (  # noqa: E402
    BUDGETS,
    CHECKPOINTS,
    DEFAULT_SETTING,
    LATENT_DIM,
    RECIPE_FLOOR,
    REPO,
    SEED,
    SETTINGS,
    VALID_IW_SAMPLES,
    bart_pretraining,
    corpus_stats,
    fit_prior_job,
    fmt,
    lm_eval_job,
    lm_result,
    lm_row,
    lm_train_cmd,
    log,
    machine,
    prepare,
    prior_row,
    recipe_checks,
    rel,
    row_label,
    run_queue,
    setting_args,
    setting_dir,
    train_job,
    train_summary,
    vae_eval,
    vae_eval_job,
    vae_row,
    vae_train_cmds,
    valid_selection,
)

# the issue's PTB target for an operating point, and how the point re-evaluated with the full
# K is chosen
TARGET = {"kl": 12.0, "mi": 6.0, "au": 24, "recon_bleu": 10.0}
CHOICE_RULE = (
    "the lowest IW-PPL among the points with KL >= 12, MI >= 6, AU >= 24 and "
    "BLEU >= 10; if none has them all, the lowest IW-PPL"
)


def meets_target(row: dict) -> bool:
    return all(row[key] >= value for key, value in TARGET.items())


def choose(rows: List[dict]) -> dict:
    """The operating point re-evaluated with the full K (CHOICE_RULE)."""
    pool = [r for r in rows if meets_target(r)] or rows
    return min(pool, key=lambda r: r["ppl_word"])


def results_markdown(
    args,
    b: dict,
    corpus: dict,
    rows: List[dict],
    chosen: dict,
    started: str,
    bart: Optional[dict] = None,
) -> str:
    name = corpus["name"]
    lm = rows[0]
    lines = [
        f"# {name}: bart_vae against transformer_lm (`--budget {args.budget}`)",
        "",
        f"Written by `benchmarks/ptb.sh {' '.join(sys.argv[1:])}` on {started}.",
        f"Machine: {machine()}.",
        "",
        f"Corpus `{name}` (`{rel(args.data)}`), counted from its text: "
        + ", ".join(
            f"{split} {c['sentences']} sentences / {c['tokens']} tokens"
            for split, c in corpus["splits"].items()
        )
        + " (tokens: words + 1 end of sentence). Test split, perplexities per token of the "
        "word-level binarisation, i.e. per word +1 end of sentence. NLL, -ELBO, KL and MI in "
        "nats per sentence. KL target: the floor the remedy puts under the KL (BN-VAE "
        f"gamma^2 / 2, or free bits lambda, per dimension, times the latent size {LATENT_DIM}).",
        "",
        "| model | setting | KL target | K | PPL | x LM | NLL | -ELBO | KL | MI | AU | rec. BLEU "
        "| updates | train min |",
        "| --- | --- " + "| ---: " * 12 + "|",
    ]
    for r in rows:
        mark = "**" if r is chosen else ""
        au = "" if r["au"] is None else f"{r['au']}/{LATENT_DIM}"
        lines.append(
            f"| {r['model']} | {mark}{row_label(r)}{mark} | {fmt(r['kl_target'], '.1f')} "
            f"| {fmt(r['iw_samples'], 'd')} | {r['ppl_word']:.2f} "
            f"| {r['ppl_word'] / lm['ppl_word']:.3f} | {fmt(r['iw_nll'], '.2f')} "
            f"| {fmt(r['neg_elbo'], '.2f')} | {fmt(r['kl'], '.2f')} | {fmt(r['mi'], '.2f')} "
            f"| {au} | {fmt(r['recon_bleu'], '.2f')} | {r['updates']} | {r['train_min']:.1f} |"
        )
    checks = {
        "IW-PPL <= LM PPL": chosen["ppl_word"] <= lm["ppl_word"],
        **{f"{k} >= {v}": chosen[k] >= v for k, v in TARGET.items()},
    }
    lines += [
        "",
        "Each point against the same-size LM, with a latent that is not collapsed (issue #25's "
        "test of a recipe on any corpus):",
        "",
    ]
    for r in rows[1:]:
        checks_r = recipe_checks(r, lm)
        lines.append(
            f"- {row_label(r)} (K={r['iw_samples']}): "
            + ", ".join(f"{k} {'met' if v else 'missed'}" for k, v in checks_r.items())
        )
    lines += [
        "",
        f"Chosen point (bold; {CHOICE_RULE}), K={chosen['iw_samples']}: "
        + ", ".join(f"{k}: {'met' if v else 'missed'}" for k, v in checks.items())
        + ".",
        f"The plot of the trade-off is `{os.path.basename(args.results)[:-3]}.png`; every row is "
        f"also in `{os.path.basename(args.results)[:-3]}.json`.",
        "",
        "## Settings",
        "",
        f"- Data: `{rel(args.data)}` binarised word-level with `fairseq-preprocess --only-source` "
        "(no BPE; an `<unk>` in the text is fairseq's unknown word).",
        f"- Decoder, both models: {b['layers']} layers, width {b['dim']}, FFN {b['ffn']}, "
        f"{b['heads']} heads, GELU, learned positions, layer norm on embeddings, tied input/output "
        "embeddings, dropout 0.1. The VAE's decoder layers also hold the cross-attention to the "
        f"latent memory; its encoder is `{b['vae_arch']}`'s; latent {LATENT_DIM}.",
        f"- Training, both: Adam (0.9, 0.98), lr {b['lr']}, inverse_sqrt with {b['warmup']} "
        f"warm-up updates, --max-tokens {b['max_tokens']}, {b['max_update']} updates at most, "
        f"seed {SEED}"
        + (f", {' '.join(b['precision'])}" if b["precision"] else "")
        + (
            ", two trainings side by side with one thread each"
            if args.slots > 1
            else ", one training at a time"
        )
        + ". "
        + (
            "The last checkpoint of each is evaluated."
            if args.checkpoint == "last"
            else "The best checkpoint of each on the valid split is evaluated: the LM's by its "
            f"loss, the VAE's by its IW-NLL with K={VALID_IW_SAMPLES} "
            f"(`{' '.join(valid_selection(b))}`)."
        ),
        "- VAE settings (fairseq-train options):",
    ]
    for r in [r for r in rows[1:] if r.get("prior", "standard") == "standard"]:
        s = SETTINGS[r["setting"]]
        how = " ".join(setting_args(s))
        for option in ("dropout", "lr"):
            if option in s:
                how += f" --{option} {s[option]}"
        if s.get("autoencoder_first"):
            how = (
                f"first {b['max_update'] // 2} updates with `--kl-schedule constant "
                "--kl-beta-max 0`, then `--finetune-from-model AE --reset-decoder "
                f"{how}`"
            )
        elif s.get("bart_init"):
            how = f"`--finetune-from-model BART {how}`"
        else:
            how = f"`{how}`"
        if f"- {r['setting']}:" not in "\n".join(lines):
            lines.append(f"  - {r['setting']}: {how}")
    if bart:
        cost = f", {bart['updates']} updates in {bart['minutes']:.1f} min of training"
        lines.append(
            f"  - BART: `{bart['checkpoint']}`, BART's text infilling with fairseq's denoising "
            f"task on the training text (`{bart['data']}`{cost}; benchmarks/pretrained.sh). "
            "The BART init rows' updates and minutes do not include it."
        )
    lines += [
        "- VAE evaluation: `fairseq-vae-eval` with K importance samples as the table says, MI "
        "over the whole test set, AU threshold 0.01, BLEU of greedy reconstructions from the "
        "posterior mean (sacrebleu).",
        "- LM evaluation: `fairseq-eval-lm --sample-break-mode eos`.",
        "",
    ]
    return "\n".join(lines)


def plot(path: str, rows: List[dict], corpus_name: str):
    """Rate (KL) against distortion: IW-PPL (the LM as a line) and reconstruction BLEU."""
    import logging

    import matplotlib

    logging.getLogger("matplotlib").setLevel(logging.WARNING)  # fairseq's root logger is DEBUG
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    lm, vae = rows[0], [r for r in rows[1:]]
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2))
    for r in vae:
        label = f"{row_label(r)} (K={r['iw_samples']})"
        left.scatter(r["kl"], r["ppl_word"], label=label)
        right.scatter(r["kl"], r["recon_bleu"], label=label)
    left.axhline(lm["ppl_word"], color="black", linestyle="--", label="transformer_lm")
    left.set(
        xlabel="KL (nats per sentence)",
        ylabel="test PPL per word",
        title=f"{corpus_name}: likelihood",
    )
    right.set(
        xlabel="KL (nats per sentence)",
        ylabel="reconstruction BLEU",
        title=f"{corpus_name}: reconstruction",
    )
    left.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main():
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        epilog=__doc__.split("\n\n", 1)[1],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--budget", choices=sorted(BUDGETS), default="cpu")
    p.add_argument(
        "--data",
        default=os.path.join("..", "shared", "data", "ptb"),
        help="folder with a word-level corpus's train.txt, valid.txt and test.txt "
        "(relative to the current folder)",
    )
    p.add_argument("--out", help="working folder (default benchmarks/runs/ptb-<budget>)")
    p.add_argument(
        "--results",
        default=os.path.join(REPO, "benchmarks", "results", "ptb.md"),
        help="the table (Markdown); the .json and .png of the same name go beside it",
    )
    p.add_argument(
        "--sweep",
        action="store_true",
        help=f"train every setting ({len(SETTINGS)}) instead of only the default",
    )
    p.add_argument("--settings", help="';'-separated setting names to train (see SETTINGS)")
    p.add_argument(
        "--pretrained-bart",
        metavar="CKPT",
        help="a BART denoising-pretrained on this corpus's training text (with "
        'benchmarks/pretrained.sh: <its out>/bart/checkpoint_last.pt); the "BART '
        'init" settings fine-tune it, and are left out of --sweep without it',
    )
    p.add_argument("--max-update", type=int, help="override the budget's update count")
    p.add_argument(
        "--checkpoint",
        choices=sorted(CHECKPOINTS),
        default="best",
        help="the checkpoint evaluated: 'best' on the valid split (the LM's by loss, the VAE's "
        f"by IW-NLL with K={VALID_IW_SAMPLES}, which every VAE training logs), or 'last'; the "
        "same trainings serve both, so a second run with the other evaluates only",
    )
    p.add_argument(
        "--fit-prior",
        choices=["gmm", "flow"],
        help="also fit this prior to each VAE's training posteriors (fairseq-vae-fit-prior, on "
        "the checkpoint evaluated) and add a row of the same model under it (IW-PPL of p'(z) "
        "p(x|z), Monte Carlo KL to p')",
    )
    p.add_argument(
        "--slots",
        type=int,
        help="trainings and evaluations run at once, each with one thread when more than one "
        "(default: 2 on the CPU budget, 1 on the GPU); 1 leaves the other core to another run",
    )
    p.add_argument(
        "--iw-samples",
        type=int,
        default=500,
        help="importance samples for the chosen point (default 500)",
    )
    p.add_argument(
        "--sweep-iw-samples",
        type=int,
        default=100,
        help="importance samples for every other point (default 100)",
    )
    p.add_argument(
        "--full-k",
        metavar="SETTINGS",
        default="",
        help="';'-separated settings also evaluated with --iw-samples beside the "
        "chosen point, e.g. the recipe you mean to use on this corpus",
    )
    args = p.parse_args()
    if not args.results.endswith(".md"):
        p.error(f"--results must name a .md file, got {args.results}")
    b = dict(BUDGETS[args.budget])
    if args.max_update:
        b["max_update"] = args.max_update
    args.slots = args.slots or (2 if b["parallel"] else 1)
    names = list(SETTINGS) if args.sweep else [DEFAULT_SETTING]
    if args.settings:
        names = [n.strip() for n in args.settings.split(";")]
        unknown = [n for n in names if n not in SETTINGS]
        if unknown:
            p.error(f"--settings: unknown {unknown}; choose from {list(SETTINGS)}")
    full_k = [n.strip() for n in args.full_k.split(";") if n.strip()]
    if [n for n in full_k if n not in names]:
        p.error(
            f"--full-k: {[n for n in full_k if n not in names]} are not among the settings "
            f"trained: {names}"
        )
    need_bart = [n for n in names if SETTINGS[n].get("bart_init")]
    if need_bart and not args.pretrained_bart:
        if args.settings:
            p.error(f"--settings {need_bart} fine-tune a pretrained BART: give --pretrained-bart")
        log(f"leaving out {need_bart}: no --pretrained-bart")
        names = [n for n in names if n not in need_bart]
    out = args.out or os.path.join(REPO, "benchmarks", "runs", f"ptb-{args.budget}")
    out = os.path.abspath(out)
    started = datetime.datetime.now().strftime("%Y-%m-%d %H:%M")
    corpus = {
        "name": os.path.basename(os.path.abspath(args.data)),
        "data": rel(args.data),
        "splits": corpus_stats(args.data) if os.path.isdir(args.data) else {},
    }
    data = prepare(args.data, out)
    bart = None
    if any(SETTINGS[n].get("bart_init") for n in names):
        bart = bart_pretraining(os.path.abspath(args.pretrained_bart), data)

    # every training and the evaluation of each, two at a time on the CPU budget; a rerun skips
    # what an earlier run finished
    k = args.sweep_iw_samples if len(names) > 1 else args.iw_samples
    logs = {"transformer_lm": os.path.join(out, "lm", "train.log")}
    jobs = {
        "transformer_lm": train_job(
            [lm_train_cmd(data, b, b["max_update"], os.path.join(out, "lm"))],
            logs["transformer_lm"],
        )
    }
    ckpt, suffix = CHECKPOINTS[args.checkpoint]
    jobs["eval transformer_lm"] = lm_eval_job(
        data,
        os.path.join(out, "lm", ckpt),
        os.path.join(out, "lm", f"test{suffix}.log"),
        b,
        after=["transformer_lm"],
    )
    for name in names:
        d = os.path.join(out, "vae", setting_dir(name))
        logs[name] = os.path.join(d, "train.log")
        jobs[name] = train_job(
            vae_train_cmds(
                data, b, SETTINGS[name], b["max_update"], d, bart and bart["checkpoint"]
            ),
            logs[name],
        )
        # queued right after its training: a session that ends early leaves finished rows
        jobs[f"eval {name}"] = vae_eval_job(
            data,
            os.path.join(d, ckpt),
            "test",
            k,
            os.path.join(d, f"test-K{k}{suffix}.json"),
            b,
            after=[name],
        )
        if args.fit_prior:
            prior = os.path.join(d, f"prior-{args.fit_prior}{suffix}.pt")
            jobs[f"fit prior {name}"] = fit_prior_job(
                data, os.path.join(d, ckpt), args.fit_prior, prior, b, after=[name]
            )
            jobs[f"eval {name}, fitted prior"] = vae_eval_job(
                data,
                os.path.join(d, ckpt),
                "test",
                k,
                os.path.join(d, f"test-K{k}{suffix}-{args.fit_prior}.json"),
                b,
                after=[f"fit prior {name}"],
                bleu=False,
                extra=["--prior-file", prior],
            )
    run_queue(jobs, args.slots)
    trained = {n: {"dir": os.path.dirname(log), **train_summary(log)} for n, log in logs.items()}
    test = corpus["splits"]["test"]
    lm = lm_result(os.path.join(out, "lm", f"test{suffix}.log"))
    rows = [lm_row(lm, trained["transformer_lm"], test["sentences"])]
    for name in names:
        report = json.load(open(os.path.join(trained[name]["dir"], f"test-K{k}{suffix}.json")))
        rows.append(vae_row(name, report, trained[name]))
    chosen = choose(rows[1:])
    # the chosen point, then any --full-k setting, again with the full K (a row each); with one
    # setting its row already has the full K
    for name in dict.fromkeys([chosen["setting"]] + full_k if k != args.iw_samples else []):
        d = trained[name]["dir"]
        report = vae_eval(
            data,
            os.path.join(d, ckpt),
            "test",
            args.iw_samples,
            os.path.join(d, f"test-K{args.iw_samples}{suffix}.json"),
            b,
        )
        rows.append(vae_row(name, report, trained[name]))
        if name == chosen["setting"]:
            chosen = rows[-1]
    if args.fit_prior:
        for name in names:
            path = os.path.join(trained[name]["dir"], f"test-K{k}{suffix}-{args.fit_prior}.json")
            rows.append(prior_row(name, json.load(open(path)), trained[name]))

    table = results_markdown(args, b, corpus, rows, chosen, started, bart)
    os.makedirs(os.path.dirname(os.path.abspath(args.results)), exist_ok=True)
    with open(args.results, "w") as f:
        f.write(table)
    stem = args.results[: -len(".md")]
    with open(stem + ".json", "w") as f:
        json.dump(
            {
                "corpus": corpus,
                "budget": args.budget,
                "target": TARGET,
                "choice": CHOICE_RULE,
                "chosen": chosen["setting"],
                "recipe_floor": RECIPE_FLOOR,
                "recipe_checks": [
                    {
                        "setting": r["setting"],
                        "prior": r["prior"],
                        "iw_samples": r["iw_samples"],
                        **recipe_checks(r, rows[0]),
                    }
                    for r in rows[1:]
                ],
                "pretrained_bart": bart,
                "rows": rows,
            },
            f,
            indent=1,
        )
    plot(stem + ".png", rows, corpus["name"])
    print(table)
    log(f"wrote {args.results}, {stem}.json and {stem}.png")


if __name__ == "__main__":
    main()
