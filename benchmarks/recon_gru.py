#!/usr/bin/env python3
"""Issue #40's yardstick, run here: a plain GRU sentence VAE on Yelp (Bowman et al. 2016, He et
al. 2019's LSTM VAE with GRUs), trained and measured as benchmarks/recon.py measures bart_vae.

    python benchmarks/recon_gru.py --out DIR --kl fb0.5 --minutes 60 --yelp ../shared/data/yelp

The model as the issue describes it: words (the 10,000 most frequent of Yelp's training text,
the rest <unk>), embeddings of 128, a bidirectional GRU encoder of 256 a direction whose two last
states give q(z|x) = N(mu, sigma^2) of 32 dimensions, z mapped to the decoder GRU's (256)
initial state and concatenated to each of its inputs; Adam 1e-3, 64 sentences a batch, one
thread. The loss a batch: the summed token NLL of each sentence, plus beta x KL(q || N(0, I)),
averaged over the batch; "ae" beta = 0 (z still sampled), "fb0.5" beta = 1 with free bits 0.5 a
dimension over the batch, as the elbo criterion's --free-bits (batch mode).

Every --every minutes of training (its own clock: evaluation is not counted) the first
--sentences test sentences are reconstructed greedily from their posterior means and scored
as recon.py scores bart_vae (BLEU-4 against the sentences, exact share, mean KL to N(0, I));
each point goes to DIR/point-<m>min.json, the state to DIR/state-<m>min.pt, so a rerun skips
the points done and resumes from the last state.
"""

import argparse
import collections
import json
import os
import random
import sys
import time
from functools import partial

import torch
import torch.nn.functional as F
from torch import nn

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from fairseq_vae.atomic_files import write_atomically  # noqa: E402
from fairseq_vae.criterions.elbo import free_bits_kl, gaussian_kl  # noqa: E402
from fairseq_vae.metrics.transfer_quality import source_bleu  # noqa: E402

PAD, BOS, EOS, UNK = 0, 1, 2, 3
SPECIALS = ["<pad>", "<s>", "</s>", "<unk>"]


class GRUVAE(nn.Module):
    def __init__(self, vocab: int, embed=128, hidden=256, latent=32, pooling="last"):
        super().__init__()
        self.pooling = pooling
        self.embed = nn.Embedding(vocab, embed, padding_idx=PAD)
        self.encoder = nn.GRU(embed, hidden, batch_first=True, bidirectional=True)
        self.to_mu = nn.Linear(2 * hidden, latent)
        self.to_logvar = nn.Linear(2 * hidden, latent)
        self.to_state = nn.Linear(latent, hidden)
        self.decoder = nn.GRU(embed + latent, hidden, batch_first=True)
        self.out = nn.Linear(hidden, vocab)

    def encode(self, tokens, lengths):
        packed = nn.utils.rnn.pack_padded_sequence(
            self.embed(tokens), lengths, batch_first=True, enforce_sorted=False
        )
        states, last = self.encoder(packed)  # last: (2, batch, hidden), each direction's end
        if self.pooling == "last":
            h = torch.cat([last[0], last[1]], dim=-1)
        else:  # the mean of the states over the sentence's words, as bart_vae pools its encoder
            states, _ = nn.utils.rnn.pad_packed_sequence(states, batch_first=True)
            h = states.sum(1) / lengths.to(states).unsqueeze(1)
        return self.to_mu(h), self.to_logvar(h)

    def decode_step(self, inputs, z, state):
        """Logits of the next words for decoder inputs (batch, steps) given z."""
        x = torch.cat([self.embed(inputs), z.unsqueeze(1).expand(-1, inputs.size(1), -1)], -1)
        out, state = self.decoder(x, state)
        return self.out(out), state

    def initial_state(self, z):
        return torch.tanh(self.to_state(z)).unsqueeze(0)

    @torch.no_grad()
    def greedy(self, z, max_len: int):
        words = torch.full((z.size(0), 1), BOS, dtype=torch.long)
        state, done, out = self.initial_state(z), torch.zeros(z.size(0), dtype=torch.bool), []
        for _ in range(max_len):
            logits, state = self.decode_step(words, z, state)
            words = logits[:, -1].argmax(-1, keepdim=True)
            out.append(words.squeeze(1))
            done |= words.squeeze(1) == EOS
            if done.all():
                break
        return torch.stack(out, 1)


def vocabulary(train_path: str, size: int) -> list:
    with open(train_path, encoding="utf-8") as f:
        counts = collections.Counter(w for line in f for w in line.split())
    return SPECIALS + [w for w, _ in counts.most_common(size)]


def batch_of(lines, index):
    """(encoder tokens, lengths, decoder inputs <s> x, decoder targets x </s>), padded."""
    ids = [[index.get(w, UNK) for w in line] for line in lines]
    n = max(len(x) for x in ids) + 1
    enc = torch.tensor([x + [PAD] * (n - 1 - len(x)) for x in ids])
    dec_in = torch.tensor([[BOS] + x + [PAD] * (n - 1 - len(x)) for x in ids])
    dec_out = torch.tensor([x + [EOS] + [PAD] * (n - 1 - len(x)) for x in ids])
    return enc, torch.tensor([len(x) for x in ids]), dec_in, dec_out


def loss_of(model, batch, kl: str):
    enc, lengths, dec_in, dec_out = batch
    mu, logvar = model.encode(enc, lengths)
    z = mu + torch.randn_like(mu) * (0.5 * logvar).exp()
    logits, _ = model.decode_step(dec_in, z, model.initial_state(z))
    nll = F.cross_entropy(logits.transpose(1, 2), dec_out, ignore_index=PAD, reduction="sum")
    # beta = 0, or free bits 0.5 a dimension over the batch as the elbo criterion penalises it
    penalty = 0.0 if kl == "ae" else free_bits_kl(gaussian_kl(mu, logvar), 0.5, "batch")
    return (nll + penalty) / enc.size(0)


