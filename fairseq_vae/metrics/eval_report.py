"""The report of ``fairseq-vae-eval``: its metrics as functions of the per-sentence columns that
the pass over a split collects (``fairseq_vae.cli.evaluate``), and the table the command prints.

Pure functions of CPU tensors and strings: a later evaluation (prior samples, transfer) adds a
function here and a step in ``evaluate()``.
"""

import math
from dataclasses import dataclass
from typing import Dict, List, Optional, Tuple

from torch import Tensor

from fairseq_vae.metrics.estimators import active_units, mutual_information


@dataclass
class Columns:
    """What the pass over a split collects, one entry per sentence.

    ``tensors`` holds N-row CPU tensors: ``mu``, ``logvar``, ``z`` (the first IW sample),
    ``log_px`` (the IW estimate), ``log_px_z`` (at ``z``), ``kl`` and ``tokens``, and with a
    fitted prior ``prior_log_px`` and ``prior_kl`` (its IW estimate and Monte Carlo KL);
    ``refs`` the detokenised inputs, ``hyps`` their greedy reconstructions (None without BLEU);
    ``batch_mi`` the (MI, batch size) of each batch for ``--mi-pool batch``.
    """

    ids: List[int]
    tensors: Dict[str, Tensor]
    refs: List[str]
    hyps: Optional[List[str]]
    batch_mi: List[Tuple[float, int]]

    def __len__(self):
        return len(self.ids)


def batch_columns(sample, mu: Tensor, logvar: Tensor, iw, kl: Tensor, pad: int) -> dict:
    """One batch's share of ``Columns.tensors`` (CPU), and its ``id``, from the pass's parts:
    the posterior, the IW estimates (``estimators.IWEstimates``) and the KL per sentence."""
    return {
        "id": sample["id"].cpu(),
        "mu": mu.cpu(),
        "logvar": logvar.cpu(),
        "z": iw.z1.float().cpu(),
        "log_px": iw.log_px.cpu(),
        "log_px_z": iw.log_px_z1.cpu(),
        "kl": kl.sum(dim=-1).cpu(),
        "tokens": sample["target"].ne(pad).sum(dim=-1).cpu(),
    }


def perplexity(nats: float, units: int) -> float:
    """exp(nats / units); inf above what a double holds (~709.78 nats per unit), as fairseq's
    logging reports it, so an untrained or diverged model still gets its report."""
    try:
        return math.exp(nats / units)
    except OverflowError:
        return math.inf


def mean_pool_size(cols: Columns, mi_pool: str) -> float:
    """Sentences in the aggregate posterior of the MI: the split, or a batch on average."""
    return float(len(cols)) if mi_pool == "dataset" else len(cols) / len(cols.batch_mi)


def units(cols: Columns) -> Tuple[int, int]:
    """(tokens, words) of the split: the perplexities' denominators."""
    n_word = sum(len(ref.split()) + 1 for ref in cols.refs)  # +1: the end of sentence
    return int(cols.tensors["tokens"].sum()), n_word


def latent_metrics(cols: Columns, mi_pool: str, au_threshold: float) -> dict:
    """IW-NLL, -ELBO, KL and their perplexities, MI and AU from the columns.

    On one sentence MI and AU are None (undefined): the one posterior is the whole aggregate
    posterior, and the unbiased variance of one value divides by zero.
    """
    t = cols.tensors
    n_sent, (n_tok, n_word) = len(cols), units(cols)
    nll_iw = -t["log_px"].double().sum().item()  # nats, summed over sentences
    neg_elbo = (t["kl"] - t["log_px_z"]).double().sum().item()
    mi = au = au_var = None
    if n_sent >= 2:
        au, variances = active_units(t["mu"], au_threshold)
        au_var = [round(v, 6) for v in variances.tolist()]
        if mi_pool == "dataset":
            mi = mutual_information(t["mu"], t["logvar"], t["z"])
        else:
            mi = sum(m * n for m, n in cols.batch_mi) / n_sent
    return {
        "iw_nll": nll_iw / n_sent,
        "iw_ppl_token": perplexity(nll_iw, n_tok),
        "iw_ppl_word": perplexity(nll_iw, n_word),
        "neg_elbo": neg_elbo / n_sent,
        "rec_nll": -t["log_px_z"].double().sum().item() / n_sent,
        "kl": t["kl"].double().mean().item(),
        "elbo_ppl_token": perplexity(neg_elbo, n_tok),
        "elbo_ppl_word": perplexity(neg_elbo, n_word),
        "mi": mi,
        "mi_upper_bound": math.log(mean_pool_size(cols, mi_pool)),
        "au": au,
        "au_variances": au_var,
    }


