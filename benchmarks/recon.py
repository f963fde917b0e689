#!/usr/bin/env python3
"""How fast the path through z learns: reconstruction BLEU against minutes of training, on Yelp.

    benchmarks/recon.sh                                   # every candidate, both KLs, scratch
    benchmarks/recon.sh --candidates "baseline;batch 1024" --kl ae --init "scratch;bart"
    benchmarks/recon.sh --report                          # the table again from its JSON

Each run (a candidate, a KL, an initialisation) trains bart_vae_small on Yelp (word-level, as
benchmarks/control.py prepares it) with one thread, in steps of --every minutes of fairseq's own
training clock (--stop-time-hours; the next step resumes from checkpoint_last.pt, so a stopped
benchmark goes on where it was), up to --minutes. After each step the checkpoint is copied to
checkpoint_<m>min.pt and the first --sentences test sentences are reconstructed greedily from
their posterior means: BLEU-4 against the sentences themselves (sacrebleu, tokenised text) and
the share reconstructed exactly, kept in point-<m>min.json (a rerun skips it). Validation is off,
so the clock counts training only.

KLs: "ae", beta = 0 throughout (a plain autoencoder, the posterior still sampled); "fb0.5",
beta = 1 throughout with free bits 0.5 per dimension (16 nats over the 32 dimensions): the two
points of the GRU yardstick of issue #40 (BLEU 17.6 and 11.3 after 15 minutes). Inits: "scratch",
or "bart", fine-tuned from the Yelp BART that benchmarks/control.py fine-tunes (the denoising
pretraining in its --yelp-out folder, run here if missing).

Candidates (CANDIDATES) are what the model or its training does differently from the
project's Yelp VAE; the table and benchmarks/results/recon.{md,json,png} show every finished
point (the PNG: BLEU against minutes, a panel per KL and init, a line per candidate).
"""

import argparse
import glob
import json
import os
import re
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness  # noqa: E402  (corpus preparation, the Yelp pretraining, the job queue)

REPO = harness.REPO
sys.path.insert(0, REPO)  # this checkout's fairseq_vae, as --user-dir gives fairseq-train
KLS = {
    "ae": ["--kl-schedule", "constant", "--kl-beta-max", "0"],
    "fb0.5": ["--kl-schedule", "constant", "--kl-beta-max", "1", "--free-bits", "0.5"],
}
INITS = ("scratch", "bart")
# name -> the fairseq-train options it adds, and the budget entries it changes (BUDGETS["cpu"]);
# "A, B" is A and B together (candidate_options)
CANDIDATES = {
    "baseline": {"args": [], "budget": {}},
    # 4096 tokens are about 370 Yelp sentences: a tenth of the GRU yardstick's updates a minute
    "batch 1024": {"args": [], "budget": {"max_tokens": 1024}},
    "lr 3e-3": {"args": [], "budget": {"lr": 3e-3}},
    # inverse_sqrt leaves 1e-3 * sqrt(200 / 13,000) = 1.2e-4 after 30 minutes in 512-token
    # batches; the GRU yardstick keeps Adam's 1e-3 throughout (fairseq's "fixed", after the warm-up)
    "lr constant": {"args": [], "budget": {"lr_scheduler": "fixed"}},
    # z reaches the decoder through out_proj(v_proj(memory)) of each layer's cross-attention
    "xavier cross-attention": {"args": ["--cross-attention-init", "fairseq"], "budget": {}},
    # Optimus / the GRU's concatenation: z at every decoder input as well as in the memory
    "z in the embeddings": {"args": ["--latent-to-embeddings"], "budget": {}},
    "batch 512": {"args": [], "budget": {"max_tokens": 512}},
    # BART's one embedding table makes words the decoder may swap (great, horrible) nearly
    # equal for the encoder too (docs/results.md, the shipped corpus)
    "untied encoder embeddings": {"args": ["--untie-encoder-embeddings"], "budget": {}},
    # Park & Lee 2021: the (pretrained) decoder fixed while z is still noise
    "decoder frozen 200": {"args": ["--freeze-decoder-updates", "200"], "budget": {}},
    # a memory the cross-attention can attend over, as over a source's positions: one slot gives
    # every attention weight 1, so no query can pick what it reads
    "8 memory slots": {
        "args": ["--latent-fusion", "memory", "--latent-memory-slots", "8"],
        "budget": {},
    },
    # free bits are per dimension: 64 dimensions at 0.5 nats set a floor of 32 nats, not 16
    "latent 64": {"args": ["--latent-dim", "64"], "budget": {}},
    # the fresh latent modules at 5 times the pretrained ones' learning rate
    "latent lr x5": {"args": ["--latent-lr-scale", "5"], "budget": {}},
    # every dropout of the model, the z path's among them (the cross-attention's output)
    "dropout 0": {"args": ["--dropout", "0"], "budget": {}},
    # Zhao et al.'s bag-of-words loss: z must predict the sentence's words, the part of a
    # sentence that BLEU counts
    "bag of words": {"args": ["--bow-loss-weight", "1.0"], "budget": {}},
    # z added to the features the output layer reads: every word choice sees z directly
    "z in the output": {"args": ["--latent-to-output"], "budget": {}},
}
YARDSTICK = {"ae": 17.6, "fb0.5": 11.3}  # the GRU autoencoder's BLEU after 15 minutes
# issue #40's yardstick itself, trained and measured here by recon_gru.py (init "scratch"
# only): name -> recon_gru.py's options
GRUS = {
    "GRU yardstick": [],
    # bart_vae's pooling in the yardstick: how much of the gap is the mean over positions
    "GRU yardstick, mean-pooled": ["--pooling", "mean"],
    # the BART runs' learning rate in the yardstick: how much of the gap is the schedule
    "GRU yardstick, lr inverse_sqrt": ["--lr-schedule", "inverse_sqrt"],
    # bart_vae_small's width in the yardstick: how much of the gap is the decoder's size
    "GRU yardstick, hidden 128": ["--hidden", "128"],
}


