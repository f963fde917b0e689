#!/usr/bin/env python
"""The cost of the latent: bart_vae against plain BART of the same dimensions.

Both models are trained as autoencoders (source = target) on the same batches of a data-bin
corpus, in one process, alternating update by update after a warm-up, so machine noise hits
both alike. Prints the median time per training update of each and their ratio, and
generation speed (sentences per second: bart_vae decoding prior samples against BART
reconstructing the same number of sentences, same decoding options), as a table.

  python benchmarks/overhead.py --shape small            # bart_vae_small sizes
  python benchmarks/overhead.py --shape base --updates 20
  python benchmarks/overhead.py --shape base --bf16      # on a GPU
"""

import argparse
import os
import statistics
import time

import torch
from fairseq import criterions, options, tasks
from fairseq.data import iterators

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHAPES = {  # the VAE architecture and BART's architecture of the same dimensions
    "small": ("bart_vae_small", "bart_base", ["--encoder-embed-dim", "128",
              "--encoder-ffn-embed-dim", "512", "--encoder-layers", "2", "--decoder-layers", "2",
              "--encoder-attention-heads", "4", "--decoder-attention-heads", "4"]),
    "base": ("bart_vae", "bart_base", []),
}  # fmt: skip


def build(arch, criterion, data, extra):
    parser = options.get_training_parser()
    args = options.parse_args_and_arch(
        parser,
        [data, "--user-dir", os.path.join(ROOT, "fairseq_vae"), "--task", "text_vae",
         "--arch", arch, "--criterion", criterion, "--max-update", "1000",
         "--kl-schedule", "constant", *extra],
    )  # fmt: skip
    task = tasks.setup_task(args)
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


def train_update(model, criterion, optimizer, sample, device, dtype):
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


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", default=os.path.join(ROOT, "data-bin", "synth"))
    parser.add_argument("--shape", choices=sorted(SHAPES), default="small")
    parser.add_argument("--updates", type=int, default=20, help="timed updates per model")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--max-tokens", type=int, default=2048)
    parser.add_argument("--generate", type=int, default=64, help="sentences to generate")
    parser.add_argument("--bf16", action="store_true", help="bf16 autocast (GPU)")
    args = parser.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dtype = torch.bfloat16 if args.bf16 else torch.float32
    vae_arch, bart_arch, dims = SHAPES[args.shape]

    common = [*dims, "--dropout", "0.1"]
    vae_task, vae, vae_crit, _ = build(vae_arch, "elbo", args.data, common)
    _, bart, bart_crit, _ = build(bart_arch, "label_smoothed_cross_entropy", args.data, common)
    models = {"bart_vae": (vae, vae_crit), "bart": (bart, bart_crit)}
    n = args.warmup + args.updates
    samples = [s for s in batches(vae_task, "train", args.max_tokens, n)]
    optimizers = {}
    for name, (model, crit) in models.items():
        model.to(device).train()
        optimizers[name] = torch.optim.Adam(model.parameters(), lr=1e-4)
    times = {name: [] for name in models}
    for i, sample in enumerate(samples):
        sample = iterators.utils.move_to_cuda(sample) if device.type == "cuda" else sample
        for name, (model, crit) in models.items():  # alternating: noise hits both alike
            t = timed(lambda: train_update(model, crit, optimizers[name], sample, device, dtype),
                      device)  # fmt: skip
            if i >= args.warmup:
                times[name].append(t)

    # generation: prior samples (VAE) against reconstructions (BART), same search
    gen_task = vae_task
    gen_args = options.get_generation_parser()
    gen_cfg = options.parse_args_and_arch(gen_args, [args.data, "--beam", "1", "--max-len-b", "30"])
    sentences = batches(gen_task, "valid", 100000, 1)[0]
    sentences = {k: v for k, v in sentences.items()}
    speed = {}
    for name, (model, _) in models.items():
        model.eval()
        generator = gen_task.build_generator([model], gen_cfg)
        net_input = {k: v[: args.generate] for k, v in sentences["net_input"].items()}
        if name == "bart_vae":
            model.encoder.latent_source = "prior"
        sample = {"id": sentences["id"][: args.generate], "net_input": net_input}
        if device.type == "cuda":
            sample = iterators.utils.move_to_cuda(sample)
        with torch.no_grad():
            generator.generate([model], sample)  # warm-up
            t = timed(lambda: generator.generate([model], sample), device)
        speed[name] = len(sample["id"]) / t

    vae_ms = statistics.median(times["bart_vae"]) * 1000
    bart_ms = statistics.median(times["bart"]) * 1000
    print(f"shape {args.shape} on {device.type} ({dtype}), {args.updates} timed updates of "
          f"{args.max_tokens} tokens after {args.warmup} warm-up, alternating")  # fmt: skip
    print(f"{'':<22}{'bart_vae':>10}{'bart':>10}{'ratio':>8}")
    print(f"{'ms per update (median)':<22}{vae_ms:10.1f}{bart_ms:10.1f}{vae_ms / bart_ms:8.3f}")
    print(f"{'sentences/s generated':<22}{speed['bart_vae']:10.1f}{speed['bart']:10.1f}"
          f"{speed['bart_vae'] / speed['bart']:8.3f}")  # fmt: skip
    if device.type == "cuda":
        print(f"peak GPU memory {torch.cuda.max_memory_allocated() / 2**20:.0f} MiB (both models)")


if __name__ == "__main__":
    main()
