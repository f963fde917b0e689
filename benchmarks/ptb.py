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
import importlib
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
        "dim": 128,
        "ffn": 512,
        "layers": 2,
        "heads": 4,
        "max_update": 1600,
        "max_tokens": 4096,
        "lr": 1e-3,
        "warmup": 200,
        "precision": [],
        "parallel": True,
    },
    "gpu": {
        "vae_arch": "bart_vae",
        "dim": 768,
        "ffn": 3072,
        "layers": 6,
        "heads": 12,
        "max_update": 20000,
        "max_tokens": 8192,
        "lr": 3e-4,
        "warmup": 1000,
        "precision": ["--bf16"],
        "parallel": False,
    },
}

SCHEDULES = {
    # beta = 0 for the first quarter, then a linear ramp over the second quarter, then 1
    "monotonic": [
        "--kl-schedule",
        "monotonic",
        "--kl-cycles",
        "1",
        "--kl-zero-fraction",
        "0.25",
        "--kl-ramp-fraction",
        "0.25",
    ],
    # Fu et al. 2019: 4 cycles, each beta = 0 for 1/4, ramp over 1/4, beta = 1 for 1/2
    "cyclical": [
        "--kl-schedule",
        "cyclical",
        "--kl-cycles",
        "4",
        "--kl-zero-fraction",
        "0.25",
        "--kl-ramp-fraction",
        "0.25",
    ],
    # issue #25's budget-tied shape: 2 such cycles over the first half, then beta = 1 for the
    # second half (--kl-final-hold 0.5), so no beta = 0 phase falls in the last half of a run
    "cyclical, final hold": [
        "--kl-schedule",
        "cyclical",
        "--kl-cycles",
        "2",
        "--kl-zero-fraction",
        "0.25",
        "--kl-ramp-fraction",
        "0.25",
        "--kl-final-hold",
        "0.5",
    ],
    # beta = 1 throughout: BN-VAE needs no annealing, its KL has a floor
    "constant": ["--kl-schedule", "constant", "--kl-beta-max", "1"],
    # after an autoencoder phase (Li et al.): a ramp over the first half, then 1
    "ramp": ["--kl-schedule", "monotonic", "--kl-cycles", "1", "--kl-ramp-fraction", "0.5"],
}

LATENT_DIM = 32
# every VAE training also logs the validation IW-NLL with this many samples and keeps its best
# checkpoint by it (checkpoint_best.pt; --checkpoint best evaluates that one): the ELBO, which
# picks checkpoint_best.pt by default, ranks checkpoints by their KL as much as by their fit
VALID_IW_SAMPLES = 5


def valid_selection(b: dict) -> List[str]:
    """The options that make a VAE training's checkpoint_best.pt its best IW-NLL on valid.
    Validation starts after the warm-up: before it a fine-tuned model is the pretrained decoder
    with an encoder the KL term has not shaped yet (z unused), and on a small corpus that model
    can have the best bound of the run (benchmarks/pretrained.py found it at update 25 to 50 on
    the 10% slice of PTB)."""
    return [
        "--valid-iw-samples",
        str(VALID_IW_SAMPLES),
        "--best-checkpoint-metric",
        "iw_nll",
        "--validate-after-updates",
        str(b["warmup"]),
    ]


# the checkpoint evaluated (--checkpoint): the file, and the suffix of its evaluation outputs
CHECKPOINTS = {"last": ("checkpoint_last.pt", ""), "best": ("checkpoint_best.pt", "-best")}