def candidate_options(name: str) -> dict:
    """A candidate's options and budget: one of CANDIDATES, or several joined by ", "."""
    if name in GRUS:
        return {"args": [], "budget": {}}
    parts = [p.strip() for p in name.split(", ")]
    unknown = [p for p in parts if p not in CANDIDATES]
    if unknown:
        raise ValueError(f"unknown candidate {unknown[0]!r} (known: {', '.join(CANDIDATES)})")
    found = {"args": [], "budget": {}}
    for p in parts:
        found["args"] += CANDIDATES[p]["args"]
        found["budget"].update(CANDIDATES[p]["budget"])
    return found


def run_dir(out: str, candidate: str, kl: str, init: str) -> str:
    return os.path.join(out, "runs", f"{harness.setting_dir(candidate)}-{kl}-{init}")


def inherited_minutes(bart) -> float:
    """The training minutes a --finetune-from-model checkpoint hands its run: fairseq starts the
    fine-tuning's clock at the BART's own (its checkpoint's previous_training_time), so each
    step's --stop-time-hours adds them and each point's minutes leave them out."""
    if not bart:
        return 0.0
    import torch

    state = torch.load(bart, map_location="cpu", weights_only=True)
    return state["extra_state"]["previous_training_time"] / 60


def train_cmd(data: str, name: str, kl: str, bart, save_dir: str, minutes: float) -> list:
    options = candidate_options(name)
    b = dict(harness.BUDGETS["cpu"], **options["budget"])
    cmd = harness.vae_train_base(data, b["vae_arch"]) + [
        "--latent-dim",
        str(harness.LATENT_DIM),
        *KLS[kl],
        *options["args"],
    ]
    if bart:
        cmd += ["--finetune-from-model", bart]
    # the clock, not an update count, ends each step; no validation, so it counts training only
    return (
        cmd
        + harness.common_train_args(b, 1000000, save_dir)
        + ["--stop-time-hours", f"{minutes / 60:.6f}", "--disable-validation"]
    )


