#!/usr/bin/env python3
"""Does a pretrained BART pay, and does its decoder ignore z? bart_vae fine-tuned from a BART
pretrained here with fairseq's own denoising task, against the same bart_vae from scratch, on
all of a word-level corpus (Penn Treebank by default) and on a 10% slice of its training text.

    benchmarks/pretrained.sh                        # PTB, the CPU budget
    benchmarks/pretrained.sh --data DIR --out RUNS  # any corpus: DIR/{train,valid,test}.txt

1. Pretrain: BART's text infilling with `fairseq-train --task denoising --arch bart_base` at
   bart_vae_small's dimensions (2+2 layers, width 128, FFN 512, 4 heads, 256 positions): spans
   of Poisson(3.5) length over 30% of the tokens, each span replaced by one <mask> (10% of them by
   a random word instead), no sentence permutation (one sentence a line) and no rotation, on the
   corpus's whole training text, for --pretrain-hours of training, or --pretrain-updates, or
   --pretrain-epochs (on a few thousand sentences about 10 epochs: docs/results.md).
2. Fine-tune bart_vae_small from it with --finetune-from-model (the encoder, decoder and
   embeddings copied, the latent modules new), and train the same bart_vae_small from scratch:
   same setting (KL remedy, benchmarks/ptb.py's default unless --setting says otherwise),
   updates, batches, optimiser and seed, on (a) all of the training text and (b) a fixed random
   10% of its sentences (the low-resource case), binarised with the full text's dictionary so the
   pretrained embeddings fit.
3. Train benchmarks/ptb.py's transformer_lm of the same decoder size on the same data and
   updates: the reference line.
4. Evaluate every model's checkpoint_best.pt (lowest validation loss from the end of the
   warm-up on: the 10% runs see each sentence dozens of times) on the test split:
   fairseq-vae-eval (IW-PPL per word with K importance samples, -ELBO, KL, MI, AU,
   reconstruction BLEU) and fairseq-eval-lm.

Jobs run two at a time with one thread each (2 cores). Everything is written under --out
(default benchmarks/runs/pretrained-<budget>, ignored by git); a rerun skips every training and
evaluation that finished (fairseq resumes an unfinished training from its checkpoint_last.pt).
The table goes to --results (Markdown) with the same rows in a .json beside it.
"""

import argparse
import datetime
import json
import os
import re
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness  # noqa: E402  (settings, job builders, the queue, corpus preparation)

DATA_SIZES = {"full": 1.0, "10%": 0.1}
# the targets: on 10% of the data the fine-tuned model's IW-PPL at most 0.85 x the
# from-scratch model's, on all of it at most 1.0 x, and in both no posterior collapse
PPL_RATIO = {"10%": 0.85, "full": 1.0}
FLOOR = {"kl": 5.0, "mi": 3.0, "au": 16}


def last_valid_loss(logfile: str):
    """The last validation loss (base 2) of a fairseq-train log, None before the first."""
    losses = re.findall(r"valid on 'valid' subset \| loss ([0-9.]+)", open(logfile).read())
    return float(losses[-1]) if losses else None


def best_update(logfile: str):
    """The update at which fairseq last saved checkpoint_best.pt (lowest validation loss)."""
    saved = re.findall(r"checkpoint_best\.pt \(epoch \d+ @ (\d+) updates", open(logfile).read())
    return int(saved[-1]) if saved else None


def checks(rows: list) -> list:
    """(data, setting, what, met) for each target, per data size and setting."""
    out = []
    for data, setting in dict.fromkeys((r["data"], r["setting"]) for r in rows):
        by = {r["init"]: r for r in rows if (r["data"], r["setting"]) == (data, setting)}
        if set(by) != {"pretrained", "scratch"}:
            continue
        pre, scratch, ratio = by["pretrained"], by["scratch"], PPL_RATIO[data]
        out.append(
            (
                data,
                setting,
                f"pretrained IW-PPL {pre['ppl_word']:.1f} <= {ratio} x "
                f"scratch's {scratch['ppl_word']:.1f}",
                pre["ppl_word"] <= ratio * scratch["ppl_word"],
            )
        )
        for init, r in by.items():
            out.append(
                (
                    data,
                    setting,
                    f"{init}: KL >= 5, MI >= 3, AU >= 16",
                    all(r[k] >= v for k, v in FLOOR.items()),
                )
            )
    return out


