"""The prior-sample evaluation of ``fairseq-vae-eval --prior-samples N``: how good the sentences
decoded from z ~ prior are, for N(0, I) and, with ``--prior-file``, the fitted prior.

Step by step, each a function below:

1. ``draw_latents``: N draws of z, ``prior.sample(N, torch.Generator().manual_seed(--seed))``,
   the same draws as the hub's ``sample(N, seed, prior)`` and ``fairseq-generate
   --latent-source prior --prior-file F --seed``;
2. ``decode``: each z decoded twice, by ancestral sampling (temperature 1, no top-k or top-p)
   and greedily, with fairseq's own search (the eval's generation options, such as
   ``--max-len-b``, apply; fairseq never emits an empty sentence, min_len 1);
3. ``text_measures``: for the samples and for N real sentences of the evaluated split (a seeded
   choice), the measures of ``fairseq_vae.metrics.sample_quality``: distinct-1/2/3 (corpus-level),
   self-BLEU-4, the share that copies a training sentence and, with ``--sample-grammar synth``,
   the share the shipped corpus's grammar generates and each factor's total variation from the
   training split's distribution; self-BLEU of a single sentence (a one-sentence split's real
   row) and distinct-n of sentences without an n-gram are undefined: "n/a" in the table,
   null in the JSON;
4. fluency: the per-word perplexity of the samples under a reference language model
   (``--lm-path``, a fairseq transformer_lm on the same dictionary) against its perplexity on
   the real sentences;
5. ``decode_lm``: the reference LM's own N ancestral samples, measured in the same way (their
   LM PPL is the LM's on its own samples), the row a VAE's prior samples would match if its
   decoder and prior were as good a language model as the LM.
"""

import copy
import logging
import os
import random
from typing import Dict, List, Optional, Sequence

import torch
from fairseq import utils
from fairseq.data import data_utils
from omegaconf import open_dict

from fairseq_vae.latent_space.prior import Prior, StandardNormalPrior
from fairseq_vae.metrics import sample_quality as sq
from fairseq_vae.models.hub_interface import generate_from_latents

logger = logging.getLogger("fairseq_vae.metrics.prior_samples")

DECODINGS = {
    "ancestral": "ancestral sampling (temperature 1, no top-k or top-p)",
    "greedy": "greedy decoding",
}
GRAMMARS = ("synth",)
DISTINCT_ORDERS = (1, 2, 3)
EXAMPLES = 5
UNDEFINED = "n/a"


def draw_latents(prior: Prior, n: int, seed: int) -> torch.Tensor:
    """z_1..z_n from the prior, fixed by the seed alone (the hub's and fairseq-generate's)."""
    return prior.sample(n, generator=torch.Generator().manual_seed(seed))  # CPU: cpu_normal


def decoding_config(generation_cfg, decoding: str):
    """The eval's generation options with one hypothesis of the chosen decoding."""
    if decoding not in DECODINGS:
        raise ValueError(f"unknown decoding {decoding!r}: choose from {list(DECODINGS)}")
    cfg = copy.deepcopy(generation_cfg)
    with open_dict(cfg):
        cfg.beam, cfg.nbest = 1, 1
        cfg.sampling = decoding == "ancestral"
        cfg.sampling_topk, cfg.sampling_topp, cfg.temperature = -1, -1.0, 1.0
    return cfg


@torch.no_grad()
def decode(task, model, generation_cfg, z, decoding: str, seed: int, batch_size: int = 64):
    """Token rows (ending in </s>, on the CPU) decoded from each latent; the word draws of
    ancestral sampling are fixed by the seed (the global random state is restored after)."""
    generator = task.build_generator([model], decoding_config(generation_cfg, decoding))
    device = next(model.parameters()).device
    with utils.set_torch_seed(seed):
        hypos = generate_from_latents(generator, model, z.to(device).float(), batch_size)
    return [h[0]["tokens"].cpu().long() for h in hypos]


