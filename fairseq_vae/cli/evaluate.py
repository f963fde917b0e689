"""The text-VAE evaluation suite (``fairseq-vae-eval``).

Every number follows the definitions of the reference implementation, jxhe/vae-lagging-encoder
(He et al. 2019), so that it can be compared with published tables:

* IW-NLL: K samples z_k ~ q(z|x), log w_k = log p(x|z_k) + log p(z_k) - log q(z_k|x),
  log p(x) ~= logsumexp_k log w_k - log K; PPL = exp(sum NLL / sum units), per model token
  (the target symbols incl. the final </s>) and per whitespace word (+1 per sentence for the
  end of sentence, as the reference counts it).
* -ELBO with one posterior sample and the analytic KL; the KL per sentence.
* MI: I(x;z) = E_x E_q[log q(z|x)] - E_q(z)[log q(z)], the first term analytic, the aggregate
  posterior q(z) from one z per sentence scored against every q(.|x_j) of a pool (the whole
  evaluation set, or each batch as the reference's ``calc_mi`` does).
* AU: latent dimensions whose posterior mean has a variance (over the evaluation set, unbiased)
  of at least a threshold (0.01).
* With ``--prior-file``, a prior p'(z) fitted to the model's aggregate posterior: the IW-NLL of
  the model p'(z) p(x|z) (log p'(z_k) in the importance weights, the same samples and decoder
  passes) and KL(q(z|x) || p') by Monte Carlo from those samples, beside the N(0, I) numbers.
* With ``--prior-samples N``: sentences from the priors and their quality
  (``fairseq_vae.metrics.prior_samples``; ``--lm-path`` is the LM that scores them).
* Reconstruction BLEU: greedy decoding from the posterior mean, sacrebleu against the input.
* Probes (``--labels``): a logistic regression reading each factor from the posterior mean,
  trained on one half of the split and scored on the other (a seeded, stratified shuffle),
  beside the share of the scored half's most common class.

A perplexity beyond a double (above ~709.78 nats per unit) is reported as inf, in the table
and in the JSON (``Infinity``, which Python's json reads back as inf). On a one-sentence split
MI, AU and the probes are undefined: "undefined (one sentence)" in the table, null in the JSON.

One posterior sample per sentence serves the -ELBO and the MI: the first importance sample,
which is a draw from q(z|x) like any other, so no extra decoding pass is needed. The estimators
themselves are pure functions in ``fairseq_vae.metrics.estimators``; this module is the
command on top.

The command is built on fairseq's generation parser, so ``--path``, ``--gen-subset``,
``--max-tokens``, ``--batch-size``, ``--cpu``, ``--fp16`` and ``--user-dir`` work as in
``fairseq-validate`` / ``fairseq-generate``::

    fairseq-vae-eval data-bin/synth --user-dir fairseq_vae \\
        --path checkpoints/demo/checkpoint_last.pt --gen-subset test --iw-samples 500 \\
        --labels corpus/synth/test.labels.tsv --cpu
"""

import argparse
import json
import logging
import time
from typing import List

import torch
from fairseq import options, utils
from fairseq.dataclass.utils import convert_namespace_to_omegaconf
from fairseq.logging import progress_bar
from torch import Tensor

from fairseq_vae.cli.evaluate_pairs import (
    conditional_iw_pass,
    conditional_metrics,
    format_conditional,
    info_beyond_source,
)
from fairseq_vae.cli.loading import (
    DEFAULT_MAX_TOKENS,
    batch_iterator,
    cli_logging,
    evaluable_ids,
    load_checkpoint,
    parse_model_overrides,
)
from fairseq_vae.criterions.elbo import gaussian_kl
from fairseq_vae.latent_space.prior_file import load_prior
from fairseq_vae.metrics.estimators import (
    AU_THRESHOLD,
    IW_CHUNK,
    IW_SAMPLES,
    iw_estimates,
    mutual_information,
    probe_factors,
    read_labels,
)
from fairseq_vae.metrics.eval_report import (
    Columns,
    batch_columns,
    format_report,
    latent_metrics,
    prior_file_metrics,
    reconstruction_metrics,
    report_settings,
)
from fairseq_vae.metrics.prior_samples import GRAMMARS, evaluate_prior_samples, format_prior_samples
from fairseq_vae.text.detokenizer import Detokenizer
from fairseq_vae.text.subword import corpus_bpe_options