def markdown(args, b, corpus, pretrain, rows, lm_rows, started) -> str:
    name = corpus["name"]
    _, length = harness.pretrain_length(
        args.pretrain_hours, args.pretrain_updates, args.pretrain_epochs
    )
    lines = [
        f"# {name}: bart_vae fine-tuned from a BART pretrained here, against from scratch",
        "",
        f"Written by `benchmarks/pretrained.sh {' '.join(sys.argv[1:])}` on {started}.",
        f"Machine: {harness.machine()}.",
        "",
        f"Corpus `{name}` (`{harness.rel(args.data)}`): "
        + ", ".join(
            f"{s} {c['sentences']} sentences / {c['tokens']} tokens"
            for s, c in corpus["splits"].items()
        )
        + f"; the 10% slice: {corpus['subset_sentences']} training sentences. Test split; PPL "
        "per word (+1 end of sentence); NLL, -ELBO, KL and MI in nats per sentence; "
        f"K importance samples ({args.iw_reason}).",
        "",
        "| setting | init | data | K | IW-PPL | IW-NLL | -ELBO | KL | MI | AU | rec. BLEU "
        "| updates | best at | train min | LM PPL |",
        "| --- | --- | --- " + "| ---: " * 12 + "|",
    ]
    lm = {r["data"]: r for r in lm_rows}
    for r in rows:
        lines.append(
            f"| {r['setting']} | {r['init']} | {r['data']} | {r['iw_samples']} "
            f"| {r['ppl_word']:.2f} | {r['iw_nll']:.2f} | {r['neg_elbo']:.2f} | {r['kl']:.2f} "
            f"| {r['mi']:.2f} | {r['au']}/{harness.LATENT_DIM} | {r['recon_bleu']:.2f} "
            f"| {r['updates']} | {harness.fmt(r['best_update'], 'd')} | {r['train_min']:.1f} "
            f"| {harness.fmt(lm.get(r['data'], {}).get('ppl_word'), '.2f')} |"
        )
    lines += ["", '"best at": the update of checkpoint_best.pt, the one evaluated.', "", "Targets:"]
    lines += [
        f"- {data}, {setting}: {what}: {'met' if met else 'missed'}"
        for data, setting, what, met in checks(rows)
    ]
    lines += (
        [
            "",
            "## Settings",
            "",
            f"- Pretraining: `fairseq-train --task denoising --arch bart_base` at the VAE's "
            f"dimensions ({b['layers']}+{b['layers']} layers, width {b['dim']}, FFN {b['ffn']}, "
            f"{b['heads']} heads, 256 positions): text infilling, 30% of the tokens masked in "
            "Poisson(3.5)-long spans, each span one `<mask>` (10% a random word), no sentence "
            "permutation, no rotation; all of the training text; "
            f"{pretrain['updates']} updates in {pretrain['minutes']:.1f} min of training "
            f"({length}, one thread); last validation loss "
            f"{harness.fmt(pretrain['valid_loss'], '.3f')} bits per token.",
            f"- VAE, both inits: `--arch {b['vae_arch']}`, with the settings (KL remedies) of "
            "benchmarks/ptb.py below; fine-tuned: the same command with `--finetune-from-model` "
            "the pretrained checkpoint.",
        ]
        + [
            f"  - {name}{' (main setting: both data sizes)' if name == args.setting else ''}: "
            f"`{' '.join(harness.setting_args(harness.SETTINGS[name]))}`"
            for name in dict.fromkeys([args.setting] + [r["setting"] for r in rows])
        ]
        + [
            f"- Training, every model: Adam (0.9, 0.98), lr {b['lr']}, inverse_sqrt with "
            f"{b['warmup']} warm-up updates, --max-tokens {b['max_tokens']}, dropout 0.1, seed "
            f"{harness.SEED}; {args.full_updates} updates on all the data, "
            f"{args.subset_updates} on the 10% slice (its text binarised with the full text's "
            "dictionary); two jobs at a time with one thread each. checkpoint_best.pt (lowest "
            "validation loss, validating "
            f"from update {b['warmup']}, the end of the warm-up: `--validate-after-updates`) is "
            "evaluated.",
            "- LM PPL: benchmarks/ptb.py's transformer_lm (the VAE decoder's size) trained on the "
            "same data for the same updates, `fairseq-eval-lm --sample-break-mode eos`.",
            "",
        ]
    )
    return "\n".join(lines)