@torch.no_grad()
def decode_lm(lm, generation_cfg, n: int, seed: int, batch_size: int = 64):
    """n sentences drawn from a fairseq language model by ancestral sampling (temperature 1,
    no top-k or top-p), each started from </s> as fairseq-eval-lm scores them and at most the
    eval's --max-len-b tokens long: token rows ending in </s>, on the CPU, fixed by the seed."""
    from fairseq import search
    from fairseq.sequence_generator import SequenceGenerator

    dictionary = lm.decoder.dictionary
    generator = SequenceGenerator(
        [lm],
        dictionary,
        beam_size=1,
        max_len_a=0,
        max_len_b=generation_cfg.max_len_b,
        min_len=1,
        search_strategy=search.Sampling(dictionary, sampling_topk=-1, sampling_topp=-1.0),
    )
    device = next(lm.parameters()).device
    rows = []
    with utils.set_torch_seed(seed):
        for start in range(0, n, batch_size):
            bsz = min(batch_size, n - start)
            src = torch.full((bsz, 1), dictionary.eos(), dtype=torch.long, device=device)
            sample = {"net_input": {"src_tokens": src, "src_lengths": torch.zeros_like(src[:, 0])}}
            hypos = generator.generate([lm], sample)
            rows += [h[0]["tokens"].cpu().long() for h in hypos]
    return rows


def read_split_rows(data: str, split: str, dictionary) -> List[torch.Tensor]:
    """Every binarised sentence of a split (with its </s>), as fairseq-preprocess wrote it."""
    path = os.path.join(data, split)
    dataset = data_utils.load_indexed_dataset(path, dictionary)
    if dataset is None:
        raise FileNotFoundError(f"split {split!r} not found: no {path}.bin/.idx")
    return [dataset[i].long() for i in range(len(dataset))]


def self_bleu_or_none(sentences: Sequence[str]) -> Optional[float]:
    """Self-BLEU-4, None (undefined) for a single sentence, which has no others to score it
    against (a one-sentence split gives one real sentence)."""
    if len(sentences) < 2:
        return None
    return sq.self_bleu(sentences)


def text_measures(
    sentences: Sequence[str],
    training: Sequence[str],
    grammar_reference: Optional[Dict[str, Dict[str, int]]] = None,
) -> dict:
    """The text measures of a set of sentences: distinct-n, self-BLEU-4, memorised, mean length
    and, given the training split's factor counts, grammatical share and factor TV. A measure
    undefined on these sentences is None (``sample_quality.distinct_or_none``,
    ``self_bleu_or_none``)."""
    out = {
        "n": len(sentences),
        "mean_words": sum(len(s.split()) for s in sentences) / len(sentences),
    }
    for n in DISTINCT_ORDERS:
        out[f"distinct_{n}"] = sq.distinct_or_none(sentences, n)
    out["self_bleu4"] = self_bleu_or_none(sentences)
    out["memorised"] = sq.memorised(sentences, training)
    out["grammatical"] = out["factor_tv"] = None
    if grammar_reference is not None:
        from fairseq_vae.synth import grammar as synth_grammar

        out["grammatical"] = synth_grammar.grammatical_share(list(sentences))
        counts = synth_grammar.factor_distribution(sentences)
        if all(sum(c.values()) for c in counts.values()):
            out["factor_tv"] = sq.factor_tv(counts, grammar_reference)
    return out


def lm_ppl(lm, rows: Sequence[torch.Tensor], texts: Sequence[str]) -> float:
    """Per-word perplexity (whitespace words + 1 per sentence) of rows under the LM."""
    words = sum(len(t.split()) + 1 for t in texts)
    return sq.lm_perplexity_of_rows(lm, rows, words)


