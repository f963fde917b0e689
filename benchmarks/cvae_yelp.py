"""benchmarks/cvae.py --corpus yelp: Yelp sentences conditioned on their sentiment, the label
written as a one-word source ("positive", "negative"), and what the conditional model does
with it: samples under each label, and transfer by swapping the label. Part of the cvae study:
only cvae.py imports it.

The model starts from the Yelp BART that benchmarks/control.py fine-tunes (its --yelp-out
folder's denoising pretraining, run here if missing), on the pairs of every training sentence
with its label, binarised with that corpus's word-level dictionary. The reference LM and the
unconditional VAE are control.py's (harness.yelp_jobs): the LM scores the fluency of samples and
transfers, the VAE's IW-PPL and transfer curve (benchmarks/results/control.json) stand beside
the conditional model's.
"""

import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness  # noqa: E402

LABELS = ("positive", "negative")  # the labels' own words, each in Yelp's dictionary


def read_lines(path: str) -> list:
    with open(path, encoding="utf-8") as f:
        return [line.rstrip("\n") for line in f]


def read_split(yelp: str, split: str) -> tuple:
    """(sentences, their sentiment labels) of a split."""
    from fairseq_vae.metrics.estimators import read_labels

    texts = read_lines(os.path.join(yelp, f"{split}.txt"))
    path = os.path.join(yelp, f"{split}.labels.tsv")
    return texts, read_labels(path, len(texts))["sentiment"]


def yelp_paths(args, b: dict) -> tuple:
    """control.py's Yelp jobs (pretraining, LM, VAE, their evaluations) and folders."""
    return harness.control_yelp_jobs(args.yelp, args.yelp_out, args.pretrain_hours, b)


def write_pairs(args, raw: str):
    """raw/{split}.{src,tgt}: each sentence (tgt) with its label's word (src)."""
    os.makedirs(raw, exist_ok=True)
    for split in ("train", "valid", "test"):
        texts, labels = read_split(args.yelp, split)
        unknown = sorted(set(labels) - set(LABELS))
        if unknown:
            raise ValueError(f"{args.yelp}/{split}.labels.tsv: labels {unknown}, not {LABELS}")
        for side, lines in (("src", labels), ("tgt", texts)):
            with open(os.path.join(raw, f"{split}.{side}"), "w", encoding="utf-8") as f:
                f.writelines(line + "\n" for line in lines)


def data_jobs(args, b: dict) -> dict:
    """The pairs in out/data-bin/pairs, with Yelp's word-level dictionary, and the Yelp jobs
    the measurements need (named as control.py names them)."""
    jobs, paths = yelp_paths(args, b)
    raw, pairs = os.path.join(args.out, "raw"), os.path.join(args.out, "data-bin", "pairs")
    write_pairs(args, raw)
    vocab = os.path.join(paths["data"], "dict.txt")
    binarise = [os.path.join(harness.BIN, "fairseq-preprocess"), "--source-lang", "src",
                "--target-lang", "tgt", "--srcdict", vocab, "--tgtdict", vocab,
                "--trainpref", os.path.join(raw, "train"), "--validpref",
                os.path.join(raw, "valid"), "--testpref", os.path.join(raw, "test"),
                "--destdir", pairs, "--workers", "2"]  # fmt: skip
    return {
        "pairs": harness.train_job([binarise], os.path.join(args.out, "data.log")),
        "pretrain": jobs["pretrain yelp"],  # the start: control.py's Yelp BART
        "train yelp lm": jobs["train yelp lm"],
        "eval yelp lm": jobs["eval yelp lm"],
    }


def start_bart(args) -> str:
    return harness.yelp_bart(args.yelp_out)


# the unconditional VAE the conditional one was measured against (2026-12-07), and whose batches
# it trains in; control.py's default has moved on since (harness.CONTROL_YELP_SETTING)
UNCONDITIONAL = "BART init, fb 0.5, 1024 tokens"


def unconditional(args) -> dict:
    """The unconditional Yelp VAE of benchmarks/results/control.json (control.py's setting): its
    test IW-PPL, and its transfer points (accuracy, BLEU to the source, LM PPL ratio) on test."""
    path = os.path.join(harness.REPO, "benchmarks", "results", "control.json")
    found = {"model": UNCONDITIONAL, "iw_ppl_word": None, "transfer": []}
    if not os.path.isfile(path):
        return found
    for m in json.load(open(path))["measurements"]:
        if (m.get("corpus"), m.get("model")) == ("yelp", UNCONDITIONAL):
            found["iw_ppl_word"] = m.get("evaluation", {}).get("iw_ppl_word")
            keys = ("method", "strength", "accuracy", "source_bleu", "lm_ppl_ratio")
            found["transfer"] = [{k: r[k] for k in keys} for r in m["transfer"]]
    return found


