#!/usr/bin/env python3
"""The main job (`make demo`): train the small bart_vae on the shipped synthetic corpus with
fairseq-train, then evaluate it with fairseq-vae-eval: IW-PPL, KL, MI, AU, reconstruction BLEU
and how well each generative factor of the corpus can be read from the latent.

Everything runs through fairseq's own command-line tools with `--user-dir fairseq_vae`, exactly
as a user would type them; the commands are printed before they run. A second run resumes
from the checkpoints (fairseq's usual behaviour) and so only re-evaluates; --fresh retrains.
"""

import argparse
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import time

from pack_checkpoint import sha256

from fairseq_vae.denoising import denoising_pretraining_args

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BIN = os.path.dirname(sys.executable)

# The demo model: 2+2 layers of width 128, a 32-dimensional z, trained on 2 CPU cores in
# minutes. A short run on an easy corpus is where posterior collapse bites hardest: the decoder
# learns the language long before the encoder has anything to say.
# the optimisation, shared by every phase of every recipe
COMMON = [
    "--optimizer",
    "adam",
    "--adam-betas",
    "(0.9,0.98)",
    "--lr",
    "1e-3",
    "--lr-scheduler",
    "inverse_sqrt",
    "--warmup-updates",
    "200",
    "--required-batch-size-multiple",
    "1",
    "--num-workers",
    "0",
    "--seed",
    "1",
]
VAE = [
    "--arch",
    "bart_vae_small",
    "--latent-dim",
    "32",
    "--task",
    "text_vae",
    "--criterion",
    "elbo",
]
# The BART the default recipe fine-tunes: pretrained on data-bin/synth's training text with
# fairseq's denoising task by the README's command ("A BART of your own": 2000 updates), then
# packed without its optimizer state (scripts/pack_checkpoint.py). The demo refuses a file with
# another hash: a BART of your own goes in with --pretrained.
PRETRAINED = os.path.join(ROOT, "pretrained", "bart-synth.pt")
PRETRAINED_SHA256 = "259dd9df3bbce2c55524820b1101f80d27d03667d803571cdc36d888a9fb2dc0"
# Each recipe is a list of (phase name, fraction of the updates, fairseq-train options); a phase
# after the first starts from the previous phase's checkpoint (--finetune-from-model), the first
# phase of a recipe marked in FROM_PRETRAINED from the shipped BART.
FINETUNE_FREE_BITS = "0.35"
# Fu et al.'s cyclical annealing as Optimus runs it: four cycles, each a quarter at beta = 0,
# a quarter ramping to 1, half at 1
CYCLICAL = ["--kl-schedule", "cyclical", "--kl-cycles", "4"]
CYCLICAL += ["--kl-zero-fraction", "0.25", "--kl-ramp-fraction", "0.25"]
RECIPES = {
    # the workflow the project exists for: a pretrained BART fine-tuned into the VAE, with
    # cyclical annealing and a free-bits floor chosen on this corpus (docs/results.md)
    "bart-finetune": [
        (
            "the VAE fine-tuned from the shipped BART: cyclical annealing and free bits",
            1.0,
            VAE + CYCLICAL + ["--free-bits", FINETUNE_FREE_BITS],
        ),
    ],
    # a BART pretrained on the corpus with fairseq's denoising task (text infilling, at
    # bart_vae_small's dimensions), then fine-tuned as the VAE with cyclical annealing and free
    # bits 0.25: the pretrained encoder already separates sentences, so the same KL buys more
    # information (the "BART init" settings of benchmarks/harness.py; README "Results")
    "bart-init": [
        (
            "BART's denoising pretraining (fairseq's denoising task)",
            0.4,
            denoising_pretraining_args(dim=128, ffn=512, layers=2, heads=4),
        ),
        (
            "the VAE fine-tuned from it: cyclical annealing, free bits 0.25",
            0.6,
            VAE + CYCLICAL + ["--free-bits", "0.25"],
        ),
    ],
    # Li et al. (2019) with BN-VAE: half the updates train an autoencoder (beta = 0: the encoder
    # learns to carry the sentence), then the decoder is re-initialised and the VAE trains with
    # beta ramping to 1 while BN-VAE (gamma 1) keeps every dimension's KL at about 0.5 nats or
    # more; z also enters every decoder layer. The README compares it with "annealing".
    "pretrain-reset": [
        (
            "the autoencoder (beta = 0)",
            0.5,
            VAE + ["--kl-schedule", "constant", "--kl-beta-max", "0"],
        ),
        (
            "the VAE: its encoder, a fresh decoder, BN-VAE and annealing",
            0.5,
            VAE
            + [
                "--reset-decoder",
                "--latent-layer-memory",
                "--bn-vae-gamma",
                "1.0",
                "--kl-schedule",
                "monotonic",
                "--kl-ramp-fraction",
                "0.5",
            ],
        ),
    ],
    # the earlier demo: an autoencoder phase inside one run (beta = 0 for the first half, a ramp
    # to 1 over the next quarter), word dropout, z also added to the input embeddings, and a
    # small free-bits floor
    "annealing": [
        (
            "the VAE with KL annealing",
            1.0,
            VAE
            + [
                "--latent-to-embeddings",
                "--kl-schedule",
                "monotonic",
                "--kl-zero-fraction",
                "0.5",
                "--kl-ramp-fraction",
                "0.25",
                "--free-bits",
                "0.1",
                "--word-dropout",
                "0.3",
            ],
        ),
    ],
}
FROM_PRETRAINED = {"bart-finetune"}
DEFAULT_RECIPE = "bart-finetune"
# importance samples of the evaluation (the README's numbers use the same)
IW_SAMPLES = 100


