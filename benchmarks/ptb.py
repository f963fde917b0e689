#!/usr/bin/env python3
"""Penn Treebank: bart_vae against fairseq's own transformer_lm at equal decoder size and budget.

    benchmarks/ptb.sh --budget cpu                 # the run behind benchmarks/results/ptb.md
    benchmarks/ptb.sh --budget cpu --sweep         # first the sweep of KL remedies on valid
    benchmarks/ptb.sh --budget gpu                 # bart_vae base sizes, bf16, on one GPU

PTB is already tokenised word-level text with <unk>, so it is binarised word-level with
fairseq-preprocess --only-source (no BPE): a model token is a word or the end of sentence, and
perplexities are per word +1 </s> per sentence, the unit of the text-VAE literature.

Both models train on the same binarised data, for the same number of updates, with the same
batches (--max-tokens), optimiser, learning rate schedule, dropout and seed, and a decoder of the
same width, depth, heads, activation, positions and tied embeddings; each run is also capped by
--stop-time-hours. Then on the test split:

* transformer_lm: fairseq-eval-lm --sample-break-mode eos, PPL = 2 ** (base-2 loss per token);
* bart_vae: fairseq-vae-eval, IW-NLL and IW-PPL with K importance samples (500, as He et al.
  2019), -ELBO, KL, MI, AU and reconstruction BLEU (greedy from the posterior mean).

With --sweep, a few KL-remedy settings are first trained for --sweep-updates and compared on the
validation split (-ELBO, KL, MI, AU from fairseq-vae-eval with K=10); the main run then uses the
best: the lowest valid -ELBO among the settings with KL >= 5 nats and AU >= 10. Without --sweep the
main run uses DEFAULT_REMEDY, the winner of the recorded sweep.

Everything is written under --out (default benchmarks/runs/ptb-<budget>, ignored by git) and the
table to --results (default benchmarks/results/ptb.md). The data is read from --data and never
copied into the repository.
"""

import argparse
import datetime
import json
import math
import os
import platform
import re
import shlex
import subprocess
import sys
import time
from typing import Dict, List, Optional

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BIN = os.path.dirname(sys.executable)  # the fairseq-* commands of this interpreter's env

# One decoder shape per budget; the LM copies the VAE decoder's hyper-parameters (bart_base's
# defaults: GELU, learned positions, layer norm on embeddings, unscaled tied embeddings).
BUDGETS = {
    "cpu": {
        "vae_arch": "bart_vae_small",
        "dim": 128, "ffn": 512, "layers": 2, "heads": 4,
        "max_update": 1600, "max_tokens": 4096, "lr": 1e-3, "warmup": 200,
        "hours": 1.0, "precision": [], "parallel": True,
        "sweep_updates": 400,
    },
    "gpu": {
        "vae_arch": "bart_vae",
        "dim": 768, "ffn": 3072, "layers": 6, "heads": 12,
        "max_update": 20000, "max_tokens": 8192, "lr": 3e-4, "warmup": 1000,
        "hours": 1.0, "precision": ["--bf16"], "parallel": False,
        "sweep_updates": 4000,
    },
}

SCHEDULES = {
    # beta = 0 for the first quarter, then a linear ramp over the second quarter, then 1
    "monotonic": ["--kl-schedule", "monotonic", "--kl-cycles", "1",
                  "--kl-zero-fraction", "0.25", "--kl-ramp-fraction", "0.25"],
    # Fu et al. 2019: 4 cycles, each beta = 0 for 1/4, ramp over 1/4, beta = 1 for 1/2
    "cyclical": ["--kl-schedule", "cyclical", "--kl-cycles", "4",
                 "--kl-zero-fraction", "0.25", "--kl-ramp-fraction", "0.25"],
}

# The KL remedies compared by --sweep: one change at a time from the first row.
SWEEP = {
    "cyclical, fb 0.25, wd 0, fusion att+emb": dict(
        schedule="cyclical", free_bits=0.25, word_dropout=0.0, latent_dim=32, to_embeddings=True),
    "monotonic, fb 0.25, wd 0, fusion att+emb": dict(
        schedule="monotonic", free_bits=0.25, word_dropout=0.0, latent_dim=32, to_embeddings=True),
    "cyclical, fb 0.25, wd 0.3, fusion att+emb": dict(
        schedule="cyclical", free_bits=0.25, word_dropout=0.3, latent_dim=32, to_embeddings=True),
    "cyclical, fb 0.25, wd 0, fusion att": dict(
        schedule="cyclical", free_bits=0.25, word_dropout=0.0, latent_dim=32, to_embeddings=False),
}
DEFAULT_REMEDY = "cyclical, fb 0.25, wd 0, fusion att"
SWEEP_RULE = "lowest valid -ELBO among the settings with KL >= 5 nats and AU >= 10"

