#!/usr/bin/env python3
"""The cost of the latent: bart_vae against plain BART of the same dimensions (with --pairs,
bart_cvae against BART as a seq2seq, on a paired data-bin: scripts/prepare_data.sh --pairs).

Both models are trained as autoencoders (source = target) on the same batches of a data-bin
corpus, in one process, alternating update by update after a warm-up, so machine noise hits
both alike. Prints, as a table, the median time per training update of each and their ratio;
the peak memory of training (CUDA: the allocator's peak per model; CPU: the peak resident set
of a child process that builds and trains only that model, less its size before training);
and generation speed in sentences per second, bart_vae decoding prior samples against BART
reconstructing the same number of sentences with the same greedy search:

* at a fixed length (--gen-len tokens, end of sentence forbidden before it): the same work
  per sentence for both, whatever they have learnt;
* at natural lengths, only after --train-updates extra updates of each model (untrained
  models stop at arbitrary lengths, so the comparison would mean nothing).

  python benchmarks/overhead.py --shape small --train-updates 300   # bart_vae_small sizes
  python benchmarks/overhead.py --shape base --updates 20
  python benchmarks/overhead.py --shape base --bf16                 # on a GPU
  python benchmarks/overhead.py --pairs --data benchmarks/runs/cvae-cpu/data-bin/pairs
  python benchmarks/overhead.py --pairs --data ... --shape base --dictionary-size 50265

With --pairs both models read the same paired batches (BART without the target in its encoder
input), and generation compares bart_cvae decoding z ~ p(z|c) beside each source with BART's
greedy search from the same sources.
"""

import argparse
import functools
import os
import resource
import shlex
import statistics
import subprocess
import sys
import time

import torch
from fairseq import criterions, options, tasks
from fairseq.data import iterators

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHAPES = {  # the VAE architecture and BART's architecture of the same dimensions
    "small": (
        "bart_vae_small",
        "bart_base",
        [
            "--encoder-embed-dim",
            "128",
            "--encoder-ffn-embed-dim",
            "512",
            "--encoder-layers",
            "2",
            "--decoder-layers",
            "2",
            "--encoder-attention-heads",
            "4",
            "--decoder-attention-heads",
            "4",
        ],
    ),
    "base": ("bart_vae", "bart_base", []),
}


PAIRS = ["--source-lang", "src", "--target-lang", "tgt"]


def pad_dictionaries(task, size: int):
    """Grows the task's dictionaries to ``size`` types with unused symbols, in memory: the
    embedding table and output layer then have that size (a real BART's 50,265) whatever the
    corpus's own dictionary, while the batches stay the corpus's."""
    for dictionary in {id(d): d for d in (task.source_dictionary, task.target_dictionary)}.values():
        while len(dictionary) < size:
            dictionary.add_symbol(f"madeupword{len(dictionary):05d}")


def build(arch, criterion, data, extra, task_name="text_vae", dictionary_size=0):
    parser = options.get_training_parser()
    args = options.parse_args_and_arch(
        parser,
        [
            data,
            "--user-dir",
            os.path.join(ROOT, "fairseq_vae"),
            "--task",
            task_name,
            "--arch",
            arch,
            "--criterion",
            criterion,
            "--max-update",
            "1000",
            *(["--kl-schedule", "constant"] if task_name == "text_vae" else []),
            *extra,
        ],
    )
    task = tasks.setup_task(args)
    if dictionary_size:
        pad_dictionaries(task, dictionary_size)
    torch.manual_seed(1)
    model = task.build_model(args)
    return task, model, criterions.build_criterion(args, task), args


def batches(task, split, max_tokens, n):
    task.load_dataset(split)
    dataset = task.dataset(split)
    itr = task.get_batch_iterator(dataset, max_tokens=max_tokens, seed=1).next_epoch_itr(
        shuffle=True
    )
    return [b for _, b in zip(range(n), itr)]


def for_model(model, sample):
    """The batch as the model reads it: only the conditional encoder takes the target."""
    if getattr(model.encoder, "conditional", False):
        return sample
    net_input = {k: v for k, v in sample["net_input"].items() if not k.startswith("tgt_")}
    return dict(sample, net_input=net_input)


def train_update(model, criterion, optimizer, sample, device, dtype):
    sample = for_model(model, sample)
    optimizer.zero_grad(set_to_none=True)
    with torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32):
        loss, sample_size, _ = criterion(model, sample)
    (loss / sample_size).backward()
    optimizer.step()


