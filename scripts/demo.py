#!/usr/bin/env python3
"""The main job (`make demo`): train the small bart_vae on the shipped synthetic corpus with
fairseq-train, then evaluate it with fairseq-validate and print NLL, KL and ELBO.

Everything runs through fairseq's own command-line tools with `--user-dir fairseq_vae`, exactly
as a user would type them; the commands are printed before they run. A second run resumes
from the checkpoint (fairseq's usual behaviour) and so only re-evaluates; --fresh retrains.
"""

import argparse
import os
import re
import shlex
import shutil
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BIN = os.path.dirname(sys.executable)

# The demo recipe: a 2+2-layer model of width 128 that trains on 2 CPU cores in minutes.
# A short run on an easy corpus is where posterior collapse bites hardest: the decoder learns
# the language long before the encoder has anything to say. So the first half of the run is a
# plain autoencoder (beta = 0: z learns to carry the sentence), beta then ramps to 1 over a
# quarter of the run and holds; word dropout makes the decoder lean on z, z is also added to
# its input embeddings, and a small free-bits floor (0.1 nats per dimension) keeps the ramp
# from squeezing the last information out.
DEMO_RECIPE = [
    "--arch", "bart_vae_small", "--latent-dim", "32", "--latent-to-embeddings",
    "--task", "text_vae", "--kl-schedule", "monotonic", "--kl-zero-fraction", "0.5",
    "--kl-ramp-fraction", "0.25",
    "--criterion", "elbo", "--free-bits", "0.1", "--word-dropout", "0.3",
    "--optimizer", "adam", "--adam-betas", "(0.9,0.98)", "--lr", "1e-3",
    "--lr-scheduler", "inverse_sqrt", "--warmup-updates", "200",
    "--max-tokens", "4096", "--required-batch-size-multiple", "1",
    "--num-workers", "0", "--seed", "1",
]  # fmt: skip


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


def parse_valid_line(output, subset):
    """The numbers of fairseq-validate's summary line for ``subset``."""
    lines = [line for line in output.splitlines() if f"valid on '{subset}' subset" in line]
    if not lines:
        sys.exit(f"fairseq-validate printed no summary for {subset!r}")
    return {k: float(v) for k, v in re.findall(r"\| (\w+) ([-\d.e+]+)", lines[-1])}


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", default=os.path.join(ROOT, "data-bin", "synth"))
    parser.add_argument("--save-dir", default=os.path.join(ROOT, "checkpoints", "demo"))
    parser.add_argument("--max-update", type=int, default=1200)
    parser.add_argument("--fresh", action="store_true", help="delete old checkpoints first")
    args = parser.parse_args()
    if not os.path.isfile(os.path.join(args.data, "dict.txt")):
        sys.exit(f"{args.data} is not a data-bin folder (no dict.txt): see scripts/prepare_data.sh")
    if args.fresh and os.path.isdir(args.save_dir):
        shutil.rmtree(args.save_dir)
    user_dir = os.path.join(ROOT, "fairseq_vae")

    start = time.time()
    run(
        [os.path.join(BIN, "fairseq-train"), args.data, "--user-dir", user_dir, *DEMO_RECIPE,
         "--max-update", str(args.max_update), "--save-dir", args.save_dir,
         "--no-epoch-checkpoints", "--validate-interval-updates", "300",
         "--validate-interval", "1000", "--log-format", "simple", "--log-interval", "100",
         "--cpu"],
        echo_filter=r"train_inner|valid on|done training",
    )  # fmt: skip
    train_minutes = (time.time() - start) / 60

    checkpoint = os.path.join(args.save_dir, "checkpoint_last.pt")
    output = run(
        [os.path.join(BIN, "fairseq-validate"), args.data, "--user-dir", user_dir,
         "--task", "text_vae", "--path", checkpoint, "--valid-subset", "valid,test",
         "--max-tokens", "8192", "--required-batch-size-multiple", "1", "--seed", "1",
         "--cpu"],
    )  # fmt: skip

    print(f"\nbart_vae_small on {args.data}: {args.max_update} updates, "
          f"{train_minutes:.1f} min of training; one posterior sample per sentence")  # fmt: skip
    print(f"{'split':<6} {'NLL/sent':>9} {'KL/sent':>8} {'-ELBO/sent':>11} {'NLL/tok':>8} "
          f"{'ELBO-PPL':>9} {'active':>7}")  # fmt: skip
    for subset in ("valid", "test"):
        m = parse_valid_line(output, subset)
        nll_sentence = -m["elbo"] - m["kl"]  # nats: -ELBO = NLL + KL
        nll_token = m["nll_loss"] * 0.6931471805599453  # fairseq logs bits
        print(f"{subset:<6} {nll_sentence:9.3f} {m['kl']:8.3f} {-m['elbo']:11.3f} "
              f"{nll_token:8.4f} {m['elbo_ppl']:9.2f} {m['active_dims']:7.1f}")  # fmt: skip
    print("(NLL, KL and ELBO in nats; NLL/tok is per sentencepiece token incl. end of sentence;"
          " 'active' = latent dimensions with batch-mean KL above 0.01)")  # fmt: skip
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