# The operating points: each setting is a KL remedy (and, where it has one, a KL target: the
# floor gamma^2 / 2 per dimension of BN-VAE, or the free-bits lambda per dimension, times the
# latent size). ``autoencoder_first``: Li et al. 2019, the first half of the updates trains an
# autoencoder (beta = 0), the second half starts from it with --reset-decoder.
SETTINGS = {
    "cyclical, fb 0.25": dict(schedule="cyclical", args=["--free-bits", "0.25"], kl_target=8.0),
    "BN-VAE gamma 0.7": dict(schedule="constant", args=["--bn-vae-gamma", "0.7"], kl_target=7.8),
    "BN-VAE gamma 1.0": dict(schedule="constant", args=["--bn-vae-gamma", "1.0"], kl_target=16.0),
    "BN-VAE gamma 0.7, z in every layer": dict(
        schedule="constant", args=["--bn-vae-gamma", "0.7", "--latent-layer-memory"], kl_target=7.8
    ),
    "AE, reset decoder, fb 0.25": dict(
        schedule="ramp", args=["--free-bits", "0.25"], kl_target=8.0, autoencoder_first=True
    ),
    "AE, reset decoder, fb 0.5": dict(
        schedule="ramp", args=["--free-bits", "0.5"], kl_target=16.0, autoencoder_first=True
    ),
    # the demo's "pretrain-reset" recipe: the most KL, MI and BLEU on the shipped corpus
    "AE, reset decoder, BN-VAE gamma 1.0, z in every layer": dict(
        schedule="ramp",
        args=["--bn-vae-gamma", "1.0", "--latent-layer-memory"],
        kl_target=16.0,
        autoencoder_first=True,
    ),
    # fine-tuned from a BART denoising-pretrained on the same training text (--pretrained-bart:
    # benchmarks/pretrained.sh's bart/checkpoint_last.pt, the one it fine-tunes itself): a
    # decoder that already models the language leaves room for a higher rate. Free bits 0.1 is
    # the low rate for short, predictable sentences, where the autoregressive decoder infers
    # most of what z would say from the prefix and every nat of floor above what z earns costs
    # likelihood
    "BART init, fb 0.1": dict(
        schedule="cyclical", args=["--free-bits", "0.1"], kl_target=3.2, bart_init=True
    ),
    # issue #25's candidates for short budgets on small corpora: the recipe's free bits 0.1 with
    # no beta = 0 phase late in the run, or a single ramp
    "BART init, fb 0.1, final hold 0.5": dict(
        schedule="cyclical, final hold", args=["--free-bits", "0.1"], kl_target=3.2, bart_init=True
    ),
    "BART init, fb 0.1, monotonic": dict(
        schedule="monotonic", args=["--free-bits", "0.1"], kl_target=3.2, bart_init=True
    ),
    # ...or more dropout for a fine-tuned decoder that overfits a small corpus first
    "BART init, fb 0.1, dropout 0.3": dict(
        schedule="cyclical",
        args=["--free-bits", "0.1"],
        kl_target=3.2,
        bart_init=True,
        dropout=0.3,
    ),
    # ...or word dropout (Bowman et al. 2016): the decoder's inputs replaced by <unk>, which both
    # regularises it and makes it lean on z
    "BART init, fb 0.1, word dropout 0.2": dict(
        schedule="cyclical",
        args=["--free-bits", "0.1", "--word-dropout", "0.2"],
        kl_target=3.2,
        bart_init=True,
    ),
    # ...and a floor of 4.8 nats: on a few thousand long sentences the test KL falls below a
    # 3.2-nat floor and MI under 2 nats (the 10% PTB slice)
    "BART init, fb 0.15, word dropout 0.2": dict(
        schedule="cyclical",
        args=["--free-bits", "0.15", "--word-dropout", "0.2"],
        kl_target=4.8,
        bart_init=True,
    ),
    # ...or a fine-tuning rate below the from-scratch one: the pretrained decoder moves less
    # from what it learnt before it overfits the few sentences
    "BART init, fb 0.1, lr 3e-4": dict(
        schedule="cyclical", args=["--free-bits", "0.1"], kl_target=3.2, bart_init=True, lr=3e-4
    ),
    "BART init, fb 0.25": dict(
        schedule="cyclical", args=["--free-bits", "0.25"], kl_target=8.0, bart_init=True
    ),
    "BART init, fb 0.5": dict(
        schedule="cyclical", args=["--free-bits", "0.5"], kl_target=16.0, bart_init=True
    ),
    # high rates for steering (benchmarks/control.py): transfer must keep a sentence's content,
    # so z must carry most of it; word dropout keeps the decoder from guessing the content
    # words from the prefix instead of reading them from z
    "BART init, fb 2.0": dict(
        schedule="cyclical", args=["--free-bits", "2.0"], kl_target=64.0, bart_init=True
    ),
    "BART init, fb 2.0, word dropout 0.3": dict(
        schedule="cyclical",
        args=["--free-bits", "2.0", "--word-dropout", "0.3"],
        kl_target=64.0,
        bart_init=True,
    ),
    "BART init, BN-VAE gamma 1.0": dict(
        schedule="constant", args=["--bn-vae-gamma", "1.0"], kl_target=16.0, bart_init=True
    ),
}
DEFAULT_SETTING = "cyclical, fb 0.25"
# the issue's PTB target for an operating point, and how the point re-evaluated with the full
# K is chosen
TARGET = {"kl": 12.0, "mi": 6.0, "au": 24, "recon_bleu": 10.0}
CHOICE_RULE = (
    "the lowest IW-PPL among the points with KL >= 12, MI >= 6, AU >= 24 and "
    "BLEU >= 10; if none has them all, the lowest IW-PPL"
)