def prior_file_metrics(cols: Columns, path: str, prior) -> dict:
    """The fitted prior's numbers from the same samples as the N(0, I) ones: the IW-NLL of the
    model p'(z) p(x|z) and its perplexities, KL(q(z|x) || p') by Monte Carlo (mean over
    sentences), and the -ELBO that KL gives with the one-sample reconstruction."""
    t = cols.tensors
    n_sent, (n_tok, n_word) = len(cols), units(cols)
    nll_iw = -t["prior_log_px"].double().sum().item()
    kl = t["prior_kl"].double().mean().item()
    return {
        "path": path,
        "kind": prior.kind,
        "fitted_to": prior.meta.get("checkpoint"),
        "iw_nll": nll_iw / n_sent,
        "iw_ppl_token": perplexity(nll_iw, n_tok),
        "iw_ppl_word": perplexity(nll_iw, n_word),
        "kl_mc": kl,
        "neg_elbo": kl - t["log_px_z"].double().mean().item(),
    }


def reconstruction_metrics(hyps: List[str], refs: List[str]) -> Tuple[dict, List[dict]]:
    """(metrics, examples): sacrebleu's corpus BLEU of the reconstructions against the inputs,
    the share of exact reconstructions, and the first (at most) three pairs."""
    from sacrebleu.metrics import BLEU

    # the references are the corpus's own text; when it is written with spaces before
    # punctuation, sacrebleu's "forgot to detokenize?" warning is noise (force=True)
    bleu = BLEU(force=True)
    metrics = {
        "recon_bleu": bleu.corpus_score(hyps, [refs]).score,
        "recon_bleu_signature": str(bleu.get_signature()),
        "recon_exact": sum(h == r for h, r in zip(hyps, refs)) / len(refs),
    }
    examples = [{"input": r, "greedy": h} for r, h in zip(refs[:3], hyps[:3])]
    return metrics, examples


def report_settings(cfg, args, cols: Columns, dictionary, detok, skipped: int, device) -> dict:
    """The report's settings: what was evaluated, how, and what its units are."""
    return {
        "checkpoint": cfg.common_eval.path,
        "data": cfg.task.data,
        "split": cfg.dataset.gen_subset,
        "sentences": len(cols),
        "skipped": skipped,
        "tokens": int(cols.tensors["tokens"].sum()),
        "words": sum(len(ref.split()) + 1 for ref in cols.refs),
        "iw_samples": args.iw_samples,
        "iw_chunk": args.iw_chunk,
        "mi_pool": args.mi_pool,
        "mi_pool_mean_size": mean_pool_size(cols, args.mi_pool),
        "au_threshold": args.au_threshold,
        "latent_dim": int(cols.tensors["mu"].size(1)),
        "token_unit": f"target symbol of the model's dictionary ({len(dictionary)} types), "
        "incl. the end-of-sentence </s>",
        "word_unit": "whitespace word of the detokenised sentence, +1 per sentence "
        "for the end of sentence",
        "detokenizer": detok.describe(),
        "elbo_and_mi_sample": "one posterior sample per sentence (the first IW sample)",
        "reconstruction": "greedy decoding from the posterior mean",
        "seed": cfg.common.seed,
        "max_tokens": cfg.dataset.max_tokens,
        "batch_size": cfg.dataset.batch_size,
        "device": device,
        "fp16": bool(cfg.common.fp16),
    }


