#!/usr/bin/env python3
"""Plot the posterior means of a split projected to 2-D, coloured by a factor label.

    python scripts/plot_latent.py data-bin/synth --path checkpoints/demo/checkpoint_last.pt \\
        --gen-subset test --labels corpus/synth/test.labels.tsv --color-by sentiment \\
        --output latent.png

The projection is PCA (its explained variance is in the axis labels) or t-SNE. Labels are
the shipped corpus's factor file: a header of factor names, one line per sentence.
"""

import argparse
import logging
import os
import sys

import numpy as np
import torch


def project(points, method, seed=1):
    """N x D -> (N x 2, axis labels)."""
    if method == "pca":
        from sklearn.decomposition import PCA

        pca = PCA(n_components=2, random_state=seed).fit(points)
        # a collapsed posterior has one mean for every sentence: no variance to explain
        ratio = np.nan_to_num(pca.explained_variance_ratio_)
        axes = [f"PC{i + 1} ({100 * r:.1f}% of variance)" for i, r in enumerate(ratio)]
        return pca.transform(points), axes
    from sklearn.manifold import TSNE

    perplexity = min(30.0, max(2.0, (len(points) - 1) / 3))
    tsne = TSNE(2, perplexity=perplexity, random_state=seed, init="pca")
    return tsne.fit_transform(points), ["t-SNE 1", "t-SNE 2"]


def plot(xy, axis_labels, colors, color_name, output, title):
    """Draws the points and writes them to ``output``; returns the matplotlib Figure (one
    scatter per label value, in sorted order, each with its points in the order given)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 7))
    if colors is None:
        ax.scatter(xy[:, 0], xy[:, 1], s=8, alpha=0.7, color="tab:blue")
    else:
        values = sorted(set(colors))
        palette = plt.get_cmap("tab10" if len(values) <= 10 else "tab20")
        for k, value in enumerate(values):
            keep = [i for i, c in enumerate(colors) if c == value]
            ax.scatter(xy[keep, 0], xy[keep, 1], s=8, alpha=0.7, label=value, color=palette(k % 20))
        ax.legend(title=color_name, markerscale=2, fontsize=8, loc="best")
    ax.set_xlabel(axis_labels[0])
    ax.set_ylabel(axis_labels[1])
    ax.set_title(title)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(output, dpi=100)
    plt.close(fig)  # pyplot lets go of it; the Figure itself stays readable
    return fig


def main(argv=None):
    """Runs the script; returns the Figure it drew."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("data", help="the data-bin folder (its dict.txt and the split)")
    parser.add_argument("--path", required=True, help="bart_vae checkpoint")
    parser.add_argument("--gen-subset", default="test", help="split to encode (default: test)")
    parser.add_argument("--labels", help="factor labels TSV of the split, to colour points by")
    parser.add_argument("--color-by", help="factor to colour by (default: the first column)")
    parser.add_argument("--projection", choices=["pca", "tsne"], default="pca")
    parser.add_argument("--output", default="latent.png", help="PNG to write")
    parser.add_argument("--max-tokens", type=int, default=4096, help="tokens per batch")
    parser.add_argument("--user-dir", help="the plugin folder (imported anyway)")
    parser.add_argument("--cpu", action="store_true", help="do not use a GPU")
    args = parser.parse_args(argv)
    logging.basicConfig(
        format="%(asctime)s | %(levelname)s | %(name)s | %(message)s",
        level=logging.INFO,
        force=True,  # fairseq's imports leave the root logger at DEBUG
    )

    from fairseq import utils

    if args.user_dir:
        utils.import_user_module(args)
    from fairseq_vae.cli.loading import load_checkpoint, posterior_means
    from fairseq_vae.metrics.estimators import read_labels

    use_cuda = torch.cuda.is_available() and not args.cpu
    model, saved_cfg, task = load_checkpoint(args.path, {"data": args.data}, use_cuda=use_cuda)
    mu, _, ids = posterior_means(
        model, task, args.gen_subset, max_tokens=args.max_tokens, saved_task_cfg=saved_cfg.task
    )
    colors, color_name = None, None
    if args.labels:
        labels = read_labels(args.labels)
        color_name = args.color_by or next(iter(labels))
        if color_name not in labels:
            sys.exit(f"--color-by {color_name}: {args.labels} has {', '.join(labels)}")
        if len(labels[color_name]) <= int(ids.max()):
            sys.exit(f"{args.labels} has {len(labels[color_name])} rows, fewer than the split")
        colors = [labels[color_name][i] for i in ids.tolist()]  # skipped sentences left out
    xy, axis_labels = project(mu.double().numpy(), args.projection)
    title = f"posterior means of {args.gen_subset!r} ({len(mu)} sentences, {mu.size(1)} dims)"
    fig = plot(xy, axis_labels, colors, color_name, args.output, title)
    print(f"{args.output}: {len(mu)} points, {args.projection} of {os.path.basename(args.path)}")
    return fig


if __name__ == "__main__":
    main()