# issue #25's test of a recipe on any corpus: IW-PPL at most the same-size LM's, with a latent
# that is not collapsed
RECIPE_FLOOR = {"mi": 2.0, "au": 16}

SEED = 1


def log(msg: str):
    print(f"[ptb {time.strftime('%H:%M:%S')}] {msg}", flush=True)


def setting_args(setting: dict) -> List[str]:
    """The fairseq-train options of a setting (the main phase)."""
    return SCHEDULES[setting["schedule"]] + ["--latent-dim", str(LATENT_DIM)] + setting["args"]


def common_train_args(
    b: dict, max_update: int, save_dir: str, dropout: float = 0.1, lr: Optional[float] = None
) -> List[str]:
    """The budget is the update count, never --stop-time-hours: a time cap ends runs early on a
    loaded machine, and fairseq counts the training time of a --finetune-from-model checkpoint
    in it (a fine-tuned BART stopped after 15 of its 60 minutes)."""
    return (
        [
            "--user-dir",
            os.path.join(REPO, "fairseq_vae"),
            "--optimizer",
            "adam",
            "--adam-betas",
            "(0.9,0.98)",
            "--lr",
            str(lr or b["lr"]),
            "--lr-scheduler",
            "inverse_sqrt",
            "--warmup-updates",
            str(b["warmup"]),
            "--dropout",
            str(dropout),
            "--attention-dropout",
            "0.0",
            "--activation-dropout",
            "0.0",
            "--max-tokens",
            str(b["max_tokens"]),
            "--required-batch-size-multiple",
            "1",
            "--max-update",
            str(max_update),
            "--seed",
            str(SEED),
            "--num-workers",
            "0",
            # fairseq's prefetch thread, left running when training stops mid-epoch, can abort the
            # finished run at exit
            "--data-buffer-size",
            "0",
            "--save-dir",
            save_dir,
            "--no-epoch-checkpoints",
            "--log-format",
            "simple",
            "--log-interval",
            "50",
        ]
        + b["precision"]
        + ([] if b["precision"] else ["--cpu"])
    )


def vae_train_cmds(
    data: str, b: dict, setting: dict, max_update: int, save_dir: str, bart: Optional[str] = None
):
    """The fairseq-train commands of a setting, run one after the other; the last one writes
    save_dir/checkpoint_last.pt. Li et al.'s recipe splits the updates and the time in two; a
    "bart_init" setting fine-tunes the pretrained BART checkpoint `bart`."""
    base = [
        os.path.join(BIN, "fairseq-train"),
        data,
        "--task",
        "text_vae",
        "--arch",
        b["vae_arch"],
        "--criterion",
        "elbo",
    ]
    if setting.get("bart_init"):
        if not bart:
            raise ValueError("a BART-init setting needs --pretrained-bart")
        base += ["--finetune-from-model", bart]
    if not setting.get("autoencoder_first"):
        return [
            base
            + setting_args(setting)
            + valid_selection(b)
            + common_train_args(
                b, max_update, save_dir, setting.get("dropout", 0.1), setting.get("lr")
            )
        ]
    half, ae_dir = max_update // 2, os.path.join(save_dir, "autoencoder")
    autoencoder = (
        base
        + ["--kl-schedule", "constant", "--kl-beta-max", "0", "--latent-dim", str(LATENT_DIM)]
        + common_train_args(b, half, ae_dir)
    )
    vae = (
        base
        + setting_args(setting)
        + valid_selection(b)
        + [
            "--finetune-from-model",
            os.path.join(ae_dir, "checkpoint_last.pt"),
            "--reset-decoder",
        ]
        + common_train_args(
            b, max_update - half, save_dir, setting.get("dropout", 0.1), setting.get("lr")
        )
    )
    return [autoencoder, vae]