logger = logging.getLogger("fairseq_vae.cli.evaluate")

# Sentences per batch are bounded by tokens: a pass of the IW estimator decodes about
# max_tokens * iw_chunk target positions, whose logits hold that many times the vocabulary.


# ----------------------------------------------------------------------------------------------
# The command


def add_eval_args(parser: argparse.ArgumentParser):
    group = parser.add_argument_group("VAE evaluation (fairseq-vae-eval)")
    group.add_argument(
        "--iw-samples",
        type=int,
        default=IW_SAMPLES,
        metavar="K",
        help="importance samples per sentence for the IW-NLL "
        f"(default: {IW_SAMPLES}, as the reference)",
    )
    group.add_argument(
        "--iw-chunk",
        type=int,
        default=IW_CHUNK,
        metavar="N",
        help="samples per sentence drawn and decoded in one pass; a pass decodes "
        "batch x N sentences, so lower it (or --max-tokens) to save memory "
        f"(default: {IW_CHUNK})",
    )
    group.add_argument(
        "--mi-pool",
        choices=["dataset", "batch"],
        default="dataset",
        help="the sentences whose posteriors form the aggregate posterior q(z) "
        "of the MI: the whole split, or each batch with the batch MIs averaged "
        "(the reference's calc_mi) (default: dataset)",
    )
    group.add_argument(
        "--au-threshold",
        type=float,
        default=AU_THRESHOLD,
        metavar="V",
        help="a latent dimension is active when the variance of its posterior "
        f"mean over the split is at least V (default: {AU_THRESHOLD})",
    )
    group.add_argument(
        "--labels",
        metavar="TSV",
        help="factor labels of the split (a header of factor names, then one "
        "line per sentence in corpus order): report how well a logistic "
        "regression on the posterior mean predicts each factor",
    )
    group.add_argument(
        "--spm-model",
        metavar="FILE",
        help="sentencepiece model to detokenise with, for BLEU and word counts "
        "(default: the corpus's own: DATA/spm.model, or GPT-2 BPE with "
        "DATA/encoder.json and DATA/vocab.bpe, else --post-process)",
    )
    group.add_argument(
        "--no-bleu", action="store_true", help="skip the greedy reconstruction and its BLEU"
    )
    group.add_argument(
        "--sample-grammar",
        choices=GRAMMARS,
        help="with --prior-samples: the corpus's known grammar (synth: the shipped corpus's), "
        "for the share of samples it generates and each factor's distance from train",
    )
    group.add_argument(
        "--results-json",
        metavar="FILE",
        help="also write the settings and every metric to this JSON file",
    )
    return group


def get_parser():
    parser = options.get_generation_parser(default_task="text_vae")
    add_eval_args(parser)
    # never drop sentences to round batch sizes (DESIGN.md), and bound memory by default
    parser.set_defaults(
        max_tokens=DEFAULT_MAX_TOKENS, required_batch_size_multiple=1, log_interval=10
    )
    return parser


# ----------------------------------------------------------------------------------------------
# The evaluation, step by step: one pass over the batches collects per-sentence columns, which
# are put back in corpus order; every metric is then a function of those columns
# (fairseq_vae.metrics.eval_report).


def build_detokenizer(cfg, args, dictionary) -> Detokenizer:
    if args.spm_model:
        bpe_options = {"bpe": "sentencepiece", "sentencepiece_model": args.spm_model}
    else:
        bpe_options = corpus_bpe_options(cfg.task.data)
    return Detokenizer(dictionary, bpe_options, cfg.common_eval.post_process)


def greedy_generator(cfg, task, model):
    cfg.generation.beam = 1  # greedy: beam search with a beam of one
    cfg.generation.sampling = False
    return task.build_generator([model], cfg.generation)


