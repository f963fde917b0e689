"""What every benchmark study shares: the settings registry and budgets, the fairseq-train /
fairseq-vae-eval / fairseq-eval-lm / fairseq-vae-fit-prior job builders, the job queue that runs
them resumably (each job's "done" file skips it on a rerun), logged runs, corpus preparation and
slicing, the denoising pretraining, the trainings two studies share (the shipped corpus's demo
model, the Yelp VAE), and the record a table keeps of the run that made it.

A study (ptb.py, pretrained.py, prior.py, control.py, overhead.py, ...) imports this module and
never another study.
"""

import argparse
import datetime
import importlib
import json
import math
import os
import platform
import random
import re
import shlex
import subprocess
import sys
import time
from typing import Dict, List, Optional, Sequence, Tuple

from fairseq_vae.denoising import denoising_pretraining_args

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
    # issue #40: from a BART the path through z learns faster in more, smaller steps (4,096 to
    # 1,024 tokens a batch: reconstruction BLEU 7.3 to 9.3 at fb 0.5 after 15 minutes,
    # benchmarks/results/recon.md); the same tokens in all, so four times the updates
    "BART init, fb 0.5, 1024 tokens": dict(
        schedule="cyclical",
        args=["--free-bits", "0.5"],
        kl_target=16.0,
        bart_init=True,
        max_tokens=1024,
    ),
    # issue #40's candidates that won on the 15-minute curves (benchmarks/results/recon.md): z
    # added to the decoder's inputs as well, the fresh latent modules at 5x the learning rate,
    # in batches of 512 tokens; and the same with 64 dimensions (a floor of 32 nats, not 16)
    "BART init, fb 0.5, 512 tokens, z in the embeddings, latent lr x5": dict(
        schedule="cyclical",
        args=["--free-bits", "0.5", "--latent-to-embeddings", "--latent-lr-scale", "5"],
        kl_target=16.0,
        bart_init=True,
        max_tokens=512,
    ),
    "BART init, fb 0.5, latent 64, 512 tokens, z in the embeddings, latent lr x5": dict(
        schedule="cyclical",
        args=["--free-bits", "0.5", "--latent-dim", "64", "--latent-to-embeddings"]
        + ["--latent-lr-scale", "5"],
        kl_target=32.0,
        bart_init=True,
        max_tokens=512,
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
# issue #25's test of a recipe on any corpus: IW-PPL at most the same-size LM's, with a latent
# that is not collapsed
RECIPE_FLOOR = {"mi": 2.0, "au": 16}

SEED = 1


def log(msg: str):
    study = os.path.splitext(os.path.basename(sys.argv[0]))[0]
    print(f"[{study} {time.strftime('%H:%M:%S')}] {msg}", flush=True)


def setting_args(setting: dict) -> List[str]:
    """The fairseq-train options of a setting (the main phase)."""
    return SCHEDULES[setting["schedule"]] + ["--latent-dim", str(LATENT_DIM)] + setting["args"]


def setting_batches(b: dict, setting: dict, max_update: int) -> Tuple[dict, int]:
    """The budget and update count of a setting with batches of its own size ("max_tokens"):
    the same tokens in all as the budget's max_update batches of b["max_tokens"]."""
    tokens = setting.get("max_tokens")
    if not tokens or tokens == b["max_tokens"]:
        return b, max_update
    return dict(b, max_tokens=tokens), max_update * b["max_tokens"] // tokens


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
            b.get("lr_scheduler", "inverse_sqrt"),
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


def vae_train_base(data: str, arch: str) -> List[str]:
    """fairseq-train's start for a bart_vae on data: the task, architecture and criterion."""
    return [
        os.path.join(BIN, "fairseq-train"),
        data,
        "--task",
        "text_vae",
        "--arch",
        arch,
        "--criterion",
        "elbo",
    ]


def vae_train_cmds(
    data: str, b: dict, setting: dict, max_update: int, save_dir: str, bart: Optional[str] = None
):
    """The fairseq-train commands of a setting, run one after the other; the last one writes
    save_dir/checkpoint_last.pt. Li et al.'s recipe splits the updates and the time in two; a
    "bart_init" setting fine-tunes the pretrained BART checkpoint `bart`."""
    b, max_update = setting_batches(b, setting, max_update)
    base = vae_train_base(data, b["vae_arch"])
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
        [sys.executable, os.path.join(REPO, "fairseq_vae", "text", "check_text.py")]
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
    return {"checkpoint": rel(ckpt), "data": rel(trained_on), **summary}


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


def typed_path(arg: str) -> str:
    """A command-line argument as a table records it: an absolute path relative to the
    repository (rel), so that no machine's folders are written into benchmarks/results."""
    return rel(arg) if os.path.isabs(arg) else arg


def made_by(script: str) -> dict:
    """What a benchmark's rows record of the run that made them: its command line (as typed
    after `script`, absolute paths made relative), when it started and the machine."""
    return {
        "command": shlex.join([script, *map(typed_path, sys.argv[1:])]),
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


def fmt(value, spec: str, missing: str = "") -> str:
    """A table cell: value formatted by spec, or `missing` for None."""
    return missing if value is None else format(value, spec)


def pyplot():
    """matplotlib.pyplot on the Agg backend, its debug logging off (fairseq sets the root
    logger to DEBUG, and matplotlib would log every font it considers)."""
    import logging

    logging.getLogger("matplotlib").setLevel(logging.WARNING)  # before its import logs
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def rel(path: Optional[str]) -> Optional[str]:
    """A path as a table records it: relative to the repository, so that no machine's folders
    are written into benchmarks/results."""
    return None if path is None else os.path.relpath(os.path.abspath(path), REPO)


def split_examples(data, path: str = "") -> tuple:
    """(data without its "examples" entries, {where: examples}): a results JSON keeps the
    numbers, and the decoded examples go to a file of their own; `where` is the entry's path of
    keys and list indices ("rows/3/samples"), by which join_examples puts it back."""
    if isinstance(data, dict):
        kept, apart = {}, {}
        for key, value in data.items():
            if key == "examples":
                apart[path] = value
                continue
            kept[key], more = split_examples(value, f"{path}/{key}" if path else str(key))
            apart.update(more)
        return kept, apart
    if isinstance(data, list):
        kept, apart = [], {}
        for i, value in enumerate(data):
            item, more = split_examples(value, f"{path}/{i}" if path else str(i))
            kept.append(item)
            apart.update(more)
        return kept, apart
    return data, {}


def write_results_json(stem: str, data):
    """stem.json (the numbers) and stem-examples.json (the decoded examples, if any; git ignores
    it: examples quote the shared corpora, or models trained on them)."""
    numbers, examples = split_examples(data)
    with open(stem + ".json", "w") as f:
        json.dump(numbers, f, indent=1)
    if examples:
        with open(stem + "-examples.json", "w") as f:
            json.dump(examples, f, indent=1)


def read_results_json(stem: str):
    """What write_results_json wrote, with the examples put back where they were."""
    data = json.load(open(stem + ".json"))
    path = stem + "-examples.json"
    for where, examples in (json.load(open(path)) if os.path.isfile(path) else {}).items():
        node = data
        for step in where.split("/") if where else []:
            node = node[int(step)] if isinstance(node, list) else node[step]
        node["examples"] = examples
    return data


SUBSET_SEED = 1


def pretrain_length(
    hours: float, updates: Optional[int] = None, epochs: Optional[int] = None
) -> Tuple[List[str], str]:
    """How long the pretraining runs: `updates` updates, or `epochs` passes over the training
    text, or else `hours` of training; the fairseq-train options that say it (beside a
    --max-update of `updates`, see pretrain_cmd), and the label the report gives it."""
    if updates is not None:
        return [], f"--pretrain-updates {updates}"
    if epochs is not None:
        return ["--max-epoch", str(epochs)], f"--pretrain-epochs {epochs}"
    return ["--stop-time-hours", str(hours)], f"--stop-time-hours {hours}"


def pretrain_cmd(
    data: str,
    b: dict,
    save_dir: str,
    hours: float,
    updates: Optional[int] = None,
    epochs: Optional[int] = None,
    keep_every: Optional[int] = None,
) -> list:
    """BART's text-infilling objective (Lewis et al. 2020) with fairseq's denoising task, at the
    VAE's (bart_vae_small's) dimensions, for the length pretrain_length says. `keep_every` also
    keeps checkpoint_<epoch>_<updates>.pt every that many updates: each is exactly a shorter
    pretraining, as inverse_sqrt's learning rate does not depend on the total."""
    length, _ = pretrain_length(hours, updates, epochs)
    keep = [] if keep_every is None else ["--save-interval-updates", str(keep_every)]
    return (
        [
            os.path.join(BIN, "fairseq-train"),
            data,
            *denoising_pretraining_args(b["dim"], b["ffn"], b["layers"], b["heads"]),
        ]
        + common_train_args(b, updates or 100000, save_dir)
        + length
        + keep
    )


def subset_corpus(data_dir: str, out: str, fraction: float) -> str:
    """A fixed random `fraction` of the training sentences (in their order), with the full
    validation and test text: out/subset-<percent>/{train,valid,test}.txt."""
    with open(os.path.join(data_dir, "train.txt"), encoding="utf-8") as f:
        count = round(fraction * sum(1 for _ in f))
    return slice_corpus(data_dir, os.path.join(out, f"subset-{round(100 * fraction)}pct"), count)


def slice_corpus(data_dir: str, dest: str, train: int, valid: Optional[int] = None) -> str:
    """dest/{train,valid,test}.txt: a fixed random `train` training sentences (in their order,
    seed SUBSET_SEED), the first `valid` validation sentences (all of them if None) and the
    whole test split, the splits kept whole linked rather than copied."""
    os.makedirs(dest, exist_ok=True)
    for split, count, pick in (("train", train, "random"), ("valid", valid, "first")):
        path = os.path.join(data_dir, f"{split}.txt")
        with open(path, encoding="utf-8") as f:
            lines = f.readlines()
        if count is not None and count > len(lines):
            raise ValueError(f"{path} has {len(lines)} sentences, fewer than the {count} asked for")
        if count is None:
            link(path, os.path.join(dest, f"{split}.txt"))
            continue
        rows = (
            range(count)
            if pick == "first"
            else random.Random(SUBSET_SEED).sample(range(len(lines)), count)
        )
        with open(os.path.join(dest, f"{split}.txt"), "w", encoding="utf-8") as f:
            f.writelines(lines[i] for i in sorted(rows))
    link(os.path.join(data_dir, "test.txt"), os.path.join(dest, "test.txt"))
    return dest


def link(source: str, dest: str):
    if not os.path.islink(dest):
        os.symlink(os.path.abspath(source), dest)


# the trainings two studies share

# the shipped corpus's LM: the tokens of scripts/demo.py's 4800 batches of 1,024 in the budget's
# batches of 4,096
SYNTH_UPDATES = 1200


def synth_jobs(out: str, b: dict, demo_args: Sequence[str] = ()) -> dict:
    """The shipped corpus's VAE (scripts/demo.py, with `demo_args` if any) and reference LM."""
    data = os.path.join(REPO, "data-bin", "synth")
    d = os.path.join(out, "synth")
    vae = os.path.join(d, "vae")
    demo = [sys.executable, os.path.join(REPO, "scripts", "demo.py"), "--save-dir", vae]
    demo += list(demo_args)
    lm_cmd = lm_train_cmd(data, b, SYNTH_UPDATES, os.path.join(d, "lm"))
    return {
        "data": data,
        "checkpoint": os.path.join(vae, "checkpoint_last.pt"),
        "lm": os.path.join(d, "lm", "checkpoint_last.pt"),
        "train_log": os.path.join(vae, "train.log"),
        "grammar": "synth",
        "jobs": {
            "train synth": train_job([demo], os.path.join(vae, "train.log")),
            "train synth lm": train_job([lm_cmd], os.path.join(d, "lm", "train.log")),
        },
        "train_job": "train synth",
        "lm_job": "train synth lm",
    }


def yelp_jobs(args, b: dict) -> dict:
    """The Yelp pretraining, VAE and LM, and their test evaluations, as run_queue jobs."""
    out = os.path.abspath(args.yelp_out)
    data = prepare(args.yelp, out)
    bart_dir = os.path.join(out, "bart")
    bart = yelp_bart(out)
    vae = os.path.join(out, "vae", setting_dir(args.setting))
    lm = os.path.join(out, "lm")
    k = args.iw_samples
    jobs = {
        "pretrain yelp": train_job(
            [pretrain_cmd(data, b, bart_dir, args.pretrain_hours)],
            os.path.join(bart_dir, "train.log"),
        ),
        "train yelp lm": train_job(
            [lm_train_cmd(data, b, b["max_update"], lm)], os.path.join(lm, "train.log")
        ),
        "train yelp vae": train_job(
            vae_train_cmds(data, b, SETTINGS[args.setting], b["max_update"], vae, bart),
            os.path.join(vae, "train.log"),
            after=["pretrain yelp"],
        ),
    }
    jobs["eval yelp vae"] = vae_eval_job(
        data,
        os.path.join(vae, "checkpoint_last.pt"),
        "test",
        k,
        os.path.join(vae, f"test-K{k}.json"),
        b,
        after=["train yelp vae"],
    )
    jobs["eval yelp lm"] = lm_eval_job(
        data,
        os.path.join(lm, "checkpoint_last.pt"),
        os.path.join(lm, "test.log"),
        b,
        after=["train yelp lm"],
    )
    paths = {"data": data, "vae": vae, "lm": lm, "report": os.path.join(vae, f"test-K{k}.json")}
    return jobs, paths


# benchmarks/control.py's Yelp VAE setting, which other studies compare with or start from
CONTROL_YELP_SETTING = "BART init, fb 0.5, 512 tokens, z in the embeddings, latent lr x5"


def control_yelp_jobs(yelp: str, yelp_out: str, pretrain_hours: float, b: dict) -> tuple:
    """yelp_jobs as benchmarks/control.py runs them by default (its setting, K = 100), for the
    studies that reuse its Yelp folder: its BART, LM and data."""
    args = argparse.Namespace(
        yelp=yelp,
        yelp_out=yelp_out,
        setting=CONTROL_YELP_SETTING,
        iw_samples=100,
        pretrain_hours=pretrain_hours,
    )
    return yelp_jobs(args, b)


def yelp_bart(yelp_out: str) -> str:
    """The Yelp BART that yelp_jobs pretrains in yelp_out."""
    return os.path.join(os.path.abspath(yelp_out), "bart", "checkpoint_last.pt")


def ptb_jobs(setting: str, args, b: dict) -> dict:
    """A PTB setting of benchmarks/ptb.py and its LM, in ptb.py's working folder (args.ptb_out),
    so that a training ptb.py finished is not run again (prior.py's PTB points)."""
    out = os.path.abspath(args.ptb_out)
    data = prepare(args.ptb, out)
    s = SETTINGS[setting]
    bart = None
    if s.get("bart_init"):
        if not args.pretrained_bart:
            sys.exit(f"prior.py: {setting!r} fine-tunes a pretrained BART: give --pretrained-bart")
        bart = bart_pretraining(os.path.abspath(args.pretrained_bart), data)["checkpoint"]
    d = os.path.join(out, "vae", setting_dir(setting))
    lm_log = os.path.join(out, "lm", "train.log")
    return {
        "data": data,
        "checkpoint": os.path.join(d, "checkpoint_last.pt"),
        "lm": os.path.join(out, "lm", "checkpoint_last.pt"),
        "train_log": os.path.join(d, "train.log"),
        "grammar": None,
        "jobs": {
            f"train {setting}": train_job(
                vae_train_cmds(data, b, s, b["max_update"], d, bart),
                os.path.join(d, "train.log"),
            ),
            "train ptb lm": train_job(
                [lm_train_cmd(data, b, b["max_update"], os.path.join(out, "lm"))], lm_log
            ),
        },
        "train_job": f"train {setting}",
        "lm_job": "train ptb lm",
    }