def lm_train_cmd(data: str, b: dict, max_update: int, save_dir: str) -> List[str]:
    return [
        os.path.join(BIN, "fairseq-train"),
        data,
        "--task",
        "language_modeling",
        "--arch",
        "transformer_lm",
        "--criterion",
        "cross_entropy",
        "--sample-break-mode",
        "eos",
        "--tokens-per-sample",
        "256",
        "--decoder-embed-dim",
        str(b["dim"]),
        "--decoder-ffn-embed-dim",
        str(b["ffn"]),
        # transformer_lm's input and output dims default to 512 whatever the width is
        "--decoder-input-dim",
        str(b["dim"]),
        "--decoder-output-dim",
        str(b["dim"]),
        "--decoder-layers",
        str(b["layers"]),
        "--decoder-attention-heads",
        str(b["heads"]),
        "--activation-fn",
        "gelu",
        "--decoder-learned-pos",
        "--layernorm-embedding",
        "--no-scale-embedding",
        "--share-decoder-input-output-embed",
    ] + common_train_args(b, max_update, save_dir)


def run_logged(cmds: List[List[str]], logfile: str, threads: Optional[int] = None):
    """Start the commands one after the other (stopping at the first failure), stdout and
    stderr to logfile; returns the process."""
    os.makedirs(os.path.dirname(logfile), exist_ok=True)
    env = dict(os.environ)
    if threads:
        env["OMP_NUM_THREADS"] = env["MKL_NUM_THREADS"] = str(threads)
    script = " && ".join(
        f"echo {shlex.quote('$ ' + shlex.join(c))} && {shlex.join(c)}" for c in cmds
    )
    with open(logfile, "a") as f:  # a rerun resumes (fairseq's checkpoint_last.pt) and appends
        return subprocess.Popen(
            ["bash", "-c", script], stdout=f, stderr=subprocess.STDOUT, env=env, cwd=REPO
        )


def train_summary(logfile: str) -> dict:
    """Updates and training minutes from a log of one or more fairseq-train commands (each starts
    with its "$ command" line). A training that was stopped and rerun resumes from the
    checkpoint_last.pt of its --save-dir, and fairseq restores its update count and wall clock,
    so the largest value of each save dir is its total."""
    updates, wall = {}, {}
    for run in re.split(r"^\$ ", open(logfile).read(), flags=re.M)[1:]:
        save_dir = re.search(r"--save-dir (\S+)", run.split("\n", 1)[0])
        if not save_dir:
            continue  # not a training (touch)
        command = save_dir.group(1)
        updates[command] = max(
            [updates.get(command, 0)] + [int(u) for u in re.findall(r"num_updates[= ](\d+)", run)]
        )
        wall[command] = max(
            [wall.get(command, 0)] + [int(w) for w in re.findall(r"(?<![_a-z])wall[= ](\d+)", run)]
        )
    return {"updates": sum(updates.values()), "minutes": sum(wall.values()) / 60}


def corpus_stats(data_dir: str) -> dict:
    """Sentences (non-empty lines) and tokens (words + 1 end of sentence each) per split."""
    stats = {}
    for split in ("train", "valid", "test"):
        with open(os.path.join(data_dir, f"{split}.txt"), encoding="utf-8") as f:
            lengths = [len(line.split()) for line in f if line.strip()]
        stats[split] = {"sentences": len(lengths), "tokens": sum(lengths) + len(lengths)}
    return stats


def prepare(data_dir: str, out: str, name: str = "data-bin", srcdict: Optional[str] = None) -> str:
    """Binarise the corpus word-level into out/<name> (once; reused while the inputs are
    unchanged), with the dictionary srcdict if given, else the training text's."""
    for split in ("train", "valid", "test"):
        f = os.path.join(data_dir, f"{split}.txt")
        if not os.path.isfile(f):
            sys.exit(
                f"missing {f}: --data must be a folder with a word-level corpus's "
                "train.txt, valid.txt and test.txt (default ../shared/data/ptb)"
            )
    dest = os.path.join(out, name)
    stamp = os.path.join(dest, "source.json")
    source = {
        s: os.path.getsize(os.path.join(data_dir, f"{s}.txt")) for s in ("train", "valid", "test")
    }
    source["data"], source["srcdict"] = os.path.abspath(data_dir), srcdict
    if os.path.isfile(stamp) and json.load(open(stamp)) == source:
        log(f"reusing {dest}")
        return dest
    subprocess.run(
        [sys.executable, os.path.join(REPO, "fairseq_vae", "check_text.py")]
        + [os.path.join(data_dir, f"{s}.txt") for s in ("train", "valid", "test")],
        check=True,
    )
    subprocess.run(["rm", "-rf", dest], check=True)
    log(f"binarising {data_dir} word-level into {dest}")
    subprocess.run(
        [
            os.path.join(BIN, "fairseq-preprocess"),
            "--only-source",
            "--trainpref",
            os.path.join(data_dir, "train.txt"),
            "--validpref",
            os.path.join(data_dir, "valid.txt"),
            "--testpref",
            os.path.join(data_dir, "test.txt"),
            "--destdir",
            dest,
            "--workers",
            "2",
        ]
        + (["--srcdict", srcdict] if srcdict else []),
        check=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.STDOUT,
    )
    json.dump(source, open(stamp, "w"))
    return dest


