"""The table of benchmarks/cvae.py: cvae.md (a section for each corpus), cvae.json (its rows,
the cost ratios, each corpus's settings) and cvae.png (self-BLEU against multi-reference BLEU,
a panel for each corpus), written from the rows alone, so that `cvae.py --report` rewrites them
without running anything; and the measures every corpus's rows share. Part of the cvae study:
only cvae.py imports it.
"""

import os
import re
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness  # noqa: E402  (the run record, the plot backend)

TITLES = {
    "synth": "The shipped grammar's paraphrases",
    "multi30k": "Paraphrases of Multi30k captions",
    "yelp": "Yelp sentences under their sentiment",
}
TARGETS = {
    "synth": {"grammatical": 0.95, "kept": 0.95, "free_tv": 0.10, "self_bleu_over_human": 10.0},
    "multi30k": {"source_bleu_over_human": 10.0, "kl": 3.0, "au": 8},
    "yelp": {
        "judge_accuracy": 0.95,
        "lm_ppl_ratio": 1.25,
        "distinct_2_within": 0.10,
        "transfer_accuracy": 0.90,
        "transfer_bleu_over_unconditional": 2.0,
        "kl": 3.0,
        "au": 8,
    },
}


def parse_generate(path: str) -> dict:
    """{sentence id: (source, [hypotheses in order])} of a fairseq-generate log: its last run
    (run_logged appends, and starts each command with a "$ command" line)."""
    sources, hyps = {}, {}
    runs = re.split(r"^\$ ", open(path, encoding="utf-8").read(), flags=re.M)
    last = [run for run in runs if "fairseq-generate" in run.split("\n", 1)[0]][-1]
    for line in last.splitlines():
        m = re.match(r"^([SD])-(\d+)\t(.*)$", line)  # D: the detokenised hypothesis
        if not m:
            continue
        kind, i, rest = m[1], int(m[2]), m[3]
        if kind == "S":
            sources[i] = rest
        else:
            hyps.setdefault(i, []).append(rest.split("\t", 1)[1] if "\t" in rest else "")
    return {i: (sources[i], hyps.get(i, [])) for i in sorted(sources)}


def text_row(corpus, model, decoding, setting, sources, outputs, references, more=None) -> dict:
    """A row of the table: the text measures of `outputs` (a list of outputs a source) against
    each source's references and the source itself; `more`: the corpus's own measures."""
    from fairseq_vae.metrics import conditional_quality as cq

    pr = cq.precision_recall_bleu(outputs, references)
    n = max(len(o) for o in outputs)
    return {
        "corpus": corpus,
        "model": model,
        "setting": setting,
        "decoding": decoding,
        "samples_per_source": n,
        "ppl_word": None,
        "kl": None,
        "au": None,
        "multi_ref_bleu": cq.multi_reference_bleu(outputs, references),
        "precision_bleu": pr["precision"],
        "recall_bleu": pr["recall"],
        "self_bleu": cq.mean_self_bleu(outputs) if n > 1 else None,
        "distinct_1": cq.distinct(outputs, 1),
        "distinct_2": cq.distinct(outputs, 2),
        "source_bleu": cq.source_bleu(outputs, sources),
        "grammatical": None,
        "kept": None,
        "free_factor_tv": None,
        "judge_accuracy": None,
        **(more or {}),
    }


def row_name(r: dict) -> str:
    return f"{r['model']}, {r['setting']}"


def row_key(r: dict) -> tuple:
    return r.get("corpus", "synth"), r["model"], r["setting"], r["decoding"]


def distinct(row: dict) -> str:
    """distinct-1 / distinct-2 (distinct-1 blank in rows measured before it was kept)."""
    return f"{harness.fmt(row.get('distinct_1'), '.3f')} / {row['distinct_2']:.3f}"


def section(corpus: str, rows: list, settings: dict, cost) -> list:
    fmt = harness.fmt
    grammar = any(r["grammatical"] is not None for r in rows)
    head = (
        "| model | setting | decoding | N | PPL | KL | AU | multi-ref BLEU | precision / recall "
        "BLEU | self-BLEU | distinct-1 / 2 | BLEU to source |"
    )
    if grammar:
        head += " grammatical | topic / tense kept | TV sentiment / number / template |"
    lines = [
        f"## {TITLES.get(corpus, corpus)}",
        "",
        *harness.made_lines(rows, row_name),
        "",
        settings.get("description", ""),
        "",
        head,
        "|" + "---|" * (head.count("|") - 1),
    ]
    for r in rows:
        line = (
            f"| {r['model']} | {r['setting']} | {r['decoding']} | {r['samples_per_source']} | "
            f"{fmt(r['ppl_word'], '.3f')} | {fmt(r['kl'], '.2f')} | {fmt(r['au'], 'd')} | "
            f"{r['multi_ref_bleu']:.1f} | {r['precision_bleu']:.1f} / {r['recall_bleu']:.1f} | "
            f"{fmt(r['self_bleu'], '.1f')} | {distinct(r)} | {r['source_bleu']:.1f} |"
        )
        if grammar:
            tv = r["free_factor_tv"]
            line += (
                f" {r['grammatical']:.3f} | {r['kept']['topic']:.3f} / "
                f"{r['kept']['tense']:.3f} | {fmt(tv['sentiment'], '.3f')} / "
                f"{fmt(tv['number'], '.3f')} / {fmt(tv.get('template'), '.3f')} |"
            )
        lines.append(line)
    if cost and corpus == cost.get("corpus", "synth"):
        lines += [
            "",
            "Cost at this table's size (benchmarks/overhead.py --pairs: 2+2 layers of 128, the "
            "corpus's dictionary, bart_cvae's defaults; the same batches, alternating, 40 timed "
            f"updates): a bart_cvae update {cost['update_ratio']:.2f}x a seq2seq update, "
            f"generation from the prior {cost['generation_ratio']:.2f}x the seq2seq's greedy "
            f"speed, peak training memory {cost['memory_ratio']:.2f}x. At BART's sizes (bart.base "
            "with BART's 50,265 types, the README's recipe), where the posterior's second "
            "encoder pass is a smaller share of an update: [overhead.md](overhead.md).",
        ]
    return lines


