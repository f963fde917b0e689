#!/usr/bin/env python3
"""Plot beta, KL, NLL and ELBO against updates from a fairseq-train log of a bart_vae run.

Reads the ``train_inner`` lines (and, as markers, the ``valid`` lines) that fairseq-train
writes with ``--log-format simple`` or ``--log-format json``; the two formats may even be mixed.

    python scripts/plot_training.py train.log --output training.png

Units are the logged ones: KL and ELBO in nats per sentence, NLL (``nll_loss``) in bits per
model token, beta the KL weight of the update.
"""

import argparse
import json
import re
import sys

# (logged key, panel title)
PANELS = [
    ("beta", "beta (KL weight)"),
    ("kl", "KL (nats / sentence)"),
    ("nll_loss", "NLL (bits / token)"),
    ("elbo", "ELBO (nats / sentence)"),
]

# "loss=8.342, nll_loss=8.342, ..." of the simple format's train_inner lines
SIMPLE_INNER = re.compile(r"(\w+)=([-+\w.]+)")
# "| loss 5.627 | kl 1.2 | ..." of the simple format's end-of-validation lines
SIMPLE_VALID = re.compile(r"\| (\w+) ([-+\w.]+)")


def to_float(value):
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


def numeric(record):
    return {k: v for k, v in ((k, to_float(v)) for k, v in record.items()) if v is not None}


def logger_field(name):
    """The message of a line logged by ``name``: after "| name |" in a full log line, or after
    a leading "name |" in the shortened lines scripts/demo.py echoes."""
    return re.compile(rf"(?:^\s*|\| ){re.escape(name)} \| (.*)$")


def parse_log(lines, valid_subset="valid"):
    """(train, valid): lists of {metric: float} dicts, each with ``num_updates``."""
    train, valid = [], []
    inner, checks = logger_field("train_inner"), logger_field(valid_subset)
    for line in lines:
        if inner.search(line):
            rest = inner.search(line).group(1).strip()
            record = json.loads(rest) if rest.startswith("{") else dict(SIMPLE_INNER.findall(rest))
            train.append(numeric(record))
        elif checks.search(line):
            rest = checks.search(line).group(1).strip()
            if rest.startswith("{"):  # json: keys carry the subset as a prefix
                prefix = valid_subset + "_"
                items = json.loads(rest).items()
                record = {k[len(prefix) :]: v for k, v in items if k.startswith(prefix)}
            elif f"valid on '{valid_subset}' subset" in rest:
                record = dict(SIMPLE_VALID.findall("| " + rest))
            else:
                continue
            valid.append(numeric(record))
    # a point needs its x: drop records without an update count
    return [r for r in train if "num_updates" in r], [r for r in valid if "num_updates" in r]


def plot(train, valid, output, title=None):
    """Draws the four panels and writes them to ``output``; returns the matplotlib Figure
    (panels in PANELS order: the train line first, then the valid markers)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 2, figsize=(10, 7), sharex=True)
    for ax, (key, label) in zip(axes.flat, PANELS):
        points = [(r["num_updates"], r[key]) for r in train if key in r]
        if points:
            ax.plot(*zip(*points), color="tab:blue", linewidth=1.2, label="train")
        checks = [(r["num_updates"], r[key]) for r in valid if key in r]
        if checks:
            ax.plot(*zip(*checks), "o", color="tab:red", markersize=5, label="valid")
        if not points and not checks:
            ax.text(
                0.5, 0.5, f"no '{key}' in the log", ha="center", va="center", transform=ax.transAxes
            )
        ax.set_title(label)
        ax.grid(alpha=0.3)
        if points and checks:
            ax.legend(loc="best", fontsize=8)
    for ax in axes[-1]:
        ax.set_xlabel("updates")
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(output, dpi=100)
    plt.close(fig)  # pyplot lets go of it; the Figure itself stays readable
    return fig


def main(argv=None):
    """Runs the script; returns the Figure it drew."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("log", help="a fairseq-train log ('-' for stdin)")
    parser.add_argument("--output", default="training.png", help="PNG to write")
    parser.add_argument(
        "--valid-subset",
        default="valid",
        help="validation subset whose numbers to overlay (default: valid)",
    )
    parser.add_argument("--title", help="figure title (default: the log's name)")
    args = parser.parse_args(argv)
    if args.log == "-":
        lines = sys.stdin.read().splitlines()
    else:
        with open(args.log, encoding="utf-8", errors="replace") as f:
            lines = f.read().splitlines()
    train, valid = parse_log(lines, args.valid_subset)
    if not train and not valid:
        sys.exit(f"no train_inner or valid lines with num_updates in {args.log}")
    fig = plot(train, valid, args.output, args.title or args.log)
    print(f"{args.output}: {len(train)} training and {len(valid)} validation points")
    return fig


if __name__ == "__main__":
    main()
