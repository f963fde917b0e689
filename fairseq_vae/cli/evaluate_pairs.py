"""fairseq-vae-eval on a paired split (a bart_cvae checkpoint): the measures of evaluate.py with
the source beside z, and what several latents per source give.

* IW-NLL is of log p(x|c) = log E_q[p(x|z, c) p(z|c) / q(z|c, x)] with K samples of
  q(z|c, x) (``iw_estimates`` with the prior's parameters and the source in the memory);
  PPL per token and per word of the targets; -ELBO and KL(q(z|c, x) || p(z|c)) in closed form;
  MI, the usual estimator over the split's posteriors (what z holds of the pair); AU of the
  posterior means;
* ``info_beyond_source``: what z adds beyond c, the mean over pairs of
  log p(x|z_q, c) - log p(x|z_p, c) with one z_q ~ q(z|c, x) and one z_p ~ p(z|c), in nats
  a sentence: 0 when the decoder ignores z or the posterior learns nothing the prior does not
  already say from the source;
* reconstruction BLEU: greedy decoding from q(z|c, x)'s mean beside c, against the target;
* with ``--latent-samples N``: N latents of p(z|c) per distinct source (latent_draws, the
  draws of fairseq-generate), each decoded greedily, scored against the references of that
  source: every target the split pairs with the same source text (metrics/
  conditional_quality: multi-reference, precision- and recall-BLEU, self-BLEU, distinct-1/2,
  BLEU to the source).

With ``--prior-file`` (a density r fitted to the standardised latent, bart_cvae.standardised):
the IW-NLL and KL of p'(z|c) p(x|z, c) from the same samples, p'(z|c) the density of
mu_p(c) + sigma_p(c) * eps, eps ~ r; the several latents are then drawn from r.
"""

import copy
import functools
from typing import Dict, List

import torch
from fairseq import utils

from fairseq_vae.criterions.elbo import gaussian_kl
from fairseq_vae.metrics import conditional_quality as cq
from fairseq_vae.metrics.estimators import decoder_log_likelihood, iw_estimates, mutual_information
from fairseq_vae.metrics.eval_report import batch_columns
from fairseq_vae.models.bart_cvae import standardised_log_density
from fairseq_vae.models.latent import latent_draws


@torch.no_grad()
def conditional_iw_pass(
    model, progress, args, detok, generator, seed: int, prior=None
) -> List[dict]:
    """One dict per batch, as evaluate.iw_pass's (refs: the targets), with
    ``log_px_prior_z`` (log p(x|z_p, c)) besides; with a fitted ``prior`` of the standardised
    latent, its estimates from the same samples (``prior_log_px``, ``prior_kl``)."""
    encoder = model.encoder
    use_cuda = next(model.parameters()).is_cuda
    pad = model.decoder.dictionary.pad()
    draws = torch.Generator(device="cuda" if use_cuda else "cpu").manual_seed(seed)
    batches, done = [], 0
    latent_source, encoder.latent_source = encoder.latent_source, "mean"
    try:
        for step, sample in enumerate(progress):
            sample = utils.move_to_cuda(sample) if use_cuda else sample
            if not sample:
                continue
            net = sample["net_input"]
            states, mask, source_mean = encoder.source_context(
                net["src_tokens"], net["src_lengths"]
            )
            prior_mu, prior_logvar = encoder.prior(source_mean)
            mu, logvar = encoder.conditional_posterior(
                source_mean, net["tgt_tokens"], net["tgt_lengths"]
            )
            memory_of = encoder.encoder_out_for(states, mask, source_mean)
            log_prior = None
            if prior is not None:  # log p'(z|c) of the B x n x D samples
                log_prior = functools.partial(
                    standardised_log_density, prior.log_prob,
                    prior_mu=prior_mu[:, None], prior_logvar=prior_logvar[:, None],
                )  # fmt: skip
            iw = iw_estimates(
                model, mu, logvar, net["prev_output_tokens"], sample["target"], args.iw_samples,
                args.iw_chunk, generator=draws, prior=(prior_mu, prior_logvar),
                encoder_out_of=memory_of, log_prior=log_prior,
            )  # fmt: skip
            eps = torch.randn(mu.shape, generator=draws, device=mu.device)
            z_prior = prior_mu + torch.exp(0.5 * prior_logvar) * eps
            log_px_prior_z = decoder_log_likelihood(
                model, prior_mu, prior_logvar, z_prior, net["prev_output_tokens"],
                sample["target"], memory_of,
            )  # fmt: skip
            kl = gaussian_kl(mu, logvar, prior_mu, prior_logvar)
            batch = batch_columns(sample, mu, logvar, iw, kl, pad)
            if prior is not None:
                batch["prior_log_px"], batch["prior_kl"] = iw.prior_log_px.cpu(), iw.prior_kl.cpu()
            batch.update(
                log_px_prior_z=log_px_prior_z.cpu(),
                refs=[detok(tokens) for tokens in sample["target"]],
                hyps=None,
            )
            if args.mi_pool == "batch":
                batch["mi"] = mutual_information(mu, logvar, iw.z1)
            if generator is not None:  # the posterior mean beside the source (latent "mean")
                batch["hyps"] = [detok(h[0]["tokens"]) for h in generator.generate([model], sample)]
            batches.append(batch)
            done += len(batch["id"])
            progress.log({"sentences": done}, step=step)
    finally:
        encoder.latent_source = latent_source
    return batches