def iw_pass(model, progress, args, detok, generator, seed: int, prior=None) -> List[dict]:
    """Encodes each batch once, runs the IW estimator (and the greedy decoding) on it.

    Returns one dict per batch, in fairseq's batch order: the ``Columns.tensors`` entries and
    ``id`` (tensors), ``refs`` and ``hyps`` (lists) and, for ``--mi-pool batch``, ``mi``.
    With a fitted ``prior``, its estimates from the same samples too (``prior_log_px``,
    ``prior_kl``).
    """
    use_cuda = next(model.parameters()).is_cuda
    pad = model.decoder.dictionary.pad()
    draws = torch.Generator(device="cuda" if use_cuda else "cpu")
    draws.manual_seed(seed)
    batches, done = [], 0
    latent_source = model.encoder.latent_source
    model.encoder.latent_source = "mean"  # what SequenceGenerator's encoder call decodes from
    try:
        for step, sample in enumerate(progress):
            sample = utils.move_to_cuda(sample) if use_cuda else sample
            if not sample:
                continue
            net = sample["net_input"]
            mu, logvar = model.encoder.posterior(net["src_tokens"], net["src_lengths"])
            iw = iw_estimates(
                model,
                mu,
                logvar,
                net["prev_output_tokens"],
                sample["target"],
                args.iw_samples,
                args.iw_chunk,
                generator=draws,
                log_prior=None if prior is None else prior.log_prob,
            )
            batch = batch_columns(sample, mu, logvar, iw, gaussian_kl(mu, logvar), pad)
            batch.update(refs=[detok(tokens) for tokens in net["src_tokens"]], hyps=None)
            if prior is not None:
                batch["prior_log_px"], batch["prior_kl"] = iw.prior_log_px.cpu(), iw.prior_kl.cpu()
            if args.mi_pool == "batch":
                batch["mi"] = mutual_information(mu, logvar, iw.z1)
            if generator is not None:
                # generate() directly: the task's inference_step would apply its own
                # --latent-source, and the reconstruction must decode the posterior mean
                hypos = generator.generate([model], sample)
                batch["hyps"] = [detok(h[0]["tokens"]) for h in hypos]
            batches.append(batch)
            done += len(batch["id"])
            progress.log({"sentences": done}, step=step)
    finally:
        model.encoder.latent_source = latent_source
    return batches


def in_corpus_order(batches: List[dict], expected_ids: List[int], split: str) -> Columns:
    """The batches' columns in corpus order (fairseq batches by length), so that labels line
    up with sentences; an error unless every sentence the dataset batches was evaluated."""
    if not batches:
        raise ValueError(f"split {split!r} has no sentence to evaluate (all empty or over-long)")
    ids = torch.cat([b["id"] for b in batches])
    order = torch.argsort(ids)
    kept = ids[order].tolist()
    if kept != expected_ids:
        raise RuntimeError(
            f"evaluated {len(kept)} of the {len(expected_ids)} sentences of {split!r}: sentences "
            "longer than the model's maximum were skipped (--skip-invalid-size-inputs-valid-"
            "test), or a batch was dropped (use --required-batch-size-multiple 1, the default)"
        )
    names = [k for k, v in batches[0].items() if isinstance(v, Tensor) and k != "id"]
    tensors = {k: torch.cat([b[k] for b in batches])[order] for k in names}

    def texts(key):
        flat = [text for b in batches for text in b[key]]
        return [flat[i] for i in order.tolist()]

    return Columns(
        ids=kept,
        tensors=tensors,
        refs=texts("refs"),
        hyps=texts("hyps") if batches[0]["hyps"] is not None else None,
        batch_mi=[(b["mi"], len(b["id"])) for b in batches if "mi" in b],
    )