def run_job(data: str, out: str, candidate: str, kl: str, init: str, bart, args) -> dict:
    """One run's steps as one queued job: train to each mark, copy, measure."""
    d = run_dir(out, candidate, kl, init)
    done = os.path.join(d, f"done-{args.minutes}-{args.every}")
    if candidate in GRUS:  # its own trainer: the points, the clock and the resuming are its
        gru = os.path.join(os.path.dirname(os.path.abspath(__file__)), "recon_gru.py")
        cmd = [sys.executable, gru, "--out", d, "--kl", kl, "--yelp", args.yelp, *GRUS[candidate]]
        cmd += ["--minutes", str(args.minutes), "--every", str(args.every)]
        cmd += ["--sentences", str(args.sentences)]
        return {"cmds": [cmd, ["touch", done]], "log": os.path.join(d, "train.log"),
                "done": done, "after": []}  # fmt: skip
    offset = inherited_minutes(bart)
    cmds = []
    for m in marks(args):
        point = os.path.join(d, f"point-{m}min.json")
        snapshot = os.path.join(d, f"checkpoint_{m}min.pt")
        if os.path.isfile(point) and "kl_nats" in json.load(open(point)):
            continue
        if not os.path.isfile(snapshot):
            cmds.append(train_cmd(data, candidate, kl, bart, d, m + offset))
            cmds.append(["cp", os.path.join(d, "checkpoint_last.pt"), snapshot])
        cmds.append(
            [sys.executable, os.path.abspath(__file__), "--measure", snapshot]
            + ["--data", data, "--yelp", args.yelp, "--sentences", str(args.sentences)]
            + ["--offset-minutes", str(offset)]
        )
    return {
        "cmds": cmds + [["touch", done]],
        "log": os.path.join(d, "train.log"),
        "done": done,
        "after": [],
    }


def marks(args) -> list:
    return list(range(args.every, args.minutes + 1, args.every))


def measure(snapshot: str, data: str, yelp: str, sentences: int, offset: float):
    """point-<m>min.json beside the snapshot: BLEU and exact share of greedy reconstructions
    from the posterior means, the rate (mean KL to N(0, I), nats), the updates and minutes the
    snapshot records. A point measured before the rate was kept gets only the rate added."""
    import torch

    from fairseq_vae.atomic_files import write_atomically
    from fairseq_vae.criterions.elbo import gaussian_kl
    from fairseq_vae.metrics.transfer_quality import source_bleu
    from fairseq_vae.models.bart_vae import BARTVAEModel

    torch.set_num_threads(1)
    folder, name = os.path.split(snapshot)
    m = int(re.search(r"_(\d+)min\.pt$", name).group(1))
    path = os.path.join(folder, f"point-{m}min.json")
    state = torch.load(snapshot, map_location="cpu", weights_only=True)
    with open(os.path.join(yelp, "test.txt"), encoding="utf-8") as f:
        texts = [" ".join(line.split()) for line in f][:sentences]
    hub = BARTVAEModel.from_pretrained(folder, name, data).eval()
    with torch.no_grad():
        mu, logvar = hub.encode(texts)
        point = json.load(open(path)) if os.path.isfile(path) else {}
        point["kl_nats"] = float(gaussian_kl(mu, logvar).sum(-1).mean())
        if "bleu" not in point:
            outputs = hub.decode(mu, beam=1)
            point.update(
                {
                    "mark": m,
                    "minutes": state["extra_state"]["previous_training_time"] / 60 - offset,
                    "updates": state["optimizer_history"][-1]["num_updates"],
                    "bleu": source_bleu(outputs, texts),
                    "exact": sum(o == t for o, t in zip(outputs, texts)) / len(texts),
                    "sentences": len(texts),
                    "examples": [
                        {"source": t, "output": o} for t, o in list(zip(texts, outputs))[:5]
                    ],
                }
            )
    write_atomically(path, lambda f: f.write(json.dumps(point, indent=1).encode()))
    print(
        f"{snapshot}: BLEU {point['bleu']:.1f}, exact {point['exact']:.3f}, "
        f"KL {point['kl_nats']:.1f} nats",
        flush=True,
    )


