"""What the commands share: a checkpoint loaded for evaluation, a split's batches and its
posterior means in corpus order, --model-overrides read as a literal, and fairseq's log format
on stderr."""

import ast
import logging
import os
import sys
from typing import List, Optional

import torch
from fairseq import checkpoint_utils, utils

DEFAULT_MAX_TOKENS = 1024


def load_checkpoint(path: str, overrides: Optional[dict] = None, use_cuda=False, fp16=False):
    """(model, saved_cfg, task) of a bart_vae checkpoint, in eval mode on the chosen device."""
    models, saved_cfg, task = checkpoint_utils.load_model_ensemble_and_task(
        utils.split_paths(path), arg_overrides=overrides
    )
    if len(models) != 1:
        raise ValueError("fairseq-vae-eval evaluates one model, not an ensemble")
    model = models[0]
    if not hasattr(model.encoder, "posterior"):
        raise ValueError(f"{path} is not a bart_vae checkpoint (its encoder has no posterior)")
    model.eval()
    if fp16:
        model.half()
    if use_cuda:
        model.cuda()
    return model, saved_cfg, task


def batch_iterator(
    task,
    model,
    split: str,
    max_tokens: Optional[int] = DEFAULT_MAX_TOKENS,
    batch_size: Optional[int] = None,
    seed: int = 1,
    skip_invalid: bool = False,
    num_workers: int = 0,
    batch_size_multiple: int = 1,
    saved_task_cfg=None,
):
    """(dataset, iterator) over the split's batches in fairseq's usual (length-sorted) order.

    fairseq drops the last batch when its size is not a multiple of ``batch_size_multiple``
    (DESIGN.md): keep it 1 so that every sentence is evaluated.
    """
    task.load_dataset(split, combine=False, epoch=1, task_cfg=saved_task_cfg)
    dataset = task.dataset(split)
    itr = task.get_batch_iterator(
        dataset=dataset,
        max_tokens=max_tokens,
        max_sentences=batch_size,
        max_positions=utils.resolve_max_positions(task.max_positions(), model.max_positions()),
        ignore_invalid_inputs=skip_invalid,
        required_batch_size_multiple=batch_size_multiple,
        seed=seed,
        num_workers=num_workers,
    ).next_epoch_itr(shuffle=False)
    return dataset, itr


def evaluable_ids(dataset) -> List[int]:
    """The sentence ids (line numbers - 1) the dataset will batch, in corpus order.

    The text_vae task leaves empty and over-long sentences out of ``ordered_indices`` (with a
    warning) while ids stay line numbers, so labels still line up by id.
    """
    return sorted(int(i) for i in dataset.ordered_indices())


@torch.no_grad()
def posterior_means(model, task, split: str, progress=None, **iterator_args):
    """(mu, logvar, ids) of a split's sentences in corpus order, on the CPU. mu and logvar are
    N x D; ids (N) are the sentences' line numbers - 1, which differ from 0..N-1 only when the
    task skipped empty or over-long sentences. ``progress`` wraps the batches (a progress bar).
    For bart_cvae (pairs): q(z|c, x) standardised by p(z|c), the space of its fitted priors."""
    use_cuda = next(model.parameters()).is_cuda
    dataset, itr = batch_iterator(task, model, split, **iterator_args)
    ids, mus, logvars = [], [], []
    for sample in progress(itr) if progress else itr:
        sample = utils.move_to_cuda(sample) if use_cuda else sample
        if not sample:
            continue
        net = sample["net_input"]
        if getattr(model.encoder, "conditional", False):
            mu, logvar = model.encoder.standardised_posterior(
                net["src_tokens"], net["src_lengths"], net["tgt_tokens"], net["tgt_lengths"]
            )
        else:
            mu, logvar = model.encoder.posterior(net["src_tokens"], net["src_lengths"])
        ids.append(sample["id"].cpu())
        mus.append(mu.cpu())
        logvars.append(logvar.cpu())
    ids = torch.cat(ids)
    order = torch.argsort(ids)
    if ids[order].tolist() != evaluable_ids(dataset):
        raise RuntimeError(f"encoded {len(order)} of the {len(dataset)} sentences of {split!r}")
    return torch.cat(mus)[order], torch.cat(logvars)[order], ids[order]


def parse_model_overrides(text: Optional[str]) -> dict:
    """--model-overrides as fairseq-generate reads it: a Python dict literal, never code."""
    example = "\"{'dropout': 0.1}\""
    try:
        overrides = ast.literal_eval(text or "{}")
    except (ValueError, SyntaxError, TypeError) as e:
        raise ValueError(
            f"--model-overrides must be a Python dict literal such as {example}, "
            f"got {text!r} ({type(e).__name__}: {e})"
        ) from None
    if not isinstance(overrides, dict):
        raise ValueError(
            f"--model-overrides must be a dict such as {example}, got the "
            f"{type(overrides).__name__} {text!r}"
        )
    return overrides


def cli_logging():
    """fairseq's log format on stderr (stdout carries the report only), for our commands."""
    logging.basicConfig(
        format="%(asctime)s | %(levelname)s | %(name)s | %(message)s",
        datefmt="%Y-%m-%d %H:%M:%S",
        level=os.environ.get("LOGLEVEL", "INFO").upper(),
        stream=sys.stderr,
        force=True,  # fairseq's imports have configured the root logger already
    )
