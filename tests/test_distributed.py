"""fairseq's own data-parallel training with the plugin: two CPU workers over gloo, on loopback.

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
from conftest import train_args
from fairseq import checkpoint_utils
from omegaconf import OmegaConf

from fairseq_vae.schedules import kl_beta
from fairseq_vae.tasks.text_vae import TextVAEConfig

# fairseq seeds every worker with --seed + the update number, so worker 1 draws for batch 1 the
# noise one process draws for batch 0: posterior samples (like dropout) cannot match between
# the two layouts, and both decode from the posterior mean here. Everything else is the real
# path: sharding of batches, gradient all-reduce and normalisation, summed logging outputs.
FAIRSEQ_TRAIN_WITHOUT_NOISE = """
import sys
from fairseq_cli.train import cli_main  # first: it sets up fairseq's logging
import fairseq_vae.models.bart_vae as bart_vae
bart_vae.reparameterize = lambda mu, logvar: mu
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


def fairseq_train(args):
    return [sys.executable, "-c", FAIRSEQ_TRAIN_WITHOUT_NOISE, *map(str, args)]


def test_two_workers_match_one_worker_with_update_freq_2(data_bin, tmp_path):
    env = dict(os.environ, OMP_NUM_THREADS="1")  # two workers on two cores
    one = subprocess.run(
        fairseq_train(train_args(data_bin, tmp_path / "one", *OPTIONS, "--update-freq", "2")),
        capture_output=True,
        text=True,
        timeout=600,
        env=env,
    )
    assert one.returncode == 0, one.stderr[-3000:]

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
            fairseq_train(
                train_args(
                    data_bin, tmp_path / "two", *OPTIONS, *distributed, "--distributed-rank", rank
                )
            ),
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
    for worker, (_, err) in zip(workers, outs):
        assert worker.returncode == 0, err[-3000:]

    single, pair = train_records(one.stdout), train_records(outs[0][0])
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