SEED = 1


def log(msg: str):
    print(f"[ptb {time.strftime('%H:%M:%S')}] {msg}", flush=True)


def remedy_args(remedy: dict) -> List[str]:
    args = SCHEDULES[remedy["schedule"]] + [
        "--free-bits", str(remedy["free_bits"]),
        "--word-dropout", str(remedy["word_dropout"]),
        "--latent-dim", str(remedy["latent_dim"]),
    ]
    return args + (["--latent-to-embeddings"] if remedy["to_embeddings"] else [])


def common_train_args(b: dict, max_update: int, save_dir: str) -> List[str]:
    return [
        "--user-dir", os.path.join(REPO, "fairseq_vae"),
        "--optimizer", "adam", "--adam-betas", "(0.9,0.98)", "--lr", str(b["lr"]),
        "--lr-scheduler", "inverse_sqrt", "--warmup-updates", str(b["warmup"]),
        "--dropout", "0.1", "--attention-dropout", "0.0", "--activation-dropout", "0.0",
        "--max-tokens", str(b["max_tokens"]), "--required-batch-size-multiple", "1",
        "--max-update", str(max_update), "--stop-time-hours", str(b["hours"]),
        "--seed", str(SEED), "--num-workers", "0",
        "--save-dir", save_dir, "--no-epoch-checkpoints",
        "--log-format", "simple", "--log-interval", "50",
    ] + b["precision"] + ([] if b["precision"] else ["--cpu"])


def vae_train_cmd(data: str, b: dict, remedy: dict, max_update: int, save_dir: str) -> List[str]:
    return [
        os.path.join(BIN, "fairseq-train"), data, "--task", "text_vae",
        "--arch", b["vae_arch"], "--criterion", "elbo",
    ] + remedy_args(remedy) + common_train_args(b, max_update, save_dir)


def lm_train_cmd(data: str, b: dict, max_update: int, save_dir: str) -> List[str]:
    return [
        os.path.join(BIN, "fairseq-train"), data, "--task", "language_modeling",
        "--arch", "transformer_lm", "--criterion", "cross_entropy",
        "--sample-break-mode", "eos", "--tokens-per-sample", "256",
        "--decoder-embed-dim", str(b["dim"]), "--decoder-ffn-embed-dim", str(b["ffn"]),
        # transformer_lm's input and output dims default to 512 whatever the width is
        "--decoder-input-dim", str(b["dim"]), "--decoder-output-dim", str(b["dim"]),
        "--decoder-layers", str(b["layers"]), "--decoder-attention-heads", str(b["heads"]),
        "--activation-fn", "gelu", "--decoder-learned-pos", "--layernorm-embedding",
        "--no-scale-embedding", "--share-decoder-input-output-embed",
    ] + common_train_args(b, max_update, save_dir)


def run_logged(cmd: List[str], logfile: str, threads: Optional[int] = None) -> subprocess.Popen:
    """Start cmd with stdout and stderr to logfile; returns the process."""
    os.makedirs(os.path.dirname(logfile), exist_ok=True)
    env = dict(os.environ)
    if threads:
        env["OMP_NUM_THREADS"] = env["MKL_NUM_THREADS"] = str(threads)
    with open(logfile, "w") as f:
        f.write("$ " + " ".join(shlex.quote(c) for c in cmd) + "\n")
        f.flush()
        return subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT, env=env, cwd=REPO)


def wait_all(procs: Dict[str, subprocess.Popen], logs: Dict[str, str]) -> Dict[str, float]:
    """Wait for the processes; stop with the log's tail if one fails. Returns wall seconds."""
    start, seconds = time.time(), {}
    pending = dict(procs)
    while pending:
        for name, p in list(pending.items()):
            rc = p.poll()
            if rc is None:
                continue
            seconds[name] = time.time() - start
            del pending[name]
            if rc != 0:
                for q in pending.values():
                    q.terminate()
                with open(logs[name]) as f:
                    tail = f.readlines()[-25:]
                sys.exit(f"ptb: {name} failed (exit {rc}); the end of {logs[name]}:\n"
                         + "".join(tail))
            log(f"{name} done in {seconds[name] / 60:.1f} min")
        time.sleep(2)
    return seconds


