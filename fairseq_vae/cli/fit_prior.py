"""Fits a prior to a trained VAE's aggregate posterior (``fairseq-vae-fit-prior``).

The training split is encoded with the model's posterior and ``--samples-per-sentence`` draws
z ~ q(z|x) per sentence are the training data of the density
(``fairseq_vae.latent_space.prior``); the valid split's draws choose the mixture's number of
components, or stop the flow's training. The test split is never read. The prior is written
beside the checkpoint by default::

    fairseq-vae-fit-prior data-bin/synth --path checkpoints/demo/checkpoint_last.pt \\
        --prior-model gmm --components 1,2,4,8,16
    # -> checkpoints/demo/prior-gmm.pt

For bart_cvae (paired data) the density is of the standardised latent eps = (z - mu_p(c)) /
sigma_p(c), z ~ q(z|c, x) of the training pairs (``bart_cvae.standardised``): generation then
draws z = mu_p(c) + sigma_p(c) * eps with eps from the fitted prior, the source still deciding
where z lies, and fairseq-vae-eval reports log p(x|c) under it.

The command is built on fairseq's generation parser: ``--path``, ``--max-tokens``,
``--batch-size``, ``--train-subset``, ``--valid-subset``, ``--seed``, ``--cpu``,
``--model-overrides`` and ``--user-dir`` work as in ``fairseq-vae-eval``.
"""

import logging
import os
import sys
import time
from dataclasses import fields

import torch
from fairseq import options
from fairseq.logging import progress_bar

from fairseq_vae.cli.loading import (
    DEFAULT_MAX_TOKENS,
    cli_logging,
    load_checkpoint,
    parse_model_overrides,
    posterior_means,
)
from fairseq_vae.latent_space.prior import (
    FLOW_TRANSFORMS,
    GMM_COMPONENTS,
    GMM_MAX_POINTS,
    SAMPLES_PER_SENTENCE,
    FlowConfig,
    fit_flow,
    fit_gmm,
    mean_log_likelihood,
    posterior_samples,
)
from fairseq_vae.latent_space.prior_file import default_prior_path, prior_meta, save_prior

logger = logging.getLogger("fairseq_vae.cli.fit_prior")


def int_list(text: str, option: str):
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        values = []
    if not values or min(values) < 1:
        raise ValueError(f"{option} takes positive integers separated by commas, got {text!r}")
    return values


def add_fit_args(parser):
    group = parser.add_argument_group("fitted prior (fairseq-vae-fit-prior)")
    group.add_argument(
        "--prior-model", choices=["gmm", "flow"], required=True, help="the density to fit"
    )
    group.add_argument(
        "--out",
        metavar="FILE",
        help="where to write the prior (default: <checkpoint folder>/prior-<prior model>.pt)",
    )
    group.add_argument(
        "--samples-per-sentence",
        type=int,
        default=SAMPLES_PER_SENTENCE,
        metavar="N",
        help=f"posterior draws z ~ q(z|x) per sentence (default: {SAMPLES_PER_SENTENCE})",
    )
    group.add_argument(
        "--components",
        default=",".join(map(str, GMM_COMPONENTS)),
        metavar="K,K,...",
        help="gmm: the numbers of components to try; the valid split's log-likelihood "
        f"chooses (default: {','.join(map(str, GMM_COMPONENTS))})",
    )
    group.add_argument(
        "--gmm-max-points",
        type=int,
        default=GMM_MAX_POINTS,
        metavar="N",
        help="gmm: EM runs on at most N of the training split's draws, a seeded random subset "
        f"(default: {GMM_MAX_POINTS}; 0: all of them)",
    )
    defaults = FlowConfig()
    group.add_argument(
        "--flow-transform",
        choices=FLOW_TRANSFORMS,
        default=defaults.transform,
        help=f"flow: {FlowConfig.__dataclass_fields__['transform'].metadata['help']} "
        f"(default: {defaults.transform})",
    )
    group.add_argument(
        "--flow-hidden",
        default=",".join(map(str, defaults.hidden_features)),
        metavar="H,H,...",
        help="flow: hidden layer sizes of each transformation "
        f"(default: {','.join(map(str, defaults.hidden_features))})",
    )
    for f in fields(FlowConfig):
        if f.name in ("transform", "hidden_features"):
            continue
        group.add_argument(
            "--flow-" + f.name.replace("_", "-"),
            type=type(f.default),
            default=f.default,
            metavar="X" if isinstance(f.default, float) else "N",
            help=f"flow: {f.metadata['help']} (default: {f.default})",
        )
    return group


def get_parser():
    parser = options.get_generation_parser(default_task="text_vae")
    add_fit_args(parser)
    # never drop sentences to round batch sizes (DESIGN.md), and bound memory by default
    parser.set_defaults(max_tokens=DEFAULT_MAX_TOKENS, required_batch_size_multiple=1)
    return parser


def flow_config(args) -> FlowConfig:
    values = {
        f.name: getattr(args, "flow_" + f.name)
        for f in fields(FlowConfig)
        if f.name not in ("transform", "hidden_features")
    }
    return FlowConfig(
        transform=args.flow_transform,
        hidden_features=tuple(int_list(args.flow_hidden, "--flow-hidden")),
        **values,
    )