def bart_pretraining(ckpt: str, data: str) -> dict:
    """The --pretrained-bart checkpoint's data and its training (updates and minutes, as the
    checkpoint records them); exits when it was trained with another dictionary than data's,
    as every token id would then mean another word."""
    sys.path.insert(0, REPO)
    import torch

    importlib.import_module("fairseq_vae")  # its allow-list of the globals checkpoints hold

    if not os.path.isfile(ckpt):
        sys.exit(
            f"--pretrained-bart {ckpt}: no such file (benchmarks/pretrained.sh writes "
            "one: <out>/bart/checkpoint_last.pt)"
        )
    state = torch.load(ckpt, map_location="cpu", weights_only=True)
    trained_on = state["cfg"]["task"]["data"]
    theirs, ours = os.path.join(trained_on, "dict.txt"), os.path.join(data, "dict.txt")
    if not os.path.isfile(theirs) or open(theirs).read() != open(ours).read():
        sys.exit(
            f"--pretrained-bart {ckpt} was trained on {trained_on}, whose dict.txt is "
            f"missing or not {ours}: pretrain on this corpus's training text "
            "(benchmarks/pretrained.sh --data)"
        )
    # the checkpoint's own count and clock: a kept checkpoint_<epoch>_<updates>.pt is a shorter
    # pretraining than its folder's train.log tells
    summary = {
        "updates": state["optimizer_history"][-1]["num_updates"],
        "minutes": state["extra_state"]["previous_training_time"] / 60,
    }
    return {"checkpoint": ckpt, "data": trained_on, **summary}


def vae_eval_job(
    data: str,
    ckpt: str,
    split: str,
    k: int,
    out_json: str,
    b: dict,
    after=(),
    bleu=True,
    extra=(),
) -> dict:
    """A run_queue job: fairseq-vae-eval writing out_json (its -ELBO, IW-NLL, KL, MI, AU,
    BLEU and seconds) only once it has finished; ``extra``: more of its options."""
    partial = out_json + ".partial"
    cmd = (
        [
            os.path.join(BIN, "fairseq-vae-eval"),
            data,
            "--user-dir",
            os.path.join(REPO, "fairseq_vae"),
            "--path",
            ckpt,
            "--gen-subset",
            split,
            "--iw-samples",
            str(k),
            "--seed",
            str(SEED),
            "--results-json",
            partial,
        ]
        + ([] if b["precision"] else ["--cpu"])
        + ([] if bleu else ["--no-bleu"])
        + list(extra)
    )
    return {
        "cmds": [cmd, ["mv", partial, out_json]],
        "log": out_json[: -len(".json")] + ".log",
        "done": out_json,
        "after": list(after),
    }


def vae_eval(data: str, ckpt: str, split: str, k: int, out_json: str, b: dict) -> dict:
    run_queue(
        {f"fairseq-vae-eval {split} K={k}": vae_eval_job(data, ckpt, split, k, out_json, b)},
        slots=1,
    )
    return json.load(open(out_json))