def run_jobs(jobs: Dict[str, tuple], parallel: bool) -> Dict[str, float]:
    """jobs: name -> (cmd, logfile). Parallel jobs get one thread each (2-core CPU budget)."""
    seconds = {}
    if parallel:
        procs = {n: run_logged(c, l, threads=1) for n, (c, l) in jobs.items()}
        for n, (c, l) in jobs.items():
            log(f"started {n} (one thread), log {l}")
        return wait_all(procs, {n: l for n, (c, l) in jobs.items()})
    for n, (c, l) in jobs.items():
        log(f"started {n}, log {l}")
        seconds.update(wait_all({n: run_logged(c, l)}, {n: l}))
    return seconds


def train_summary(logfile: str) -> dict:
    """The number of updates done, from a fairseq-train log."""
    updates = [int(u) for u in re.findall(r"num_updates[= ](\d+)", open(logfile).read())]
    return {"updates": max(updates) if updates else 0}


def prepare(data_dir: str, out: str) -> str:
    """Binarise PTB word-level into out/data-bin (once; reused when the inputs are unchanged)."""
    for split in ("train", "valid", "test"):
        f = os.path.join(data_dir, f"{split}.txt")
        if not os.path.isfile(f):
            sys.exit(f"ptb: missing {f}: --data must be a folder with PTB's train.txt, valid.txt "
                     "and test.txt (default ../shared/data/ptb)")
    dest = os.path.join(out, "data-bin")
    stamp = os.path.join(dest, "source.json")
    source = {s: os.path.getsize(os.path.join(data_dir, f"{s}.txt"))
              for s in ("train", "valid", "test")}
    source["data"] = os.path.abspath(data_dir)
    if os.path.isfile(stamp) and json.load(open(stamp)) == source:
        log(f"reusing {dest}")
        return dest
    subprocess.run([sys.executable, os.path.join(REPO, "fairseq_vae", "check_text.py")]
                   + [os.path.join(data_dir, f"{s}.txt") for s in ("train", "valid", "test")],
                   check=True)
    subprocess.run(["rm", "-rf", dest], check=True)
    log(f"binarising {data_dir} word-level into {dest}")
    subprocess.run([
        os.path.join(BIN, "fairseq-preprocess"), "--only-source",
        "--trainpref", os.path.join(data_dir, "train.txt"),
        "--validpref", os.path.join(data_dir, "valid.txt"),
        "--testpref", os.path.join(data_dir, "test.txt"),
        "--destdir", dest, "--workers", "2",
    ], check=True, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
    json.dump(source, open(stamp, "w"))
    return dest


def vae_eval(data: str, ckpt: str, split: str, k: int, out_json: str, b: dict, bleu=True) -> dict:
    cmd = [
        os.path.join(BIN, "fairseq-vae-eval"), data, "--user-dir", os.path.join(REPO, "fairseq_vae"),
        "--path", ckpt, "--gen-subset", split, "--iw-samples", str(k), "--seed", str(SEED),
        "--results-json", out_json,
    ] + ([] if b["precision"] else ["--cpu"]) + ([] if bleu else ["--no-bleu"])
    logfile = out_json[: -len(".json")] + ".log"
    seconds = run_jobs({f"fairseq-vae-eval {split} K={k}": (cmd, logfile)}, parallel=False)
    report = json.load(open(out_json))
    report["settings"]["seconds"] = round(sum(seconds.values()), 1)
    return report


def lm_eval(data: str, ckpt: str, out_log: str, b: dict) -> dict:
    cmd = [
        os.path.join(BIN, "fairseq-eval-lm"), data, "--user-dir", os.path.join(REPO, "fairseq_vae"),
        "--path", ckpt, "--gen-subset", "test", "--sample-break-mode", "eos",
        "--tokens-per-sample", "256", "--max-tokens", "4096", "--seed", str(SEED),
    ] + ([] if b["precision"] else ["--cpu"])
    seconds = run_jobs({"fairseq-eval-lm test": (cmd, out_log)}, parallel=False)
    text = open(out_log).read()
    m = re.search(r"Evaluated ([0-9,]+) tokens", text)
    loss = re.search(r"Loss \(base 2\): ([0-9.]+), Perplexity: ([0-9.]+)", text)
    if not (m and loss):
        sys.exit(f"ptb: cannot find the loss in {out_log}")
    tokens, base2 = int(m.group(1).replace(",", "")), float(loss.group(1))
    return {"tokens": tokens, "nll_token": base2 * math.log(2), "ppl": 2 ** base2,
            "seconds": round(sum(seconds.values()), 1)}


def sweep(data: str, out: str, b: dict) -> dict:
    runs = {}
    names = list(SWEEP)
    for i in range(0, len(names), 2 if b["parallel"] else 1):
        batch = names[i : i + (2 if b["parallel"] else 1)]
        jobs = {}
        for name in batch:
            d = os.path.join(out, "sweep", f"r{names.index(name)}")
            jobs[name] = (vae_train_cmd(data, b, SWEEP[name], b["sweep_updates"], d),
                          os.path.join(d, "train.log"))
        seconds = run_jobs(jobs, b["parallel"])
        for name in batch:
            d = os.path.join(out, "sweep", f"r{names.index(name)}")
            rep = vae_eval(data, os.path.join(d, "checkpoint_last.pt"), "valid", 10,
                           os.path.join(d, "valid.json"), b, bleu=False)
            runs[name] = {"metrics": rep["metrics"], "train": train_summary(jobs[name][1]),
                          "train_s": round(seconds[name], 1), "remedy": SWEEP[name]}
    ok = [n for n, r in runs.items() if r["metrics"]["kl"] >= 5 and r["metrics"]["au"] >= 10]
    pool = ok or list(runs)
    best = min(pool, key=lambda n: runs[n]["metrics"]["neg_elbo"])
    result = {"runs": runs, "best": best, "rule": SWEEP_RULE, "updates": b["sweep_updates"],
              "all_failed_the_floors": not ok}
    json.dump(result, open(os.path.join(out, "sweep", "sweep.json"), "w"), indent=1)
    log(f"sweep winner: {best}")
    return result


def sweep_table(s: dict) -> List[str]:
    lines = [
        f"Each setting trained {s['updates']} updates (seed {SEED}); valid split, K=10. "
        f"Choice: {s['rule']}.",
        "",
        "| setting | valid -ELBO | rec. NLL | KL | MI | AU | IW-PPL (K=10) | chosen |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | :---: |",
    ]
    for name, r in s["runs"].items():
        m = r["metrics"]
        lines.append(
            f"| {name} | {m['neg_elbo']:.2f} | {m['rec_nll']:.2f} | {m['kl']:.2f} | {m['mi']:.2f} "
            f"| {m['au']} | {m['iw_ppl_token']:.1f} | {'yes' if name == s['best'] else ''} |")
    return lines


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    import torch
    import fairseq

    return (f"{cpu}, {os.cpu_count()} cores visible; Python {platform.python_version()}, "
            f"torch {torch.__version__}, fairseq {fairseq.__version__}")


def write_results(path: str, args, b: dict, remedy_name: str, vae: dict, lm: dict,
                  train: dict, sweep_result: Optional[dict], started: str):
    m, s = vae["metrics"], vae["settings"]
    target = {
        "IW-PPL <= LM PPL": m["iw_ppl_token"] <= lm["ppl"],
        "KL >= 5": m["kl"] >= 5, "MI >= 3": m["mi"] >= 3, "AU >= 10": m["au"] >= 10,
    }
    lines = [
        f"# Penn Treebank: bart_vae against transformer_lm (`--budget {args.budget}`)",
        "",
        f"Written by `benchmarks/ptb.sh --budget {args.budget}"
        + (" --sweep" if args.sweep else "") + f"` on {started}.",
        f"Machine: {machine()}.",
        "",
        "Test split, 3761 sentences; perplexities are per word, +1 end of sentence per sentence "
        f"({s['tokens']} tokens; fairseq-eval-lm scored {lm['tokens']}). NLL, -ELBO, KL and MI "
        "in nats per sentence.",
        "",
        "| model | PPL | NLL | -ELBO | KL | MI | AU | rec. BLEU | updates | train min |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
        f"| transformer_lm | {lm['ppl']:.2f} | {lm['nll_token'] * lm['tokens'] / s['sentences']:.2f} "
        f"| | | | | | {train['lm']['updates']} | {train['lm_s'] / 60:.1f} |",
        f"| bart_vae (IW, K={s['iw_samples']}) | {m['iw_ppl_token']:.2f} | {m['iw_nll']:.2f} "
        f"| {m['neg_elbo']:.2f} | {m['kl']:.2f} | {m['mi']:.2f} | {m['au']}/{s['latent_dim']} "
        f"| {m['recon_bleu']:.2f} | {train['vae']['updates']} | {train['vae_s'] / 60:.1f} |",
        "",
        "Targets: " + ", ".join(f"{k}: {'met' if v else 'missed'}" for k, v in target.items())
        + ".",
        f"The VAE's ELBO-PPL is {m['elbo_ppl_token']:.2f}. Evaluation took "
        f"{s['seconds'] / 60:.1f} min (VAE, K={s['iw_samples']}) and {lm['seconds'] / 60:.1f} min "
        "(LM).",
        "",
        "## Settings",
        "",
        f"- Data: `{args.data}` binarised word-level with `fairseq-preprocess --only-source` "
        "(no BPE; PTB's `<unk>` is fairseq's unknown word).",
        f"- Decoder, both models: {b['layers']} layers, width {b['dim']}, FFN {b['ffn']}, "
        f"{b['heads']} heads, GELU, learned positions, layer norm on embeddings, tied input/output "
        "embeddings, dropout 0.1. The VAE's decoder layers also hold the cross-attention to the "
        f"latent memory; its encoder is `{b['vae_arch']}`'s.",
        f"- Training, both: Adam (0.9, 0.98), lr {b['lr']}, inverse_sqrt with {b['warmup']} warm-up "
        f"updates, --max-tokens {b['max_tokens']}, {b['max_update']} updates at most, "
        f"--stop-time-hours {b['hours']}, seed {SEED}"
        + (f", {' '.join(b['precision'])}" if b["precision"] else "")
        + (", the two trainings run side by side with one thread each on the 2 cores"
           if b["parallel"] else "")
        + ". The last checkpoint of each is evaluated.",
        f"- KL remedies (VAE): {remedy_name}, i.e. `{' '.join(remedy_args(SWEEP[remedy_name]))}`.",
        f"- VAE evaluation: `fairseq-vae-eval --iw-samples {s['iw_samples']}`, MI over the whole "
        f"test set, AU threshold {s['au_threshold']}, BLEU of greedy reconstructions from the "
        "posterior mean (sacrebleu).",
        "- LM evaluation: `fairseq-eval-lm --sample-break-mode eos`.",
        "",
        "## Sweep of KL remedies (validation split)",
        "",
    ]
    if sweep_result:
        lines += sweep_table(sweep_result)
    else:
        lines.append("Not run in this invocation (`--sweep` runs it); the remedies above are "
                     "DEFAULT_REMEDY of benchmarks/ptb.py.")
    lines.append("")
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w") as f:
        f.write("\n".join(lines))
    return "\n".join(lines)


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                epilog=__doc__.split("\n\n", 1)[1],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--budget", choices=sorted(BUDGETS), default="cpu")
    p.add_argument("--data", default=os.path.join("..", "shared", "data", "ptb"),
                   help="folder with PTB's train.txt, valid.txt, test.txt (relative to the current folder)")
    p.add_argument("--out", help="working folder (default benchmarks/runs/ptb-<budget>)")
    p.add_argument("--results", default=os.path.join(REPO, "benchmarks", "results", "ptb.md"))
    p.add_argument("--sweep", action="store_true", help="run the sweep of KL remedies first")
    p.add_argument("--max-update", type=int, help="override the budget's update count")
    p.add_argument("--sweep-updates", type=int, help="override the budget's sweep update count")
    p.add_argument("--iw-samples", type=int, default=500)
    args = p.parse_args()
    b = dict(BUDGETS[args.budget])
    if args.max_update:
        b["max_update"] = args.max_update
    if args.sweep_updates:
        b["sweep_updates"] = args.sweep_updates
    out = os.path.abspath(args.out or os.path.join(REPO, "benchmarks", "runs", f"ptb-{args.budget}"))
    started = datetime.datetime.now().strftime("%Y-%m-%d %H:%M")
    data = prepare(args.data, out)

    sweep_result = sweep(data, out, b) if args.sweep else None
    remedy_name = sweep_result["best"] if sweep_result else DEFAULT_REMEDY

    vae_dir, lm_dir = os.path.join(out, "vae"), os.path.join(out, "lm")
    jobs = {
        "bart_vae": (vae_train_cmd(data, b, SWEEP[remedy_name], b["max_update"], vae_dir),
                     os.path.join(vae_dir, "train.log")),
        "transformer_lm": (lm_train_cmd(data, b, b["max_update"], lm_dir),
                           os.path.join(lm_dir, "train.log")),
    }
    seconds = run_jobs(jobs, b["parallel"])
    train = {"vae": train_summary(jobs["bart_vae"][1]), "lm": train_summary(jobs["transformer_lm"][1]),
             "vae_s": seconds["bart_vae"], "lm_s": seconds["transformer_lm"]}
    lm = lm_eval(data, os.path.join(lm_dir, "checkpoint_last.pt"), os.path.join(lm_dir, "test.log"), b)
    vae = vae_eval(data, os.path.join(vae_dir, "checkpoint_last.pt"), "test", args.iw_samples,
                   os.path.join(vae_dir, "test.json"), b)
    table = write_results(args.results, args, b, remedy_name, vae, lm, train, sweep_result, started)
    print(table)
    log(f"wrote {args.results}")


if __name__ == "__main__":
    main()