def measure(args, b: dict, report: dict, setting: str) -> tuple:
    """(rows, transfer points, what they are compared with) of the conditional model:
    --label-samples samples a label from z ~ p(z|c), each greedy, against the real test
    sentences; every test sentence encoded with its own label and decoded under the other."""
    import torch

    from fairseq_vae.metrics import sample_quality as sq
    from fairseq_vae.metrics.transfer_quality import NgramJudge, source_bleu
    from fairseq_vae.models.bart_cvae import BARTCVAEModel

    _, paths = yelp_paths(args, b)
    train, train_labels = read_split(args.yelp, "train")
    test, test_labels = read_split(args.yelp, "test")
    judge = NgramJudge(train, train_labels, seed=harness.SEED)
    folder = os.path.join(args.out, "bart_cvae")
    pairs = os.path.join(args.out, "data-bin", "pairs")
    hub = BARTCVAEModel.from_pretrained(folder, "checkpoint_last.pt", pairs).eval()
    lm, _ = sq.load_lm(
        os.path.join(paths["lm"], "checkpoint_last.pt"),
        data=paths["data"],
        dictionary=hub.dictionary,
    )
    real_ppl = sq.lm_perplexity(lm, test, hub.dictionary)
    harness.log(f"sampling {args.label_samples} sentences a label")
    with torch.no_grad():
        samples = {
            label: hub.sample([label], n=args.label_samples, seed=harness.SEED, beam=1)[0]
            for label in LABELS
        }
    flat = [s for label in LABELS for s in samples[label]]
    asked = [label for label in LABELS for _ in samples[label]]
    rows = []
    for model, texts, labels, decoding, n in (
        ("human", test, test_labels, "reference", len(test)),
        ("bart_cvae", flat, asked, "prior-greedy", args.label_samples),
    ):
        ppl = real_ppl if model == "human" else sq.lm_perplexity(lm, texts, hub.dictionary)
        rows.append(
            {
                "corpus": "yelp",
                "model": model,
                "setting": setting if model == "bart_cvae" else "the test sentences",
                "decoding": decoding,
                "samples_per_source": n,
                "ppl_word": report["iw_ppl_word"] if model == "bart_cvae" else None,
                "kl": report["kl"] if model == "bart_cvae" else None,
                "au": report["au"] if model == "bart_cvae" else None,
                "multi_ref_bleu": None,
                "precision_bleu": None,
                "recall_bleu": None,
                "self_bleu": sq.self_bleu(texts, seed=harness.SEED),
                "distinct_1": sq.distinct_n(texts, 1),
                "distinct_2": sq.distinct_n(texts, 2),
                "source_bleu": None,
                "grammatical": None,
                "kept": None,
                "free_factor_tv": None,
                "judge_accuracy": judge.accuracy(texts, labels),
                "lm_ppl": ppl,
                "lm_ppl_ratio": ppl / real_ppl,
                "copies": sq.memorised(texts, train) if model == "bart_cvae" else None,
            }
        )
    harness.log(f"transfer: {len(test)} test sentences under the other label")
    other = {a: b for a, b in zip(LABELS, reversed(LABELS))}
    with torch.no_grad():
        moved = hub.transfer(test_labels, test, [other[x] for x in test_labels], beam=1)
    transfer = [
        {
            "corpus": "yelp",
            "method": "swap-condition",
            "accuracy": judge.accuracy(moved, [other[x] for x in test_labels]),
            "source_bleu": source_bleu(moved, test),
            "lm_ppl_ratio": sq.lm_perplexity(lm, moved, hub.dictionary) / real_ppl,
        }
    ]
    # examples stay in the run folder: they quote Yelp's sentences, which are not ours to publish
    with open(os.path.join(args.out, "examples.json"), "w") as f:
        step = max(1, len(flat) // 6)
        json.dump({"samples": [[asked[i], flat[i]] for i in range(0, len(flat), step)],
                   "transfer": [[test[i], moved[i]] for i in range(5)]}, f, indent=1)  # fmt: skip
    lm_eval = harness.lm_result(os.path.join(paths["lm"], "test.log"))
    compared = {"lm": lm_eval, "vae": unconditional(args)}
    return rows, transfer, compared