def run(cmd, echo_filter=None):
    """Runs a command, streaming the lines that match ``echo_filter``; returns all output."""
    print("$ " + " ".join(shlex.quote(c) for c in cmd), flush=True)
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines = []
    for line in proc.stdout:
        lines.append(line)
        if echo_filter and re.search(echo_filter, line):
            print("  " + line.rstrip().split(" | ", 2)[-1][:200], flush=True)
    if proc.wait() != 0:
        sys.stdout.write("".join(lines[-40:]))
        sys.exit(f"{os.path.basename(cmd[0])} failed with exit code {proc.returncode}")
    return "".join(lines)


def train(data, save_dir, recipe, max_update, max_tokens, user_dir):
    run(
        [
            os.path.join(BIN, "fairseq-train"),
            data,
            "--user-dir",
            user_dir,
            *COMMON,
            "--max-tokens",
            str(max_tokens),
            *recipe,
            "--max-update",
            str(max_update),
            "--save-dir",
            save_dir,
            "--no-epoch-checkpoints",
            "--disable-validation",
            "--log-format",
            "simple",
            "--log-interval",
            "100",
            "--cpu",
        ],
        echo_filter=r"train_inner|done training",
    )


def with_option(options: list, flag: str, value: str) -> list:
    """fairseq-train options with `flag` set to `value`, in place of the recipe's own."""
    if flag in options:
        i = options.index(flag)
        return options[: i + 1] + [value] + options[i + 2 :]
    return options + [flag, value]


