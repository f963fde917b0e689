#!/usr/bin/env python3
"""Speed of the batched IW-NLL against decoding one importance sample at a time.

Both compute the same estimate from the same draws on the same sentences (the script checks
that they agree): the batched one decodes the samples of all sentences ``--iw-chunk`` per
sentence at a time as one batch, the loop decodes one (sentence, sample) pair per decoder call.
Both encode each sentence once.

    python benchmarks/iw_speed.py data-bin/synth --path checkpoints/demo/checkpoint_last.pt --cpu
"""

import argparse
import math
import time

import torch


def loop_log_likelihood(model, mu, logvar, prev_output_tokens, target, eps):
    """log p(x) of each sentence, one decoder call per (sentence, sample)."""
    from fairseq_vae.metrics.estimators import (
        decoder_log_likelihood,
        gaussian_log_density,
        standard_normal_log_density,
    )

    pad = model.decoder.dictionary.pad()
    out = []
    for b in range(mu.size(0)):
        length = int(target[b].ne(pad).sum())
        prev, tgt = prev_output_tokens[b : b + 1, :length], target[b : b + 1, :length]
        log_ws = []
        for k in range(eps.size(1)):
            z = mu[b : b + 1] + torch.exp(0.5 * logvar[b : b + 1]) * eps[b : b + 1, k]
            log_px_z = decoder_log_likelihood(model, mu[b : b + 1], logvar[b : b + 1], z, prev, tgt)
            log_ws.append(
                log_px_z
                + standard_normal_log_density(z)
                - gaussian_log_density(z, mu[b : b + 1], logvar[b : b + 1])
            )
        out.append(torch.logsumexp(torch.cat(log_ws), dim=0) - math.log(eps.size(1)))
    return torch.stack(out)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("data", help="the data-bin folder")
    parser.add_argument("--path", required=True, help="bart_vae checkpoint")
    parser.add_argument("--gen-subset", default="test")
    parser.add_argument("--sentences", type=int, default=16, help="first N sentences of the split")
    parser.add_argument("--iw-samples", type=int, default=100, help="K")
    parser.add_argument("--iw-chunk", type=int, default=100, help="samples per batched pass")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--cpu", action="store_true")
    args = parser.parse_args()

    from fairseq import utils

    from fairseq_vae.cli.loading import load_checkpoint
    from fairseq_vae.metrics.estimators import iw_log_likelihood

    use_cuda = torch.cuda.is_available() and not args.cpu
    model, saved_cfg, task = load_checkpoint(args.path, {"data": args.data}, use_cuda=use_cuda)
    task.load_dataset(args.gen_subset, task_cfg=saved_cfg.task)
    dataset = task.dataset(args.gen_subset)
    sample = dataset.collater([dataset[i] for i in range(min(args.sentences, len(dataset)))])
    sample = utils.move_to_cuda(sample) if use_cuda else sample
    net, target = sample["net_input"], sample["target"]
    sync = torch.cuda.synchronize if use_cuda else (lambda: None)

    with torch.no_grad():
        mu, logvar = model.encoder.posterior(net["src_tokens"], net["src_lengths"])
        gen = torch.Generator(device=mu.device).manual_seed(args.seed)
        eps = torch.randn(mu.size(0), args.iw_samples, mu.size(1), generator=gen, device=mu.device)
        prev = net["prev_output_tokens"]
        # one warm-up call each, so that neither pays for first-call allocation
        iw_log_likelihood(model, mu[:2], logvar[:2], prev[:2], target[:2], 2, 2, eps=eps[:2])
        loop_log_likelihood(model, mu[:1], logvar[:1], prev[:1], target[:1], eps[:1, :2])

        sync()
        start = time.perf_counter()
        batched, _, _ = iw_log_likelihood(
            model, mu, logvar, prev, target, args.iw_samples, args.iw_chunk, eps=eps
        )
        sync()
        batched_s = time.perf_counter() - start
        start = time.perf_counter()
        looped = loop_log_likelihood(model, mu, logvar, prev, target, eps)
        sync()
        loop_s = time.perf_counter() - start

    worst = ((batched - looped).abs() / looped.abs()).max().item()
    pairs = mu.size(0) * args.iw_samples
    device = "cuda" if use_cuda else f"cpu ({torch.get_num_threads()} threads)"
    print(
        f"IW-NLL of {mu.size(0)} sentences x K={args.iw_samples} samples on {device}; "
        f"mean IW-NLL {-batched.mean().item():.3f} nats, batched vs loop differ by at most "
        f"{worst:.1e} relative"
    )
    print(
        f"batched (chunks of {args.iw_chunk}): {batched_s:8.3f} s  "
        f"({pairs / batched_s:9.1f} samples/s)"
    )
    print(f"one sample at a time:  {loop_s:8.3f} s  ({pairs / loop_s:9.1f} samples/s)")
    print(f"speed-up: {loop_s / batched_s:.1f}x")


if __name__ == "__main__":
    main()