def timed(fn, device):
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start


def rss_mib() -> float:
    """The resident set of this process now (Linux /proc)."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def cpu_peak_training_memory(args, name) -> float:
    """MiB: peak RSS of a child that builds one model and trains it, less its RSS before."""
    out = subprocess.run(
        [
            sys.executable,
            os.path.abspath(__file__),
            "--data",
            args.data,
            "--shape",
            args.shape,
            "--max-tokens",
            str(args.max_tokens),
            "--peak-memory-of",
            name,
            *(["--pairs"] if args.pairs else []),
            "--dictionary-size",
            str(args.dictionary_size),
            f"--vae-args={args.vae_args}",  # "=": a value that starts with "--"
        ],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    return float(out.strip().splitlines()[-1])


def build_models(args, names=("bart_vae", "bart")):
    """The task and {name: (model, criterion)}, the two models of one shape."""
    vae_arch, bart_arch, dims = SHAPES[args.shape]
    common = [*dims, "--dropout", "0.1"]
    vae_extra = shlex.split(args.vae_args)  # the VAE's own options (a recipe's remedies)
    if args.pairs:  # the conditional model on text_vae's pairs, BART on fairseq's translation
        vae_arch = vae_arch.replace("bart_vae", "bart_cvae")
        recipes = {
            "bart_vae": (vae_arch, "elbo", args.data, [*common, *PAIRS, *vae_extra]),
            "bart": (bart_arch, "label_smoothed_cross_entropy", args.data, [*common, *PAIRS],
                     "translation"),
        }  # fmt: skip
    else:
        recipes = {
            "bart_vae": (vae_arch, "elbo", args.data, [*common, *vae_extra]),
            "bart": (bart_arch, "label_smoothed_cross_entropy", args.data, common),
        }
    models, vae_task = {}, None
    for name in names:
        task, model, crit, _ = build(*recipes[name], dictionary_size=args.dictionary_size)
        models[name] = (model, crit)
        vae_task = task if name == "bart_vae" or vae_task is None else vae_task
    return vae_task, models


def generation_speed(task, models, args, device, fixed_len):
    """Sentences per second of greedy search: prior samples (VAE), reconstructions (BART)."""
    if fixed_len:
        search = ["--min-len", str(fixed_len), "--max-len-a", "0", "--max-len-b", str(fixed_len)]
    else:
        search = ["--max-len-a", "0", "--max-len-b", "60"]
    gen_cfg = options.parse_args_and_arch(
        options.get_generation_parser(), [args.data, "--beam", "1", *search]
    )
    sentences = batches(task, "valid", 100000, 1)[0]
    speed, lengths = {}, {}
    for name, (model, _) in models.items():
        model.eval()
        generator = task.build_generator([model], gen_cfg)
        net_input = {k: v[: args.generate] for k, v in sentences["net_input"].items()}
        if name == "bart_vae":
            model.encoder.latent_source = "prior"
        sample = {"id": sentences["id"][: args.generate], "net_input": net_input}
        sample = for_model(model, sample)
        if device.type == "cuda":
            sample = iterators.utils.move_to_cuda(sample)
        with torch.no_grad():
            hypos = generator.generate([model], sample)  # warm-up
            t = min(
                timed(functools.partial(generator.generate, [model], sample), device)
                for _ in range(3)
            )
        speed[name] = len(sample["id"]) / t
        lengths[name] = statistics.mean(len(h[0]["tokens"]) for h in hypos)
        if name == "bart_vae":
            model.encoder.latent_source = "sample"
        model.train()
    return speed, lengths


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", default=os.path.join(ROOT, "data-bin", "synth"))
    parser.add_argument("--shape", choices=sorted(SHAPES), default="small")
    parser.add_argument("--updates", type=int, default=20, help="timed updates per model")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--max-tokens", type=int, default=2048)
    parser.add_argument("--generate", type=int, default=64, help="sentences to generate")
    parser.add_argument(
        "--gen-len", type=int, default=20, help="tokens per sentence of the fixed-length generation"
    )
    parser.add_argument(
        "--train-updates",
        type=int,
        default=0,
        help="untimed updates of each model (lr 1e-3) before the natural-length "
        "generation; 0 skips it",
    )
    parser.add_argument("--bf16", action="store_true", help="bf16 autocast (GPU)")
    parser.add_argument(
        "--pairs",
        action="store_true",
        help="--data is a paired data-bin (src, tgt): bart_cvae against BART as a seq2seq",
    )
    parser.add_argument(
        "--dictionary-size",
        type=int,
        default=0,
        help="grow both models' dictionary to this many types (50265: a real BART's embedding "
        "table and output layer) on the corpus's batches; 0 keeps the corpus's",
    )
    parser.add_argument(
        "--vae-args",
        default="",
        help="more options of the VAE model and criterion, as one string "
        "(--vae-args='--bow-loss-weight 1.0 --latent-to-output'); the plain BART is unchanged",
    )
    parser.add_argument("--peak-memory-of", choices=["bart_vae", "bart"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dtype = torch.bfloat16 if args.bf16 else torch.float32

    names = [args.peak_memory_of] if args.peak_memory_of else ["bart_vae", "bart"]
    vae_task, models = build_models(args, names)
    n = args.warmup + args.updates
    samples = [s for s in batches(vae_task, "train", args.max_tokens, n)]
    if args.peak_memory_of:  # the child of cpu_peak_training_memory
        model, crit = models[args.peak_memory_of]
        optimizer = torch.optim.Adam(model.parameters(), lr=1e-4)
        before = rss_mib()
        for sample in samples[:5]:
            train_update(model, crit, optimizer, sample, device, dtype)
        print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 - before)
        return

    optimizers, peak = {}, {name: 0.0 for name in models}
    for name, (model, _) in models.items():
        model.to(device).train()
        optimizers[name] = torch.optim.Adam(model.parameters(), lr=1e-4)
    times = {name: [] for name in models}
    for i, sample in enumerate(samples):
        sample = iterators.utils.move_to_cuda(sample) if device.type == "cuda" else sample
        for name, (model, crit) in models.items():  # alternating: noise hits both alike
            if device.type == "cuda":
                torch.cuda.reset_peak_memory_stats()
                base = torch.cuda.memory_allocated()
            update = functools.partial(
                train_update, model, crit, optimizers[name], sample, device, dtype
            )
            t = timed(update, device)
            if device.type == "cuda":
                peak[name] = max(peak[name], (torch.cuda.max_memory_allocated() - base) / 2**20)
            if i >= args.warmup:
                times[name].append(t)
    if device.type != "cuda":
        peak = {name: cpu_peak_training_memory(args, name) for name in models}

    fixed, fixed_len = generation_speed(vae_task, models, args, device, args.gen_len)
    natural = None
    if args.train_updates:
        for name in models:
            for group in optimizers[name].param_groups:
                group["lr"] = 1e-3
        epoch = batches(vae_task, "train", args.max_tokens, args.train_updates)
        for sample in epoch:
            sample = iterators.utils.move_to_cuda(sample) if device.type == "cuda" else sample
            for name, (model, crit) in models.items():
                train_update(model, crit, optimizers[name], sample, device, dtype)
        natural, natural_len = generation_speed(vae_task, models, args, device, None)

    vae_ms = statistics.median(times["bart_vae"]) * 1000
    bart_ms = statistics.median(times["bart"]) * 1000
    print(
        f"shape {args.shape} on {device.type} ({dtype}), {args.updates} timed updates of "
        f"{args.max_tokens} tokens after {args.warmup} warm-up, alternating; "
        f"{args.generate} sentences generated greedily; dictionary of "
        f"{len(vae_task.target_dictionary)} types"
        + (f"; VAE options {args.vae_args}" if args.vae_args else "")
    )
    vae_name = "bart_cvae" if args.pairs else "bart_vae"
    print(f"{'':<34}{vae_name:>10}{'bart':>10}{'ratio':>8}")
    rows = [
        ("ms per update (median)", vae_ms, bart_ms),
        ("peak training memory, MiB", peak["bart_vae"], peak["bart"]),
        (f"sent/s, fixed length {args.gen_len}", fixed["bart_vae"], fixed["bart"]),
    ]
    if natural:
        rows.append(
            (
                f"sent/s, natural length, {args.train_updates} upd.",
                natural["bart_vae"],
                natural["bart"],
            )
        )
        rows.append(("  mean output length", natural_len["bart_vae"], natural_len["bart"]))
    for label, a, b in rows:
        print(f"{label:<34}{a:10.1f}{b:10.1f}{a / b:8.3f}")


if __name__ == "__main__":
    main()