def info_beyond_source(cols) -> float:
    """Mean of log p(x|z_q, c) - log p(x|z_p, c) over the pairs, nats a sentence."""
    gap = cols.tensors["log_px_z"].double() - cols.tensors["log_px_prior_z"].double()
    return gap.mean().item()


def references_by_source(sources: List[str], targets: List[str]) -> Dict[str, List[str]]:
    """Every target the split pairs with each source text, in the split's order."""
    grouped: Dict[str, List[str]] = {}
    for source, target in zip(sources, targets):
        grouped.setdefault(source, []).append(target)
    return grouped


@torch.no_grad()
def several_latents(model, items: List[dict], generator, detok, n: int, seed: int, prior=None):
    """For each dataset item (its "id" and "source" tokens): n targets decoded greedily from
    n latents of p(z|c), the k-th fixed by (seed, id) as fairseq-generate's --latent-samples
    (with a fitted ``prior``, its draws of the standardised latent)."""
    encoder = model.encoder
    device = next(model.parameters()).device
    outputs = []
    for item in items:
        src = item["source"].long().to(device)[None]
        lengths = torch.tensor([src.size(1)], device=device)
        _, _, mean = encoder.source_context(src, lengths)
        prior_mu, prior_logvar = encoder.prior(mean)
        eps = latent_draws(seed, [int(item["id"])], n, encoder.latent_dim, prior).to(device)
        z = prior_mu + torch.exp(0.5 * prior_logvar) * eps  # n x D
        net_input = {"src_tokens": src.repeat(n, 1), "src_lengths": lengths.repeat(n), "z": z}
        sample = {"id": torch.arange(n, device=device), "net_input": net_input}
        outputs.append([detok(h[0]["tokens"]) for h in generator.generate([model], sample)])
    return outputs


def conditional_metrics(
    cols, model, dataset, generator, detok, n: int, seed: int, prior=None
) -> dict:
    """The --latent-samples measures over the split's distinct sources (the first pair of
    each gives its id, and so its draws; from a fitted ``prior`` with one)."""
    sources = [detok(dataset.src[i]) for i in cols.ids]
    grouped = references_by_source(sources, cols.refs)
    first_id: Dict[str, int] = {}
    for source, i in zip(sources, cols.ids):
        first_id.setdefault(source, i)
    items = [dataset[first_id[source]] for source in grouped]
    cpu_prior = None if prior is None else copy.deepcopy(prior).cpu()  # draws on the CPU
    outputs = several_latents(model, items, generator, detok, n, seed, cpu_prior)
    references = list(grouped.values())
    pr = cq.precision_recall_bleu(outputs, references)
    return {
        "latent_samples": n,
        "latent_prior": "p(z|c)" if prior is None else "the fitted prior",
        "sources": len(grouped),
        "references_per_source": sum(map(len, references)) / len(references),
        "multi_ref_bleu": cq.multi_reference_bleu(outputs, references),
        "precision_bleu": pr["precision"],
        "recall_bleu": pr["recall"],
        "self_bleu": cq.mean_self_bleu(outputs),
        "distinct_1": cq.distinct(outputs, 1),
        "distinct_2": cq.distinct(outputs, 2),
        "source_bleu": cq.source_bleu(outputs, list(grouped)),
        "examples": [
            {"source": s, "outputs": o, "references": r}
            for s, o, r in list(zip(grouped, outputs, references))[:5]
        ],
    }


def format_conditional(c: dict) -> List[str]:
    """The table rows of the --latent-samples measures."""
    return [
        f"latent samples | {c['latent_samples']} z from {c.get('latent_prior', 'p(z|c)')} for "
        f"each of {c['sources']} sources, greedy each; {c['references_per_source']:.2f} "
        "references a source",
        f"multi-reference BLEU  {c['multi_ref_bleu']:.2f}",
        f"precision / recall BLEU  {c['precision_bleu']:.2f} / {c['recall_bleu']:.2f}",
        f"self-BLEU among a source's outputs  {c['self_bleu']:.2f}",
        "distinct-1 / distinct-2  "
        + " / ".join(
            "n/a" if d is None else f"{d:.3f}" for d in (c["distinct_1"], c["distinct_2"])
        ),
        f"BLEU to the source  {c['source_bleu']:.2f}",
    ]