def fit_prior_job(data: str, ckpt: str, kind: str, prior: str, b: dict, after=()) -> dict:
    """A run_queue job: fairseq-vae-fit-prior of `kind` on the training split's posteriors of
    ckpt (its size chosen on valid), renamed to `prior` only once the fit has finished."""
    partial = prior + ".partial"
    cmd = [os.path.join(BIN, "fairseq-vae-fit-prior"), data, "--path", ckpt]
    cmd += ["--user-dir", os.path.join(REPO, "fairseq_vae"), "--prior-model", kind]
    cmd += ["--out", partial, "--seed", str(SEED)] + ([] if b["precision"] else ["--cpu"])
    return {
        "cmds": [cmd, ["mv", partial, prior]],
        "log": prior[: -len(".pt")] + ".log",
        "done": prior,
        "after": list(after),
    }


def lm_eval_job(data: str, ckpt: str, out_log: str, b: dict, after=()) -> dict:
    """A run_queue job: fairseq-eval-lm on the test split, its log read by lm_result."""
    cmd = [
        os.path.join(BIN, "fairseq-eval-lm"),
        data,
        "--user-dir",
        os.path.join(REPO, "fairseq_vae"),
        "--path",
        ckpt,
        "--gen-subset",
        "test",
        "--sample-break-mode",
        "eos",
        "--tokens-per-sample",
        "256",
        "--max-tokens",
        "4096",
        "--seed",
        str(SEED),
    ] + ([] if b["precision"] else ["--cpu"])
    return {
        "cmds": [cmd, ["touch", out_log + ".done"]],
        "log": out_log,
        "done": out_log + ".done",
        "after": list(after),
    }


def lm_result(out_log: str) -> dict:
    text = open(out_log).read()
    m = re.findall(r"Evaluated ([0-9,]+) tokens in ([0-9.]+)s", text)
    loss = re.findall(r"Loss \(base 2\): ([0-9.]+), Perplexity: ([0-9.]+)", text)
    if not (m and loss):
        sys.exit(f"cannot find the loss in {out_log}")
    # the last run's (the log is appended to)
    tokens, base2 = int(m[-1][0].replace(",", "")), float(loss[-1][0])
    return {
        "tokens": tokens,
        "nll_token": base2 * math.log(2),
        "ppl": 2**base2,
        "seconds": float(m[-1][1]),
    }


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    import fairseq
    import torch

    return (
        f"{cpu}, {os.cpu_count()} cores visible; Python {platform.python_version()}, "
        f"torch {torch.__version__}, fairseq {fairseq.__version__}"
    )


def made_by(script: str) -> dict:
    """What a benchmark's rows record of the run that made them: its command line (as typed
    after `script`), when it started and the machine."""
    return {
        "command": shlex.join([script, *sys.argv[1:]]),
        "started": datetime.datetime.now().strftime("%Y-%m-%d %H:%M"),
        "machine": machine(),
    }


def made_lines(rows: list, name) -> list:
    """One markdown line per run that made rows of a table (each row's "made": its command,
    start and machine), naming what it made with `name(row)`."""
    runs = {}
    for r in rows:
        key = json.dumps(r["made"], sort_keys=True)
        names = runs.setdefault(key, (r["made"], []))[1]
        if name(r) not in names:
            names.append(name(r))
    return [
        f"- {'; '.join(names)}: `{made['command']}`, started {made['started']}, on "
        f"{made['machine']}."
        for made, names in runs.values()
    ]


def setting_dir(name: str) -> str:
    """A setting's folder name under out/vae: its name in lower case, a word per dash."""
    return re.sub(r"[^a-z0-9.]+", "-", name.lower()).strip("-")


def train_done(logfile: str) -> str:
    """The marker written beside a training's log when all its commands have finished."""
    return os.path.join(os.path.dirname(logfile), "done")


def run_queue(jobs: Dict[str, dict], slots: int):
    """jobs: name -> {"cmds": commands run one after the other, "log": their log, "done": a
    file the last command writes, "after": names of jobs that must finish first}. Runs the jobs
    whose "done" file is missing (a rerun skips what an earlier run finished), in the order
    given as their "after" jobs finish, `slots` at a time: with 2 slots each gets one thread of
    the 2-core CPU budget. A failure stops the others and exits with the log's tail."""
    todo = {n: j for n, j in jobs.items() if not os.path.isfile(j["done"])}
    for n in jobs:
        if n not in todo:
            log(f"{n}: done in an earlier run ({jobs[n]['done']})")
    running, start = {}, {}
    while todo or running:
        for n, j in list(todo.items()):
            if len(running) < slots and not any(
                a in todo or a in running for a in j.get("after", [])
            ):
                running[n] = run_logged(j["cmds"], j["log"], threads=1 if slots > 1 else None)
                start[n] = time.time()
                log(f"started {n}, log {j['log']}")
                del todo[n]
        for n, p in list(running.items()):
            rc = p.poll()
            if rc is None:
                continue
            del running[n]
            if rc != 0:
                for q in running.values():
                    q.terminate()
                with open(jobs[n]["log"]) as f:
                    tail = f.readlines()[-25:]
                sys.exit(f"{n} failed (exit {rc}); the end of {jobs[n]['log']}:\n" + "".join(tail))
            log(f"{n} done in {(time.time() - start[n]) / 60:.1f} min")
        time.sleep(2)