def encoding_progress(itr, args, split: str):
    """The batches, shown as fairseq-vae-eval shows its pass: a bar, or with --no-progress-bar
    a line of the sentences encoded so far every --log-interval batches."""
    progress = progress_bar.progress_bar(
        itr,
        log_format=args.log_format,
        log_interval=args.log_interval,
        prefix=f"fit-prior: encoding '{split}'",
        default_log_format="simple" if args.no_progress_bar else "tqdm",
    )
    done = 0
    for step, sample in enumerate(progress):
        yield sample
        done += len(sample["id"]) if sample else 0
        progress.log({"sentences": done}, step=step)


def encode_split(model, task, saved_cfg, args, split: str, generator):
    """(z, sentences): --samples-per-sentence posterior draws of each of the split's
    sentences ((N * n) x D, on the CPU)."""
    mu, logvar, _ = posterior_means(
        model,
        task,
        split,
        progress=lambda itr: encoding_progress(itr, args, split),
        max_tokens=args.max_tokens,
        batch_size=args.batch_size,
        seed=args.seed,
        skip_invalid=args.skip_invalid_size_inputs_valid_test,
        num_workers=args.num_workers,
        batch_size_multiple=1,
        saved_task_cfg=saved_cfg.task,
    )
    return posterior_samples(mu, logvar, args.samples_per_sentence, generator), len(mu)


def main(args) -> str:
    """Fits and writes the prior; returns its path."""
    if args.samples_per_sentence < 1:
        raise ValueError(
            f"--samples-per-sentence must be at least 1, got {args.samples_per_sentence}"
        )
    components = int_list(args.components, "--components")
    flow = flow_config(args) if args.prior_model == "flow" else None
    if "," in args.valid_subset:
        raise ValueError(f"--valid-subset names one split, got {args.valid_subset!r}")
    use_cuda = torch.cuda.is_available() and not args.cpu
    overrides = {"data": args.data, **parse_model_overrides(args.model_overrides)}
    logger.info(f"loading {args.path}")
    model, saved_cfg, task = load_checkpoint(args.path, overrides, use_cuda=use_cuda)
    out = args.out or default_prior_path(args.path, args.prior_model)

    start = time.time()
    draws = torch.Generator().manual_seed(args.seed)
    train_z, n_train = encode_split(model, task, saved_cfg, args, args.train_subset, draws)
    valid_z, n_valid = encode_split(model, task, saved_cfg, args, args.valid_subset, draws)
    encode_seconds = time.time() - start
    logger.info(
        f"{args.samples_per_sentence} posterior samples of each of {n_train} "
        f"{args.train_subset!r} and {n_valid} {args.valid_subset!r} sentences "
        f"({encode_seconds:.1f} s)"
    )

    start = time.time()
    if args.prior_model == "gmm":
        prior, selection = fit_gmm(
            train_z, valid_z, components, seed=args.seed, max_points=args.gmm_max_points or None
        )
    else:
        device = "cuda" if use_cuda else "cpu"
        prior, selection = fit_flow(train_z.to(device), valid_z.to(device), flow, seed=args.seed)
        prior = prior.cpu()
    fit_seconds = time.time() - start

    fit = {
        "prior_model": args.prior_model,
        "data": os.path.abspath(args.data),
        "train_subset": args.train_subset,
        "valid_subset": args.valid_subset,
        "train_sentences": n_train,
        "valid_sentences": n_valid,
        "samples_per_sentence": args.samples_per_sentence,
        "seed": args.seed,
        "encode_seconds": round(encode_seconds, 2),
        "fit_seconds": round(fit_seconds, 2),
        "selection": selection,
    }
    if flow is not None:
        fit["flow_training"] = {k: v for k, v in vars(flow).items() if k != "hidden_features"}
    for split, z in (("train", train_z), ("valid", valid_z)):
        fit[f"{split}_ll"] = mean_log_likelihood(z, prior)
        fit[f"{split}_ll_standard"] = mean_log_likelihood(z, None)
    save_prior(out, prior, prior_meta(model, args.path, fit=fit))

    chosen = (
        f"{selection['components']} components (of {', '.join(map(str, components))})"
        if args.prior_model == "gmm"
        else f"{flow.transform} flow, best of {selection['steps']} updates at update "
        f"{selection['best_step']}"
    )
    logger.info(f"fitted a {args.prior_model} prior in {fit_seconds:.1f} s: {chosen}")
    logger.info(
        "mean log-likelihood per posterior sample (nats): "
        f"train {fit['train_ll']:.3f} under the prior vs {fit['train_ll_standard']:.3f} under "
        f"N(0, I); valid {fit['valid_ll']:.3f} vs {fit['valid_ll_standard']:.3f}"
    )
    logger.info(f"wrote {out}")
    return out


def cli_main():
    cli_logging()
    args = options.parse_args_and_arch(get_parser())
    try:
        main(args)
    except ValueError as error:
        logger.error(str(error))
        sys.exit(1)


if __name__ == "__main__":
    cli_main()
