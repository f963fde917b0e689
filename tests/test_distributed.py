"""fairseq's own training loop with the plugin, observed from inside: data-parallel training with
two CPU workers over gloo, on loopback, and --fp16.

On CPU, fairseq 0.12 can neither spawn workers itself (it spawns one per GPU) nor read torchrun's
environment (it takes the rank modulo the GPU count), and its pytorch_ddp backend asks for a
device id: each worker is started by hand with its rank, a tcp:// rendezvous and legacy_ddp.
"""

import json
import os
import socket
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F
from conftest import train_args
from fairseq import checkpoint_utils
from omegaconf import OmegaConf

import fairseq_vae  # noqa: F401  (safe globals for torch.load)
from fairseq_vae.schedules import kl_beta
from fairseq_vae.tasks.text_vae import TextVAEConfig

# fairseq seeds every worker with --seed + the update number, and each worker draws its own
# posterior noise for its own sentences: posterior samples (like dropout) cannot match between
# one worker doing batches 0 and 1 and two workers doing one each, and both decode from the
# posterior mean here. Everything else is the real path: sharding of batches, gradient
# all-reduce and normalisation, summed logging outputs.
FAIRSEQ_TRAIN_WITHOUT_NOISE = """
import sys
from fairseq_cli.train import cli_main  # first: it sets up fairseq's logging
import fairseq_vae.models.bart_vae as bart_vae
bart_vae.reparameterize = lambda mu, logvar, generator=None: mu
sys.exit(cli_main())
"""

# fairseq-train recording, per worker, what the model drew and what BN-VAE normalised: the
# standard-normal noise of each posterior sample, the word-dropout masks with the positions
# that could be dropped, and the raw posterior means each training batch norm saw (in fp64).
# Saved at exit to $RECORD_DIR/rank<r>.pt.
FAIRSEQ_TRAIN_RECORDING = """
import atexit, os, sys
import torch
from fairseq_cli.train import cli_main  # first: it sets up fairseq's logging
import fairseq_vae.models.bart_vae as bart_vae
import fairseq_vae.models.latent as latent
records = {"noise": [], "dropped": [], "droppable": [], "bn_input": []}
reparameterize, word_dropout = bart_vae.reparameterize, bart_vae.word_dropout
batch_norm = latent.LatentBatchNorm.forward

def recording_reparameterize(mu, logvar, generator=None):
    z = reparameterize(mu, logvar, generator=generator)
    records["noise"].append(((z - mu) * torch.exp(-0.5 * logvar)).detach().double())
    return z

def recording_word_dropout(tokens, p, unk, keep, generator=None):
    out = word_dropout(tokens, p, unk, keep, generator=generator)
    droppable = torch.ones_like(tokens, dtype=torch.bool)
    for idx in keep:
        droppable &= tokens.ne(idx)
    records["dropped"].append(out.ne(tokens))
    records["droppable"].append(droppable)
    return out

def recording_batch_norm(self, mu):
    if self.training:
        records["bn_input"].append(mu.detach().double())
    return batch_norm(self, mu)

bart_vae.reparameterize, bart_vae.word_dropout = recording_reparameterize, recording_word_dropout
latent.LatentBatchNorm.forward = recording_batch_norm
rank = sys.argv[sys.argv.index("--distributed-rank") + 1] if "--distributed-rank" in sys.argv else 0
path = os.path.join(os.environ["RECORD_DIR"], f"rank{rank}.pt")
atexit.register(lambda: torch.save(records, path))
sys.exit(cli_main())
"""

OPTIONS = [
    "--max-update",
    "3",
    "--log-format",
    "json",
    "--log-interval",
    "1",
    "--kl-schedule",
    "cyclical",
    "--kl-cycle-updates",
    "4",
]
COMPARED = ("loss", "nll_loss", "kl", "elbo", "elbo_tok", "beta", "active_dims", "wpb", "bsz")


def train_records(out):
    records = [
        json.loads(line.split("| train_inner |", 1)[1])
        for line in out.splitlines()
        if "| train_inner |" in line
    ]
    return {int(record["num_updates"]): record for record in records}


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def fairseq_train(args, script=FAIRSEQ_TRAIN_WITHOUT_NOISE):
    return [sys.executable, "-c", script, *map(str, args)]


def train_one_worker(args, script=FAIRSEQ_TRAIN_WITHOUT_NOISE, record_dir=None):
    """fairseq-train in one process; returns its stdout."""
    env = dict(os.environ, OMP_NUM_THREADS="1", RECORD_DIR=str(record_dir))
    one = subprocess.run(
        fairseq_train(args, script), capture_output=True, text=True, timeout=600, env=env
    )
    assert one.returncode == 0, one.stderr[-3000:]
    return one.stdout