def checked_pretrained(path: str) -> str:
    """The BART to fine-tune; the shipped file only if it is the one committed."""
    if not os.path.isfile(path):
        sys.exit(f"no pretrained BART at {path}: see the README's 'A BART of your own'")
    if os.path.abspath(path) == PRETRAINED and sha256(path) != PRETRAINED_SHA256:
        sys.exit(
            f"{path} has SHA-256 {sha256(path)}, not the shipped {PRETRAINED_SHA256}: restore "
            "it (git checkout pretrained/), or pass a BART of your own with --pretrained"
        )
    return path


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", default=os.path.join(ROOT, "data-bin", "synth"))
    labels = os.path.join(ROOT, "corpus", "synth", "test.labels.tsv")
    parser.add_argument(
        "--labels", default=labels, help="factor labels of the test split, for the probe table"
    )
    parser.add_argument("--save-dir", default=os.path.join(ROOT, "checkpoints", "demo"))
    parser.add_argument(
        "--recipe",
        choices=sorted(RECIPES),
        default=DEFAULT_RECIPE,
        help=f"the training recipe (default {DEFAULT_RECIPE}; see RECIPES)",
    )
    # 4800 batches of 1,024 tokens: the tokens of 1200 of 4,096 in four times the steps, which
    # the path through z learns faster from (issue #40; docs/results.md "The demo")
    parser.add_argument(
        "--max-update",
        type=int,
        default=4800,
        help="updates in all, shared among the recipe's phases (default 4800)",
    )
    parser.add_argument(
        "--max-tokens",
        type=int,
        default=1024,
        help="tokens a batch (default 1024)",
    )
    parser.add_argument(
        "--iw-samples",
        type=int,
        default=IW_SAMPLES,
        help=f"importance samples of the IW-PPL (default {IW_SAMPLES})",
    )
    parser.add_argument(
        "--pretrained",
        default=PRETRAINED,
        help="the BART checkpoint that --recipe bart-finetune fine-tunes (default: the shipped "
        "one, checked against its SHA-256)",
    )
    parser.add_argument(
        "--free-bits",
        help="the free-bits floor (nats per latent dimension) of a recipe that sets one, in "
        f"place of its own (bart-finetune: {FINETUNE_FREE_BITS})",
    )
    parser.add_argument(
        "--word-dropout",
        help="the decoder's word dropout (Bowman et al. 2016) in the recipe's last phase, in "
        "place of its own (none in bart-finetune)",
    )
    parser.add_argument(
        "--bow-loss-weight",
        help="the weight of Zhao et al. (2017)'s bag-of-words loss in the recipe's last phase "
        "(none in bart-finetune)",
    )
    parser.add_argument("--fresh", action="store_true", help="delete old checkpoints first")
    args = parser.parse_args()
    if not os.path.isfile(os.path.join(args.data, "dict.txt")):
        sys.exit(f"{args.data} is not a data-bin folder (no dict.txt): see scripts/prepare_data.sh")
    if args.fresh and os.path.isdir(args.save_dir):
        shutil.rmtree(args.save_dir)
    user_dir = os.path.join(ROOT, "fairseq_vae")

    start = time.time()
    phases, previous, done = RECIPES[args.recipe], None, 0
    if args.recipe in FROM_PRETRAINED:
        previous = checked_pretrained(args.pretrained)
    for i, (name, fraction, options) in enumerate(phases):
        last = i == len(phases) - 1
        updates = args.max_update - done if last else int(args.max_update * fraction)
        save_dir = args.save_dir if last else os.path.join(args.save_dir, f"phase{i + 1}")
        print(f"{i + 1}. {name}: {updates} updates", flush=True)
        finetune = ["--finetune-from-model", previous] if previous else []
        if args.free_bits is not None and "--free-bits" in options:
            options = with_option(options, "--free-bits", args.free_bits)
        if last:
            for flag, value in (
                ("--word-dropout", args.word_dropout),
                ("--bow-loss-weight", args.bow_loss_weight),
            ):
                if value is not None:
                    options = with_option(options, flag, value)
        train(args.data, save_dir, options + finetune, updates, args.max_tokens, user_dir)
        previous, done = os.path.join(save_dir, "checkpoint_last.pt"), done + updates
    train_minutes = (time.time() - start) / 60

    checkpoint = os.path.join(args.save_dir, "checkpoint_last.pt")
    results = os.path.join(args.save_dir, "test_results.json")
    labels = ["--labels", args.labels] if os.path.isfile(args.labels) else []
    start = time.time()
    output = run(
        [
            os.path.join(BIN, "fairseq-vae-eval"),
            args.data,
            "--user-dir",
            user_dir,
            "--path",
            checkpoint,
            "--gen-subset",
            "test",
            "--iw-samples",
            str(args.iw_samples),
            "--seed",
            "1",
            "--cpu",
            "--results-json",
            results,
            *labels,
        ],
    )
    eval_minutes = (time.time() - start) / 60
    print(
        f"\nbart_vae_small on {args.data}, recipe {args.recipe}: {args.max_update} updates, "
        f"{train_minutes:.1f} min of training, {eval_minutes:.1f} min of evaluation"
    )
    print(output[output.index("fairseq-vae-eval |") :].rstrip())
    report = json.load(open(results))
    if report.get("factors"):
        print(
            "\nfactor probe (logistic regression on the posterior means: a seeded, stratified "
            "half of the test split to train, the other half to score)"
        )
        print(f"{'factor':<10} {'classes':>7} {'accuracy':>9} {'majority':>9}")
        for name, f in report["factors"].items():
            print(
                f"{name:<10} {f['classes']:7d} {f['accuracy']:9.3f} {f['majority_baseline']:9.3f}"
            )
    show_latent_space(args.save_dir, args.data)


def show_latent_space(save_dir, data):
    """Prior samples, reconstructions and an interpolation through the hub interface."""
    from fairseq_vae.models.bart_vae import BARTVAEModel

    vae = BARTVAEModel.from_pretrained(save_dir, "checkpoint_last.pt", data)
    vae.task.load_dataset("test")
    test = vae.task.dataset("test")
    sentences = [vae.to_text(test[i]["source"]) for i in range(5)]

    print("\n5 samples from the prior (greedy decoding of z ~ N(0, I)):")
    for sentence in vae.sample(5, seed=1):
        print("  " + sentence)
    print("\n5 test sentences and their reconstructions (greedy, from the posterior mean):")
    for sentence, reconstruction in zip(sentences, vae.reconstruct(sentences)):
        print(f"  {sentence}\n    -> {reconstruction}")
    print("\nInterpolation between two test sentences (posterior means, linear):")
    for t, sentence in enumerate(vae.interpolate(sentences[0], sentences[1], steps=6)):
        print(f"  {t / 5:.1f}  {sentence}")


if __name__ == "__main__":
    main()