def evaluate_prior_samples(
    task, model, cfg, args, detok, real_rows, real_texts, prior=None
) -> dict:
    """The prior-sample section of the report. ``real_rows``/``real_texts``: the evaluated
    split's sentences (token rows with </s>, detokenised text); ``prior``: a fitted prior
    evaluated beside N(0, I). Its rows: each prior and decoding, then, with an LM, the LM's
    own samples (prior "lm")."""
    n, seed, generation_cfg = args.prior_samples, cfg.common.seed, cfg.generation
    if n < 2:
        raise ValueError(f"--prior-samples must be at least 2 (self-BLEU), got {n}")
    data = utils.split_paths(task.cfg.data)[0]  # valid and test come from the first folder
    dictionary = task.target_dictionary
    logger.info(f"reading the training split of {data} (memorisation)")
    training = [detok(r) for r in read_split_rows(data, "train", dictionary)]
    grammar_reference = None
    if args.sample_grammar == "synth":
        from fairseq_vae.synth import grammar as synth_grammar

        grammar_reference = synth_grammar.factor_distribution(training)
    lm = None
    if args.lm_path:
        device = next(model.parameters()).device
        lm, _ = sq.load_lm(args.lm_path, data=data, dictionary=dictionary, device=device)

    chosen = sorted(random.Random(seed).sample(range(len(real_texts)), min(n, len(real_texts))))
    real = text_measures([real_texts[i] for i in chosen], training, grammar_reference)
    real["lm_ppl"] = None
    if lm is not None:
        real["lm_ppl"] = lm_ppl(lm, [real_rows[i] for i in chosen], [real_texts[i] for i in chosen])

    priors = [StandardNormalPrior(model.encoder.latent_dim)]
    if prior is not None:
        priors.append(prior)
    rows = []
    for p in priors:
        z = draw_latents(p, n, seed)
        for decoding in DECODINGS:
            logger.info(f"decoding {n} samples of the {p.kind} prior ({decoding})")
            tokens = decode(task, model, generation_cfg, z, decoding, seed)
            texts = [detok(t) for t in tokens]
            row = {"prior": p.kind, "decoding": decoding}
            row.update(text_measures(texts, training, grammar_reference))
            row["lm_ppl"] = lm_ppl(lm, tokens, texts) if lm is not None else None
            row["lm_ppl_ratio"] = row["lm_ppl"] / real["lm_ppl"] if lm is not None else None
            row["samples"] = texts
            rows.append(row)
    if lm is not None:
        logger.info(f"drawing {n} sentences from the LM (ancestral)")
        tokens = decode_lm(lm, generation_cfg, n, seed)
        texts = [detok(t) for t in tokens]
        row = {"prior": "lm", "decoding": "ancestral"}
        row.update(text_measures(texts, training, grammar_reference))
        row["lm_ppl"] = lm_ppl(lm, tokens, texts)
        row["lm_ppl_ratio"] = row["lm_ppl"] / real["lm_ppl"]
        row["samples"] = texts
        rows.append(row)
    return {
        "n": n,
        "seed": seed,
        "lm_path": args.lm_path,
        "grammar": args.sample_grammar,
        "decodings": DECODINGS,
        "distinct": "corpus-level: distinct n-grams / all n-grams over all sentences",
        "real": real,
        "rows": rows,
    }


def format_prior_samples(section: dict) -> List[str]:
    """The section's table: one row per (prior, decoding), then the real sentences."""

    def fmt(value, spec):
        return "-" if value is None else format(value, spec)

    def defined(value, spec):
        # distinct-n and self-BLEU are never left out, only undefined on too few tokens
        return UNDEFINED if value is None else format(value, spec)

    lines = [
        f"prior samples | {section['n']} per prior and decoding, seed {section['seed']}; "
        f"distinct-n {section['distinct']}; self-BLEU-4 over up to {sq.SELF_BLEU_SENTENCES}; "
        f"LM {section['lm_path'] or '(none: --lm-path)'}",
        f"{'prior':<10}{'decoding':<11}{'LM PPL':>9}{'x real':>8}{'dist-1':>8}{'dist-2':>8}"
        f"{'dist-3':>8}{'self-BLEU':>10}{'memorised':>10}{'words':>7}{'grammatical':>12}",
    ]
    entries = [(r["prior"], r["decoding"], r) for r in section["rows"]]
    entries.append(
        (
            "real",
            "-",
            dict(section["real"], lm_ppl_ratio=1.0 if section["real"]["lm_ppl"] else None),
        )
    )
    for prior, decoding, r in entries:
        lines.append(
            f"{prior:<10}{decoding:<11}{fmt(r['lm_ppl'], '.2f'):>9}"
            f"{fmt(r['lm_ppl_ratio'], '.3f'):>8}"
            f"{defined(r['distinct_1'], '.3f'):>8}{defined(r['distinct_2'], '.3f'):>8}"
            f"{defined(r['distinct_3'], '.3f'):>8}{defined(r['self_bleu4'], '.2f'):>10}"
            f"{100 * r['memorised']:>9.1f}%{r['mean_words']:>7.1f}"
            f"{fmt(None if r['grammatical'] is None else 100 * r['grammatical'], '.1f'):>11}%"
        )
        if r.get("factor_tv"):
            tv = ", ".join(f"{k} {v:.3f}" for k, v in r["factor_tv"].items())
            lines.append(f"{'':<21}factor TV from train: {tv}")
    measures = ("distinct_1", "distinct_2", "distinct_3", "self_bleu4")
    if any(r[k] is None for _, _, r in entries for k in measures):
        lines.append(
            f"{UNDEFINED}: undefined (self-BLEU of one sentence, distinct-n without an n-gram)"
        )
    for r in section["rows"]:
        for s in r["samples"][:EXAMPLES]:
            lines.append(f"sample | {r['prior']} {r['decoding']} | {s}")
    return lines