def yelp_section(rows: list, transfer: list, settings: dict) -> list:
    """The label-conditioned model: its samples beside the test sentences, and transfer by
    swapping the label beside the unconditional VAE's moves (control.json)."""
    fmt = harness.fmt
    lines = [
        f"## {TITLES['yelp']}",
        "",
        *harness.made_lines(rows, row_name),
        "",
        settings.get("description", ""),
        "",
        "| model | setting | decoding | N | IW-PPL | KL | AU | judge: the asked label | LM PPL "
        "(x the test sentences') | self-BLEU | distinct-1 / 2 | copies of training sentences |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['model']} | {r['setting']} | {r['decoding']} | {r['samples_per_source']} | "
            f"{fmt(r['ppl_word'], '.2f')} | {fmt(r['kl'], '.2f')} | {fmt(r['au'], 'd')} | "
            f"{r['judge_accuracy']:.3f} | {r['lm_ppl']:.1f} ({r['lm_ppl_ratio']:.2f}x) | "
            f"{r['self_bleu']:.1f} | {distinct(r)} | {fmt(r['copies'], '.3f')} |"
        )
    compared = settings.get("compared", {})
    vae, lm = compared.get("vae", {}), compared.get("lm", {})
    lines += [
        "",
        "Transfer: each test sentence's z from (its label, itself), decoded under the other "
        "label; beside it the unconditional VAE's moves along the sentiment direction "
        "(benchmarks/results/control.json, test split).",
        "",
        "| model | method | strength | accuracy | BLEU to the source | LM PPL ratio |",
        "|---|---|---|---|---|---|",
    ]
    for t in transfer:
        lines.append(
            f"| bart_cvae | {t['method']} | | {t['accuracy']:.3f} | {t['source_bleu']:.1f} | "
            f"{t['lm_ppl_ratio']:.2f} |"
        )
    for t in vae.get("transfer", []):
        lines.append(
            f"| bart_vae | {t['method']} | {t['strength']} | {t['accuracy']:.3f} | "
            f"{t['source_bleu']:.1f} | {t['lm_ppl_ratio']:.2f} |"
        )
    ours = next((r["ppl_word"] for r in rows if r["model"] == "bart_cvae"), None)
    lines += [
        "",
        f"Test PPL per word: bart_cvae's IW-PPL of p(x|label) {fmt(ours, '.2f', '-')}, the "
        f"unconditional VAE's IW-PPL {fmt(vae.get('iw_ppl_word'), '.2f', '-')}, the same-size "
        f"LM's {fmt(lm.get('ppl'), '.2f', '-')}.",
    ]
    return lines


def markdown(data: dict) -> str:
    rows, settings = data["rows"], data.get("settings", {})
    corpora = list(dict.fromkeys(r.get("corpus", "synth") for r in rows))
    lines = [
        "# The conditional VAE against a plain seq2seq",
        "",
        "`bart_cvae` and fairseq's `bart` fine-tuned as a seq2seq from the same BART, the same "
        "updates and batches. PPL: per word (+1 a sentence) of the test targets, the IW-PPL of "
        "p(x|c) for bart_cvae. BLEU-4 on 0-100 (sacrebleu). Made by `benchmarks/cvae.py`.",
    ]
    for corpus in corpora:
        ours = [r for r in rows if r.get("corpus", "synth") == corpus]
        if corpus == "yelp":
            points = [t for t in data.get("transfer", []) if t["corpus"] == "yelp"]
            lines += ["", *yelp_section(ours, points, settings.get(corpus, {}))]
            continue
        lines += ["", *section(corpus, ours, settings.get(corpus, {}), data.get("cost"))]
    return "\n".join(lines) + "\n"


def plot(path: str, rows: list):
    plt = harness.pyplot()

    def plotted(r):
        return None not in (r["self_bleu"], r["multi_ref_bleu"])

    corpora = list(dict.fromkeys(r.get("corpus", "synth") for r in rows if plotted(r)))
    fig, axes = plt.subplots(1, len(corpora), figsize=(6 * len(corpora), 4.5), squeeze=False)
    for ax, corpus in zip(axes[0], corpora):
        shown = [r for r in rows if r.get("corpus", "synth") == corpus and plotted(r)]
        for r in shown:
            label = f"{r['model']}, {r['decoding']}"
            settings = {q["setting"] for q in shown if q["model"] == r["model"]}
            if len(settings) > 1:  # the model's settings apart: what each adds to the shortest
                base = min(settings, key=len)
                label += f" ({r['setting'][len(base) :].lstrip(', ') or base})"
            ax.scatter(r["self_bleu"], r["multi_ref_bleu"], label=label)
        ax.set(
            xlabel="self-BLEU among a source's outputs (lower: more diverse)",
            ylabel="multi-reference BLEU",
            title=TITLES.get(corpus, corpus),
        )
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_results(results: str, data: dict):
    """cvae.md, cvae.json (and -examples.json if any) and cvae.png from `data`."""
    stem = results[: -len(".md")]
    with open(results, "w") as f:
        f.write(markdown(data))
    harness.write_results_json(stem, {**data, "targets": TARGETS})
    plot(stem + ".png", data["rows"])