@torch.no_grad()
def evaluate(cfg, args, model, task, saved_cfg) -> dict:
    """Runs every metric on ``cfg.dataset.gen_subset``; returns the report as a dict."""
    split = cfg.dataset.gen_subset
    dataset, itr = batch_iterator(
        task,
        model,
        split,
        max_tokens=cfg.dataset.max_tokens,
        batch_size=cfg.dataset.batch_size,
        seed=cfg.common.seed,
        skip_invalid=cfg.dataset.skip_invalid_size_inputs_valid_test,
        num_workers=cfg.dataset.num_workers,
        batch_size_multiple=cfg.dataset.required_batch_size_multiple,
        saved_task_cfg=saved_cfg.task,
    )
    # labels first: a malformed file should fail before the long pass, not after it
    labels = read_labels(args.labels, sentences=len(dataset)) if args.labels else None
    device = "cuda" if next(model.parameters()).is_cuda else "cpu"
    prior = None
    # --prior-file is the text_vae task's option; a prior of another model is refused here,
    # before the long pass
    if getattr(args, "prior_file", None):
        prior = load_prior(
            args.prior_file, expected_model=model, expected_checkpoint=cfg.common_eval.path
        )
        prior.to(device)
    dictionary = task.target_dictionary
    detok = build_detokenizer(cfg, args, dictionary)
    generator = None if args.no_bleu else greedy_generator(cfg, task, model)
    progress = progress_bar.progress_bar(
        itr,
        log_format=cfg.common.log_format,
        log_interval=cfg.common.log_interval,
        prefix=f"vae-eval on '{split}'",
        default_log_format="tqdm" if not cfg.common.no_progress_bar else "simple",
    )
    conditional = getattr(model.encoder, "conditional", False)  # bart_cvae: evaluate_pairs.py
    if conditional:
        batches = conditional_iw_pass(
            model, progress, args, detok, generator, cfg.common.seed, prior
        )
    else:
        batches = iw_pass(model, progress, args, detok, generator, cfg.common.seed, prior)
    cols = in_corpus_order(batches, evaluable_ids(dataset), split)
    skipped = len(dataset) - len(cols)
    if skipped:
        logger.warning(f"{skipped} empty or over-long sentences of {split!r} are not evaluated")

    report = {
        "settings": report_settings(cfg, args, cols, dictionary, detok, skipped, device),
        "metrics": latent_metrics(cols, args.mi_pool, args.au_threshold),
    }
    if conditional:
        report["metrics"]["info_beyond_source"] = info_beyond_source(cols)
        n = getattr(args, "latent_samples", 1)  # the text_vae task's option
        if n > 1:
            greedy = greedy_generator(cfg, task, model)
            report["conditional"] = conditional_metrics(
                cols, model, dataset, greedy, detok, n, cfg.common.seed, prior
            )
    if prior is not None:
        report["metrics"]["prior_file"] = prior_file_metrics(cols, args.prior_file, prior)
    if cols.hyps is not None:
        metrics, report["examples"] = reconstruction_metrics(cols.hyps, cols.refs)
        report["metrics"].update(metrics)
    if labels is not None:
        labels = {name: [values[i] for i in cols.ids] for name, values in labels.items()}
        report["factors"] = probe_factors(cols.tensors["mu"].numpy(), labels, cfg.common.seed)
    if getattr(args, "prior_samples", 0):
        # --prior-samples is the text_vae task's option (fairseq-generate's count); here it asks
        # for the prior-sample evaluation, against the split's own sentences
        real_rows = [dataset.src[i].long() for i in cols.ids]
        report["prior_samples"] = evaluate_prior_samples(
            task, model, cfg, args, detok, real_rows, cols.refs, prior
        )
    return report


def main(cfg, args, override_args=None):
    if cfg.dataset.max_tokens is None and cfg.dataset.batch_size is None:
        raise ValueError("set --max-tokens or --batch-size")
    use_cuda = torch.cuda.is_available() and not cfg.common.cpu
    if use_cuda:
        torch.cuda.set_device(cfg.distributed_training.device_id)
    utils.set_torch_seed(cfg.common.seed)
    overrides = vars(override_args) if override_args is not None else {}
    overrides.update(parse_model_overrides(getattr(override_args, "model_overrides", None)))
    logger.info(f"loading {cfg.common_eval.path}")
    model, saved_cfg, task = load_checkpoint(
        cfg.common_eval.path, overrides, use_cuda=use_cuda, fp16=cfg.common.fp16
    )
    start = time.time()
    report = evaluate(cfg, args, model, task, saved_cfg)
    report["settings"]["seconds"] = round(time.time() - start, 1)
    print(format_report(report), flush=True)
    if "conditional" in report:
        print("\n".join(format_conditional(report["conditional"])), flush=True)
    if "prior_samples" in report:
        print("\n".join(format_prior_samples(report["prior_samples"])), flush=True)
    if args.results_json:
        with open(args.results_json, "w", encoding="utf-8") as f:
            # an overflowing perplexity is inf, written as Infinity: Python's json (and so
            # json.load of this file) reads it back as inf; strict JSON parsers refuse it
            json.dump(report, f, indent=2, allow_nan=True)
        logger.info(f"wrote {args.results_json}")
    return report


def cli_main():
    cli_logging()
    parser = get_parser()
    args = options.parse_args_and_arch(parser)
    # as fairseq-validate: what is given explicitly on the command line overrides the
    # checkpoint's options (the data folder above all)
    override_args = options.parse_args_and_arch(get_parser(), suppress_defaults=True)
    main(convert_namespace_to_omegaconf(args), args, override_args)


if __name__ == "__main__":
    cli_main()