def main():
    # the settings that start from scratch (ptb.py's "BART init" ones already fine-tune)
    fine_tunable = [n for n, s in harness.SETTINGS.items() if not s.get("bart_init")]
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        epilog=__doc__.split("\n\n", 1)[1],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--budget", choices=sorted(harness.BUDGETS), default="cpu")
    p.add_argument(
        "--data",
        default=os.path.join("..", "shared", "data", "ptb"),
        help="folder with a word-level corpus's train.txt, valid.txt and test.txt "
        "(relative to the current folder; default ../shared/data/ptb)",
    )
    p.add_argument("--out", help="working folder (default benchmarks/runs/pretrained-<budget>)")
    p.add_argument(
        "--results",
        default=os.path.join(harness.REPO, "benchmarks", "results", "pretrained.md"),
        help="the table (Markdown); the .json of the same name goes beside it",
    )
    p.add_argument(
        "--setting",
        default=harness.DEFAULT_SETTING,
        choices=fine_tunable,
        help="the VAE's KL remedy, a setting of benchmarks/ptb.py",
    )
    p.add_argument(
        "--remedies",
        default="BN-VAE gamma 1.0",
        help="';'-separated settings of benchmarks/ptb.py also trained, scratch and "
        "fine-tuned, on the 10%% slice, where the default setting's latent collapses "
        "(default: BN-VAE gamma 1.0; '' for none)",
    )
    p.add_argument(
        "--pretrain-hours",
        type=float,
        default=0.75,
        help="training time of the denoising pretraining (default 0.75)",
    )
    length = p.add_mutually_exclusive_group()
    length.add_argument(
        "--pretrain-updates",
        type=int,
        help="updates of the denoising pretraining, instead of --pretrain-hours "
        "(an update count does not depend on the machine's load)",
    )
    length.add_argument(
        "--pretrain-epochs",
        type=int,
        help="passes of the denoising pretraining over the training text, instead of "
        "--pretrain-hours: the length that carries from one corpus size to another "
        "(docs/results.md: about 10 on a few thousand sentences)",
    )
    p.add_argument(
        "--pretrain-keep-every",
        type=int,
        metavar="N",
        help="also keep the pretraining's checkpoint every N updates "
        "(bart/checkpoint_<epoch>_<updates>.pt): shorter pretrainings to fine-tune from",
    )
    p.add_argument(
        "--full-updates",
        type=int,
        help="updates on all the data (default: the budget's, as benchmarks/ptb.py)",
    )
    p.add_argument(
        "--subset-updates",
        type=int,
        help="updates on the 10%% slice (default: half the full updates)",
    )
    p.add_argument(
        "--pretrain-only",
        action="store_true",
        help="run only the denoising pretraining (for benchmarks/ptb.py's "
        "--pretrained-bart <out>/bart/checkpoint_last.pt), not the comparison",
    )
    p.add_argument(
        "--report",
        action="store_true",
        help="write the table from what earlier runs finished, running nothing",
    )
    p.add_argument("--iw-samples", type=int, default=100, help="importance samples (default 100)")
    p.add_argument(
        "--iw-reason",
        default="K=100: K=500 takes about 35 min a model on PTB test "
        "on these 2 cores, K=100 about a fifth of that",
        help="why this K, for the report",
    )
    args = p.parse_args()
    remedies = [n.strip() for n in args.remedies.split(";") if n.strip()]
    unusable = [n for n in remedies if n not in fine_tunable]
    if unusable:
        p.error(
            f"--remedies: {unusable} are not settings a BART fine-tunes here; choose from "
            f"{fine_tunable}"
        )
    if not args.results.endswith(".md"):
        p.error(f"--results must name a .md file, got {args.results}")
    b = dict(harness.BUDGETS[args.budget])
    args.full_updates = args.full_updates or b["max_update"]
    args.subset_updates = args.subset_updates or args.full_updates // 2
    out = os.path.abspath(
        args.out or os.path.join(harness.REPO, "benchmarks", "runs", f"pretrained-{args.budget}")
    )
    started = datetime.datetime.now().strftime("%Y-%m-%d %H:%M")
    if not os.path.isdir(args.data):
        p.error(f"--data {args.data}: no such folder")
    corpus = {
        "name": os.path.basename(os.path.abspath(args.data)),
        "data": harness.rel(args.data),
        "splits": harness.corpus_stats(args.data),
    }
    data = {"full": harness.prepare(args.data, out)}
    subset = harness.subset_corpus(args.data, out, DATA_SIZES["10%"])
    corpus["subset_sentences"] = harness.corpus_stats(subset)["train"]["sentences"]
    data["10%"] = harness.prepare(
        subset, out, "data-bin-10pct", srcdict=os.path.join(data["full"], "dict.txt")
    )

    pre_dir = os.path.join(out, "bart")
    pretrained = os.path.join(pre_dir, "checkpoint_last.pt")
    k = args.iw_samples
    # each evaluation is queued right after its training: a finished model is evaluated before
    # the next one starts training, so a session that ends early leaves finished rows
    # models: (setting, init, size) -> (folder, its evaluation's job); the LM's setting is None
    jobs, models = {}, {}
    jobs["pretrain"] = harness.train_job(
        [
            harness.pretrain_cmd(
                data["full"],
                b,
                pre_dir,
                args.pretrain_hours,
                args.pretrain_updates,
                args.pretrain_epochs,
                args.pretrain_keep_every,
            )
        ],
        os.path.join(pre_dir, "train.log"),
    )
    runs = [(None, "lm", size) for size in DATA_SIZES]
    runs += [
        (args.setting, init, size) for size in DATA_SIZES for init in ("scratch", "pretrained")
    ]
    runs += [
        (remedy, init, "10%")
        for remedy in remedies
        if remedy != args.setting
        for init in ("scratch", "pretrained")
    ]
    for setting, init, size in runs:
        updates = args.full_updates if size == "full" else args.subset_updates
        tag = size.replace("%", "pct")
        if init == "lm":
            name, d = f"transformer_lm {size}", os.path.join(out, f"lm-{tag}")
        else:
            # the main setting's folders keep their plain names
            suffix = "" if setting == args.setting else "-" + harness.setting_dir(setting)
            name = f"bart_vae {init} {size}" + (f", {setting}" if suffix else "")
            d = os.path.join(out, f"vae-{init}-{tag}{suffix}")
        ckpt = os.path.join(d, "checkpoint_best.pt")
        if init == "lm":
            cmds = [harness.lm_train_cmd(data[size], b, updates, d)]
            evaluation = harness.lm_eval_job(
                data[size], ckpt, os.path.join(d, "test.log"), b, after=[name]
            )
        else:
            cmds = harness.vae_train_cmds(data[size], b, harness.SETTINGS[setting], updates, d)
            evaluation = harness.vae_eval_job(
                data[size], ckpt, "test", k, os.path.join(d, f"test-K{k}.json"), b, after=[name]
            )
        if init == "lm":  # the VAE's selection starts after the warm-up (harness.valid_selection)
            cmds[-1] = cmds[-1] + ["--validate-after-updates", str(b["warmup"])]
        if init == "pretrained":
            cmds[0] = cmds[0] + ["--finetune-from-model", pretrained]
        jobs[name] = harness.train_job(
            cmds, os.path.join(d, "train.log"), after=["pretrain"] if init == "pretrained" else []
        )
        jobs[f"eval {name}"] = evaluation
        models[(setting, init, size)] = (d, evaluation)
    if args.pretrain_only:
        harness.run_queue({"pretrain": jobs["pretrain"]}, slots=1)
        harness.log(f"pretrained BART: {pretrained}")
        return
    if not args.report:
        harness.run_queue(jobs, slots=2 if b["parallel"] else 1)
    pending = [n for n, j in jobs.items() if not os.path.isfile(j["done"])]

    pre_summary = harness.train_summary(os.path.join(pre_dir, "train.log"))
    pretrain = {**pre_summary, "valid_loss": last_valid_loss(os.path.join(pre_dir, "train.log"))}
    rows, lm_rows = [], []
    for (setting, init, size), (d, evaluation) in models.items():
        if not os.path.isfile(evaluation["done"]):
            continue
        trained = harness.train_summary(os.path.join(d, "train.log"))
        if init == "lm":
            lm = harness.lm_result(evaluation["log"])
            lm_rows.append(
                {
                    "model": "transformer_lm",
                    "data": size,
                    "ppl_word": lm["ppl"],
                    "updates": trained["updates"],
                    "train_min": round(trained["minutes"], 1),
                }
            )
        else:
            report = json.load(open(evaluation["done"]))
            rows.append(
                {
                    "init": init,
                    "data": size,
                    "setting": setting,
                    **harness.vae_metrics(report, trained),
                    "best_update": best_update(os.path.join(d, "train.log")),
                }
            )
    rows.sort(
        key=lambda r: (r["data"] != "10%", r["setting"] != args.setting, r["setting"], r["init"])
    )
    table = markdown(args, b, corpus, pretrain, rows, lm_rows, started)
    if pending:
        table += (
            "\n**Not finished yet** (a rerun without --report goes on from here): "
            + ", ".join(pending)
            + ".\n"
        )
    os.makedirs(os.path.dirname(os.path.abspath(args.results)), exist_ok=True)
    with open(args.results, "w") as f:
        f.write(table)
    stem = args.results[: -len(".md")]
    with open(stem + ".json", "w") as f:
        json.dump(
            {
                "corpus": corpus,
                "budget": args.budget,
                "setting": args.setting,
                "pretrain": pretrain,
                "lm": lm_rows,
                "rows": rows,
                "pending": pending,
                "remedies": remedies,
                "targets": [
                    {"data": d, "setting": s, "check": w, "met": m} for d, s, w, m in checks(rows)
                ],
            },
            f,
            indent=1,
        )
    print(table)
    harness.log(f"wrote {args.results} and {stem}.json")


if __name__ == "__main__":
    main()