def collect(out: str, published=()) -> list:
    """Every finished point of every run under out/runs, as the JSON's rows, after the
    published points (the results JSON's) of runs not found there. The decoded examples stay
    in the run's point files: they quote Yelp's test sentences, which are not ours to publish."""
    here = {
        harness.rel(os.path.dirname(p))
        for p in glob.glob(os.path.join(out, "runs", "*", "point-*"))
    }
    points = [p for p in published if p["run"] not in here]
    for path in sorted(glob.glob(os.path.join(out, "runs", "*", "point-*min.json"))):
        d = os.path.dirname(path)
        info = json.load(open(os.path.join(d, "run.json")))
        p = json.load(open(path))
        points.append(
            {
                **info,
                **{k: p[k] for k in ("minutes", "updates", "bleu", "exact")},
                "kl_nats": p.get("kl_nats"),
                "mark": p["mark"],
                "run": harness.rel(d),
            }
        )
    return points


def write_results(results: str, points: list):
    stem = results[: -len(".md")]
    harness.write_results_json(stem, {"points": points})
    lines = [
        "# Reconstruction against training time: the path through z on Yelp",
        "",
        "Reconstruction of the first 1,000 Yelp test sentences, greedy from the posterior mean,",
        "by `bart_vae_small` (32-dimensional z unless the candidate says) after each 5 minutes",
        "of one-thread training (fairseq's training clock, validation off): BLEU-4 against the",
        "sentence itself, and in brackets the updates done. `ae`: beta = 0; `fb0.5`: beta = 1,",
        "free bits 0.5 per dimension. The GRU yardstick as issue #40 gives it: BLEU 17.6 (ae),",
        "11.3 (fb0.5, at 15.6 nats) after 15 minutes and about 2,000 updates on its machine;",
        "the `GRU yardstick` rows are that model trained and measured here",
        "(benchmarks/recon_gru.py, 64 sentences a batch). KL: the mean KL(q(z|x) || N(0, I)) of",
        "the same sentences, the rate z carries.",
        "Made by `benchmarks/recon.py` (docs/results.md has what the runs show).",
        "",
    ]
    lines += harness.made_lines(points, lambda r: f"{r['candidate']} ({r['kl']}, {r['init']})")
    all_marks = sorted({p["mark"] for p in points})
    lines += [
        "",
        "| candidate | KL | init | "
        + " | ".join(f"{m} min" for m in all_marks)
        + " | exact (last) | KL, nats (last) |",
        "|---|---|---|" + "---:|" * (len(all_marks) + 2),
    ]
    runs = {}
    for p in points:
        runs.setdefault((p["candidate"], p["kl"], p["init"]), {})[p["mark"]] = p
    for (candidate, kl, init), by_mark in runs.items():
        cells = [
            f"{by_mark[m]['bleu']:.1f} ({by_mark[m]['updates']})" if m in by_mark else ""
            for m in all_marks
        ]
        last = by_mark[max(by_mark)]
        lines.append(
            f"| {candidate} | {kl} | {init} | "
            + " | ".join(cells)
            + f" | {last['exact']:.3f} | {harness.fmt(last.get('kl_nats'), '.1f')} |"
        )
    lines += ["", "Runs: " + ", ".join(sorted({f"`{p['run']}`" for p in points})) + "."]
    with open(results, "w") as f:
        f.write("\n".join(lines) + "\n")
    plot(stem + ".png", runs)