def train_two_workers(args, script=FAIRSEQ_TRAIN_WITHOUT_NOISE, record_dir=None, check=True):
    """fairseq-train as two gloo workers (ranks 0 and 1); returns [(rc, stdout, stderr)]."""
    env = dict(os.environ, OMP_NUM_THREADS="1", RECORD_DIR=str(record_dir))  # two on two cores
    distributed = [
        "--distributed-world-size",
        "2",
        "--distributed-backend",
        "gloo",
        "--distributed-init-method",
        f"tcp://127.0.0.1:{free_port()}",
        "--distributed-no-spawn",
        "--ddp-backend",
        "legacy_ddp",
    ]
    workers = [
        subprocess.Popen(
            fairseq_train([*args, *distributed, "--distributed-rank", rank], script),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )
        for rank in (0, 1)
    ]
    try:
        outs = [worker.communicate(timeout=600) for worker in workers]
    finally:
        for worker in workers:  # a worker whose peer died waits for it: never leave one behind
            if worker.poll() is None:
                worker.kill()
    results = [(worker.returncode, *out) for worker, out in zip(workers, outs)]
    if check:
        for rc, _, err in results:
            assert rc == 0, err[-3000:]
    return results


def test_two_workers_match_one_worker_with_update_freq_2(data_bin, tmp_path):
    one = train_one_worker(train_args(data_bin, tmp_path / "one", *OPTIONS, "--update-freq", "2"))
    outs = train_two_workers(train_args(data_bin, tmp_path / "two", *OPTIONS))

    single, pair = train_records(one), train_records(outs[0][1])
    assert sorted(single) == sorted(pair) == [1, 2, 3]
    cfg = OmegaConf.structured(TextVAEConfig)
    cfg.kl_cycle_updates, cfg.max_update = 4, 3
    for update in single:
        assert {k: pair[update][k] for k in COMPARED} == {k: single[update][k] for k in COMPARED}
        assert float(pair[update]["beta"]) == pytest.approx(kl_beta(update - 1, cfg), abs=1e-4)
    # an odd number of sentences means the two batches of that update differ in size: there,
    # the mean of the workers' means would differ from the logged (summed) per-sentence KL
    assert any(int(record["bsz"]) % 2 for record in single.values())

    first = checkpoint_utils.load_checkpoint_to_cpu(str(tmp_path / "one" / "checkpoint_last.pt"))
    second = checkpoint_utils.load_checkpoint_to_cpu(str(tmp_path / "two" / "checkpoint_last.pt"))
    assert first["optimizer_history"][-1]["num_updates"] == 3
    difference = max(
        (first["model"][k].double() - second["model"][k].double()).abs().max().item()
        for k in first["model"]
    )
    assert difference <= 1e-6


# --- what each worker draws, and BN-VAE's statistics -----------------------------------------

# batches of exactly 8 sentences: the workers' batches are the same size, so with a shared
# random state they would draw the same numbers for different sentences
RECORDED = [
    "--max-update",
    "3",
    "--batch-size",
    "8",
    "--word-dropout",
    "0.3",
    "--bn-vae-gamma",
    "0.6",
    "--disable-validation",
]
BN = "encoder.mu_batch_norm."


def recorded_run(data_bin, folder):
    """Two workers with RECORDED options; (rank 0's records, rank 1's, rank 0's checkpoint)."""
    folder.mkdir()
    train_two_workers(train_args(data_bin, folder, *RECORDED), FAIRSEQ_TRAIN_RECORDING, folder)
    records = [torch.load(folder / f"rank{rank}.pt") for rank in (0, 1)]
    state = checkpoint_utils.load_checkpoint_to_cpu(str(folder / "checkpoint_last.pt"))
    return records[0], records[1], state["model"]


@pytest.fixture(scope="module")
def two_worker_runs(data_bin, tmp_path_factory):
    """The same two-worker run, twice."""
    folder = tmp_path_factory.mktemp("recorded")
    return recorded_run(data_bin, folder / "first"), recorded_run(data_bin, folder / "again")


def test_two_workers_draw_their_own_posterior_noise(two_worker_runs):
    rank0, rank1, _ = two_worker_runs[0]
    assert len(rank0["noise"]) == len(rank1["noise"]) == 3  # one draw per update and worker
    for mine, theirs in zip(rank0["noise"], rank1["noise"]):
        assert mine.shape == theirs.shape == (8, 8)  # 8 sentences x latent 8
        # one shared random state would give the same numbers, up to rounding in z - mu
        assert (mine - theirs).abs().max() > 0.5
    # each worker's noise is still N(0, 1): 192 draws, sd of the mean 0.07, of the var 0.1
    for noise in (torch.cat(rank0["noise"]), torch.cat(rank1["noise"])):
        assert abs(noise.mean()) < 0.25 and abs(noise.var() - 1) < 0.35