def inverse_sqrt_lr(updates: int, lr: float, warmup: int) -> float:
    """fairseq's inverse_sqrt schedule (warm-up from 0) after `updates` updates: the learning
    rate the BART runs of recon.py train with, for a yardstick trained alike."""
    if updates < warmup:
        return lr * updates / warmup
    return lr * (warmup / updates) ** 0.5


def measure(model, texts, index, words) -> dict:
    model.eval()
    outputs, kls = [], []
    for i in range(0, len(texts), 200):
        lines = [t.split() for t in texts[i : i + 200]]
        enc, lengths, _, _ = batch_of(lines, index)
        mu, logvar = model.encode(enc, lengths)
        kls.append(gaussian_kl(mu, logvar).sum(-1))
        for row in model.greedy(mu, max_len=2 * enc.size(1) + 10).tolist():
            row = row[: row.index(EOS)] if EOS in row else row
            outputs.append(" ".join(words[t] for t in row))
    model.train()
    return {
        "bleu": source_bleu(outputs, texts),
        "exact": sum(o == t for o, t in zip(outputs, texts)) / len(texts),
        "kl_nats": float(torch.cat(kls).mean()),
        "sentences": len(texts),
        "examples": [{"source": t, "output": o} for t, o in list(zip(texts, outputs))[:5]],
    }


def write_json(data, f):
    f.write(json.dumps(data, indent=1).encode())


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", required=True, help="the run's folder (points and states)")
    p.add_argument("--yelp", default=os.path.join("..", "shared", "data", "yelp"))
    p.add_argument("--kl", choices=["ae", "fb0.5"], required=True)
    p.add_argument("--minutes", type=int, default=30)
    p.add_argument("--every", type=int, default=5)
    p.add_argument("--sentences", type=int, default=1000)
    p.add_argument("--vocabulary", type=int, default=10000)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument(
        "--pooling",
        choices=["last", "mean"],
        default="last",
        help="q(z|x) from the encoder's two last states (the yardstick's), or from the mean of "
        "its states over the words (bart_vae's pooling)",
    )
    p.add_argument(
        "--hidden",
        type=int,
        default=256,
        help="the GRUs' width (a direction's, in the encoder); bart_vae_small's is 128",
    )
    p.add_argument(
        "--lr-schedule",
        choices=["constant", "inverse_sqrt"],
        default="constant",
        help="Adam's 1e-3 throughout (the yardstick's), or fairseq's inverse_sqrt with 200 warm-up "
        "updates (recon.py's bart_vae runs)",
    )
    args = p.parse_args()
    torch.set_num_threads(1)
    os.makedirs(args.out, exist_ok=True)

    words = vocabulary(os.path.join(args.yelp, "train.txt"), args.vocabulary)
    index = {w: i for i, w in enumerate(words)}
    with open(os.path.join(args.yelp, "train.txt"), encoding="utf-8") as f:
        train = [line.split() for line in f if line.split()]
    with open(os.path.join(args.yelp, "test.txt"), encoding="utf-8") as f:
        texts = [" ".join(line.split()) for line in f][: args.sentences]

    torch.manual_seed(args.seed)
    model = GRUVAE(len(words), hidden=args.hidden, pooling=args.pooling)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    marks = list(range(args.every, args.minutes + 1, args.every))
    done = [m for m in marks if os.path.isfile(os.path.join(args.out, f"state-{m}min.pt"))]
    updates, seconds = 0, 0.0
    if done:  # resume from the last state kept
        state = torch.load(os.path.join(args.out, f"state-{done[-1]}min.pt"), weights_only=True)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        updates, seconds = state["updates"], state["seconds"]
        torch.set_rng_state(state["rng"])
    order = random.Random(args.seed)
    epoch = []
    for _ in range(updates):  # the same batches as an uninterrupted run
        epoch = epoch or sorted(range(len(train)), key=lambda _: order.random())
        epoch = epoch[args.batch_size :]
    for m in marks[len(done) :]:
        start = time.perf_counter()
        while seconds + time.perf_counter() - start < 60 * m:
            if not epoch:
                epoch = sorted(range(len(train)), key=lambda _: order.random())
            chosen, epoch = epoch[: args.batch_size], epoch[args.batch_size :]
            loss = loss_of(model, batch_of([train[i] for i in chosen], index), args.kl)
            optimizer.zero_grad()
            loss.backward()
            if args.lr_schedule == "inverse_sqrt":  # a function of the updates: resumes as is
                for group in optimizer.param_groups:
                    group["lr"] = inverse_sqrt_lr(updates, 1e-3, 200)
            optimizer.step()
            updates += 1
        seconds += time.perf_counter() - start
        state = {
            "model": model.state_dict(),
            "optimizer": optimizer.state_dict(),
            "updates": updates,
            "seconds": seconds,
            "rng": torch.get_rng_state(),
        }
        write_atomically(os.path.join(args.out, f"state-{m}min.pt"), partial(torch.save, state))
        with torch.no_grad():
            point = {"mark": m, "minutes": seconds / 60, "updates": updates}
            point.update(measure(model, texts, index, words))
        path = os.path.join(args.out, f"point-{m}min.json")
        write_atomically(path, partial(write_json, point))
        print(
            f"{m} min: {updates} updates, BLEU {point['bleu']:.1f}, exact {point['exact']:.3f}, "
            f"KL {point['kl_nats']:.1f} nats",
            flush=True,
        )


if __name__ == "__main__":
    main()