def plot(path: str, runs: dict):
    plt = harness.pyplot()
    panels = sorted({(kl, init) for _, kl, init in runs})
    fig, axes = plt.subplots(1, len(panels), figsize=(5 * len(panels), 7), squeeze=False)
    for ax, (kl, init) in zip(axes[0], panels):
        for (candidate, k, i), by_mark in runs.items():
            # the yardstick trains from scratch; it is drawn beside the BART runs too
            if k != kl or (i != init and candidate not in GRUS):
                continue
            ms = sorted(by_mark)
            style = {}
            if candidate in GRUS:  # black, one line style for each of the yardstick's variants
                style = {
                    "color": "black",
                    "linestyle": ("-", "--", ":", "-.")[list(GRUS).index(candidate) % 4],
                }
            ax.plot(
                [by_mark[m]["minutes"] for m in ms],
                [by_mark[m]["bleu"] for m in ms],
                marker="o",
                label=candidate,
                **style,
            )
        ax.axhline(YARDSTICK[kl], color="grey", linestyle="--", label="issue #40's GRU numbers")
        ax.set_title(f"{kl}, {init}")
        ax.set_xlabel("minutes of one-thread training")
        ax.set_ylabel("reconstruction BLEU")
        ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.15))
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--yelp", default=os.path.join("..", "shared", "data", "yelp"))
    p.add_argument(
        "--yelp-out",
        default=os.path.join(REPO, "benchmarks", "runs", "yelp-cpu"),
        help="benchmarks/control.py's Yelp folder: its BART pretraining is reused",
    )
    p.add_argument("--out", default=os.path.join(REPO, "benchmarks", "runs", "recon-cpu"))
    p.add_argument("--candidates", default=";".join(CANDIDATES))
    p.add_argument("--kl", default="ae;fb0.5")
    p.add_argument("--init", default="scratch")
    p.add_argument("--minutes", type=int, default=30)
    p.add_argument("--every", type=int, default=5)
    p.add_argument("--sentences", type=int, default=1000)
    p.add_argument("--pretrain-hours", type=float, default=0.75)
    p.add_argument("--slots", type=int, default=2)
    p.add_argument("--results", default=os.path.join(REPO, "benchmarks", "results", "recon.md"))
    p.add_argument("--report", action="store_true", help="rewrite the table from the JSON")
    p.add_argument("--measure", metavar="CHECKPOINT", help=argparse.SUPPRESS)
    p.add_argument("--data", help=argparse.SUPPRESS)
    p.add_argument("--offset-minutes", type=float, default=0.0, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.measure:
        return measure(args.measure, args.data, args.yelp, args.sentences, args.offset_minutes)
    stem = args.results[: -len(".md")]
    if args.report:
        return write_results(args.results, harness.read_results_json(stem)["points"])
    pick = {
        "candidates": [c.strip() for c in args.candidates.split(";") if c.strip()],
        "kl": [k.strip() for k in args.kl.split(";") if k.strip()],
        "init": [i.strip() for i in args.init.split(";") if i.strip()],
    }
    for name in pick["candidates"]:
        try:
            candidate_options(name)
        except ValueError as e:
            p.error(f"--candidates: {e}")
    for option, known in (("kl", KLS), ("init", INITS)):
        if set(pick[option]) - set(known):
            p.error(f"--{option}: unknown {sorted(set(pick[option]) - set(known))}")
    if set(GRUS) & set(pick["candidates"]) and pick["init"] != ["scratch"]:
        p.error("--candidates: the GRU yardstick trains from scratch only (--init scratch)")
    b = dict(harness.BUDGETS["cpu"])
    made = harness.made_by("benchmarks/recon.py")
    yelp_jobs, paths = harness.control_yelp_jobs(args.yelp, args.yelp_out, args.pretrain_hours, b)
    data = paths["data"]
    bart = harness.yelp_bart(args.yelp_out)
    if "bart" in pick["init"]:  # first: each step's clock starts from the BART's own
        harness.run_queue({"pretrain yelp": yelp_jobs["pretrain yelp"]}, 1)
    jobs = {}
    for init in pick["init"]:
        for kl in pick["kl"]:
            for candidate in pick["candidates"]:
                d = run_dir(args.out, candidate, kl, init)
                os.makedirs(d, exist_ok=True)
                if not os.path.isfile(os.path.join(d, "run.json")):  # the run that started it
                    with open(os.path.join(d, "run.json"), "w") as f:
                        info = {"candidate": candidate, "kl": kl, "init": init, "made": made}
                        json.dump(info, f)
                jobs[f"{candidate}, {kl}, {init}"] = run_job(
                    data, args.out, candidate, kl, init, bart if init == "bart" else None, args
                )
    harness.run_queue(jobs, args.slots)
    published = harness.read_results_json(stem)["points"] if os.path.isfile(stem + ".json") else []
    write_results(args.results, collect(args.out, published))


if __name__ == "__main__":
    main()