def train_job(cmds: List[List[str]], logfile: str, after=()) -> dict:
    return {
        "cmds": cmds + [["touch", train_done(logfile)]],
        "log": logfile,
        "done": train_done(logfile),
        "after": list(after),
    }


def vae_metrics(report: dict, trained: dict) -> dict:
    """A bart_vae row's numbers: a fairseq-vae-eval report and its training's train_summary."""
    m = report["metrics"]
    return {
        "iw_samples": report["settings"]["iw_samples"],
        "ppl_word": m["iw_ppl_word"],
        "iw_nll": m["iw_nll"],
        "neg_elbo": m["neg_elbo"],
        "kl": m["kl"],
        "mi": m["mi"],
        "au": m["au"],
        "recon_bleu": m.get("recon_bleu"),  # absent with --no-bleu
        "updates": trained["updates"],
        "train_min": round(trained["minutes"], 1),
        "eval_min": round(report["settings"]["seconds"] / 60, 1),
    }


def vae_row(name: str, report: dict, trained: dict) -> dict:
    return {
        "model": "bart_vae",
        "setting": name,
        "prior": "standard",
        "split": "test",
        "kl_target": SETTINGS[name].get("kl_target"),
        **vae_metrics(report, trained),
    }


def prior_row(name: str, report: dict, trained: dict) -> dict:
    """The same model under the prior fitted after training (fairseq-vae-eval --prior-file):
    the IW-NLL of p'(z) p(x|z) and the Monte Carlo KL to p', from the same samples."""
    p = report["metrics"]["prior_file"]
    row = vae_row(name, report, trained)
    row.update(
        prior=p["kind"],
        ppl_word=p["iw_ppl_word"],
        iw_nll=p["iw_nll"],
        neg_elbo=p["neg_elbo"],
        kl=p["kl_mc"],
        kl_target=None,
    )
    return row


def row_label(row: dict) -> str:
    prior = row.get("prior", "standard")
    return row["setting"] + ("" if prior == "standard" else f", fitted {prior} prior")


def lm_row(lm: dict, trained: dict, sentences: int) -> dict:
    return {
        "model": "transformer_lm",
        "setting": "transformer_lm",
        "split": "test",
        "iw_samples": None,
        "ppl_word": lm["ppl"],
        "iw_nll": lm["nll_token"] * lm["tokens"] / sentences,
        "neg_elbo": None,
        "kl": None,
        "mi": None,
        "au": None,
        "recon_bleu": None,
        "kl_target": None,
        "updates": trained["updates"],
        "train_min": round(trained["minutes"], 1),
        "eval_min": round(lm["seconds"] / 60, 1),
    }


def recipe_checks(row: dict, lm: dict) -> Dict[str, bool]:
    """RECIPE_FLOOR and the LM's IW-PPL, each met or not, for one VAE row."""
    return {
        "IW-PPL <= LM": row["ppl_word"] <= lm["ppl_word"],
        **{
            f"{k.upper()} >= {v:g}": row[k] is not None and row[k] >= v
            for k, v in RECIPE_FLOOR.items()
        },
    }


def meets_target(row: dict) -> bool:
    return all(row[key] >= value for key, value in TARGET.items())


def choose(rows: List[dict]) -> dict:
    """The operating point re-evaluated with the full K (CHOICE_RULE)."""
    pool = [r for r in rows if meets_target(r)] or rows
    return min(pool, key=lambda r: r["ppl_word"])


def fmt(value, spec: str) -> str:
    return "" if value is None else format(value, spec)


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
        f"Corpus `{name}` (`{args.data}`), counted from its text: "
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
        f"- Data: `{args.data}` binarised word-level with `fairseq-preprocess --only-source` "
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
        "data": args.data,
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