def format_report(report: dict) -> str:
    """The table the command prints."""
    s, m = report["settings"], report["metrics"]
    lines = [
        f"fairseq-vae-eval | {s['checkpoint']} on {s['split']!r} of {s['data']}: "
        f"{s['sentences']} sentences, {s['tokens']} tokens, {s['words']} words"
        + (f" ({s['skipped']} empty or over-long sentences skipped)" if s["skipped"] else ""),
        f"settings | IW samples K={s['iw_samples']} (chunks of {s['iw_chunk']}) | MI pool="
        f"{s['mi_pool']} ({s['mi_pool_mean_size']:.1f} sentences) | AU threshold="
        f"{s['au_threshold']} | seed={s['seed']} | {s['device']}{' fp16' if s['fp16'] else ''}"
        + (f" | {s['seconds']} s" if "seconds" in s else ""),
        f"units | token: {s['token_unit']}; word: {s['word_unit']} ({s['detokenizer']})",
        f"units | NLL, ELBO, KL and MI in nats per sentence; -ELBO and MI from "
        f"{s['elbo_and_mi_sample']}",
    ]
    p = m.get("prior_file")
    if p is not None:
        lines.append(
            f"prior file | {p['kind']} prior {p['path']}: IW-NLL and KL under it from the same "
            "samples, KL by Monte Carlo"
        )
    undefined = "undefined (one sentence)"
    mi = undefined
    if m["mi"] is not None:
        mi = f"{m['mi']:.3f}  (at most log pool = {m['mi_upper_bound']:.3f})"
    rows = [
        ("IW-NLL", f"{m['iw_nll']:.3f}"),
        ("IW PPL / token", f"{m['iw_ppl_token']:.3f}"),
        ("IW PPL / word", f"{m['iw_ppl_word']:.3f}"),
        ("-ELBO", f"{m['neg_elbo']:.3f}"),
        ("  reconstruction NLL", f"{m['rec_nll']:.3f}"),
        ("  KL", f"{m['kl']:.3f}"),
        ("ELBO PPL / token", f"{m['elbo_ppl_token']:.3f}"),
        ("ELBO PPL / word", f"{m['elbo_ppl_word']:.3f}"),
    ]
    if p is not None:
        own = "p(z|c)" if "info_beyond_source" in m else "N(0, I)"
        rows += [
            # the model's own prior: bart_cvae's p(z|c) (the fitted one is of (z - mu_p) / sigma_p)
            (f"IW-NLL, {p['kind']} prior", f"{p['iw_nll']:.3f}  ({own}: {m['iw_nll']:.3f})"),
            (f"IW PPL / token, {p['kind']} prior", f"{p['iw_ppl_token']:.3f}"),
            (f"IW PPL / word, {p['kind']} prior", f"{p['iw_ppl_word']:.3f}"),
            (f"-ELBO, {p['kind']} prior", f"{p['neg_elbo']:.3f}"),
            (f"  KL, {p['kind']} prior", f"{p['kl_mc']:.3f}  (Monte Carlo, K={s['iw_samples']})"),
        ]
    if "info_beyond_source" in m:  # bart_cvae (cli/evaluate_pairs.py)
        rows.append(("log p(x|z_q,c) - log p(x|z_p,c)", f"{m['info_beyond_source']:.3f}"))
    rows += [
        ("MI", mi),
        ("AU", undefined if m["au"] is None else f"{m['au']} / {s['latent_dim']}"),
    ]
    if "recon_bleu" in m:
        rows.append(("reconstruction BLEU", f"{m['recon_bleu']:.2f}  ({s['reconstruction']})"))
        rows.append(("  exact reconstructions", f"{100 * m['recon_exact']:.1f}%"))
    for name, f in report.get("factors", {}).items():
        if f["accuracy"] is None:
            rows.append((f"probe accuracy: {name}", undefined))
            continue
        rows.append(
            (
                f"probe accuracy: {name}",
                f"{f['accuracy']:.3f}  (majority {f['majority_baseline']:.3f}, "
                f"{f['classes']} classes, train {f['train']} / test {f['test']}, "
                f"{f['split']} split)",
            )
        )
    width = max(len(name) for name, _ in rows) + 2
    lines.append(f"{'metric':<{width}}value")
    lines += [f"{name:<{width}}{value}" for name, value in rows]
    return "\n".join(lines)