def test_two_workers_draw_their_own_word_dropout_masks(two_worker_runs):
    rank0, rank1, _ = two_worker_runs[0]
    agree = candidates = 0
    for step in range(3):
        # a shared random state gives the same uniform draw to the same flat position of the
        # two workers' B x T batches: where both could drop, they would always agree
        n = min(rank0["dropped"][step].numel(), rank1["dropped"][step].numel())
        dropped = [r["dropped"][step].flatten()[:n] for r in (rank0, rank1)]
        both = rank0["droppable"][step].flatten()[:n] & rank1["droppable"][step].flatten()[:n]
        agree += int((dropped[0] == dropped[1])[both].sum())
        candidates += int(both.sum())
    # independent masks agree with probability 0.3^2 + 0.7^2 = 0.58
    assert candidates > 40
    assert agree / candidates < 0.8, (agree, candidates)
    for record in (rank0, rank1):
        rate = sum(int(d.sum()) for d in record["dropped"])
        rate /= sum(int(d.sum()) for d in record["droppable"])
        assert 0.15 < rate < 0.45  # each worker still drops 30% of what it may drop


def test_two_worker_run_repeats_itself(two_worker_runs):
    first, again = two_worker_runs
    for run, rerun in zip(first[:2], again[:2]):
        for key in ("noise", "dropped", "bn_input"):
            assert all(torch.equal(a, b) for a, b in zip(run[key], rerun[key])), key
    assert all(torch.equal(first[2][k], again[2][k]) for k in first[2])


def reference_statistics(batches, dim):
    """fp64 running mean and variance of BN-VAE's inputs, kept by torch's own batch norm."""
    mean, var = torch.zeros(dim, dtype=torch.float64), torch.ones(dim, dtype=torch.float64)
    for mu in batches:
        F.batch_norm(mu, mean, var, training=True, momentum=0.1, eps=1e-10)
    return mean, var


def test_bn_vae_with_two_workers_saves_rank_0s_statistics(two_worker_runs):
    # without buffer synchronisation (legacy_ddp) each worker averages its own batches, and
    # rank 0's statistics (the only ones saved) are those of rank 0's batches alone
    rank0, rank1, state = two_worker_runs[0]
    assert len(rank0["bn_input"]) == len(rank1["bn_input"]) == 3
    assert state[BN + "running_mean"].dtype == state[BN + "running_var"].dtype == torch.float32
    mean, var = reference_statistics(rank0["bn_input"], 8)
    torch.testing.assert_close(state[BN + "running_mean"].double(), mean, rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(state[BN + "running_var"].double(), var, rtol=1e-5, atol=1e-7)
    other_mean, _ = reference_statistics(rank1["bn_input"], 8)
    assert (other_mean - mean).abs().max() > 1e-3  # rank 1 saw other sentences


def test_bn_vae_statistics_under_fp16_training_are_fp32(data_bin, tmp_path):
    # fairseq's trainer halves the whole model for --fp16 (on CPU it needs unflattened grads)
    args = train_args(data_bin, tmp_path, *RECORDED, "--fp16", "--fp16-no-flatten-grads")
    out = train_one_worker(args, FAIRSEQ_TRAIN_RECORDING, tmp_path)
    assert "loss_scale" in out  # it did train with fairseq's fp16 optimizer
    records = torch.load(tmp_path / "rank0.pt")
    state = checkpoint_utils.load_checkpoint_to_cpu(str(tmp_path / "checkpoint_last.pt"))["model"]
    assert state["encoder.mlp_mu.0.weight"].dtype == torch.float32  # fairseq saves fp32 copies
    assert len(records["bn_input"]) == 3
    mean, var = reference_statistics(records["bn_input"], 8)
    # fp16 statistics would be off by up to 5e-4 near 1 (fp16's resolution there is 1e-3)
    torch.testing.assert_close(state[BN + "running_mean"].double(), mean, rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(state[BN + "running_var"].double(), var, rtol=1e-5, atol=1e-7)


def test_two_workers_start_finetuning_with_a_new_latent_module(data_bin, tiny_checkpoint, tmp_path):
    # fairseq broadcasts the checkpoint rank 0 loaded, as a copy that does not name its file
    args = train_args(
        data_bin,
        tmp_path,
        "--max-update",
        "2",
        "--bow-loss-weight",
        "1",
        "--finetune-from-model",
        tiny_checkpoint,
        "--disable-validation",
    )
    results = train_two_workers(args, FAIRSEQ_TRAIN_RECORDING, tmp_path)
    for _, out, err in results:
        assert "the checkpoint has no encoder.latent_bow (--bow-loss-weight)" in out + err
    state = checkpoint_utils.load_checkpoint_to_cpu(str(tmp_path / "checkpoint_last.pt"))
    assert state["optimizer_history"][-1]["num_updates"] == 2
    assert "encoder.latent_bow.weight" in state["model"]
