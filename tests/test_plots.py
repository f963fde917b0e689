"""scripts/plot_training.py and scripts/plot_latent.py write PNGs with something drawn in them."""

import importlib.util
import json
import os

import numpy as np
import pytest
import torch
from conftest import ROOT, build_tiny, random_sentences
from matplotlib import image
from vae_fixtures import make_data_bin, save_checkpoint


def load_script(name):
    spec = importlib.util.spec_from_file_location(name, os.path.join(ROOT, "scripts", name + ".py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def assert_png_has_content(path, min_width, min_height):
    pixels = image.imread(str(path))  # H x W x 4 floats in [0, 1]
    height, width = pixels.shape[:2]
    assert width >= min_width and height >= min_height, pixels.shape
    rgb = pixels[..., :3]
    not_white = (rgb < 0.95).any(axis=-1).mean()
    assert not_white > 0.02, f"only {not_white:.1%} of the image is drawn"
    colours = len(np.unique((rgb * 255).astype(np.uint8).reshape(-1, 3), axis=0))
    assert colours > 20, f"{colours} colours: a blank or single-colour image"


def training_records(updates=(10, 20, 30, 40, 50, 60)):
    for u in updates:
        beta = (u % 40) / 40
        yield {
            "loss": 9.0 - u / 20,
            "nll_loss": 8.5 - u / 25,
            "kl": 2.0 + u / 10,
            "elbo": -80.0 + u / 2,
            "elbo_tok": -5.8,
            "beta": beta,
            "active_dims": 3,
            "ppl": 300.0,
            "wps": 1000,
            "ups": 2.1,
            "wpb": 1200,
            "bsz": 96,
            "num_updates": u,
            "lr": 0.0005,
            "gnorm": 1.2,
            "wall": u,
        }


def simple_log():
    """Lines as fairseq-train prints them with --log-format simple."""
    lines = ["2024-05-01 12:00:00 | INFO | fairseq_cli.train | task: TextVAETask"]
    for i, r in enumerate(training_records()):
        stats = ", ".join(f"{k}={v}" for k, v in r.items())
        lines.append(
            f"2024-05-01 12:00:0{i} | INFO | train_inner | epoch 001:   {10 * i:4d} / 59 {stats}"
        )
        if r["num_updates"] == 30:
            lines.append(
                "2024-05-01 12:00:09 | INFO | valid | epoch 001 | valid on 'valid' "
                "subset | loss 6.1 | nll_loss 6.1 | kl 4.1 | elbo -61.2 | beta 1 | "
                "wpb 1200 | bsz 96 | num_updates 30 | best_elbo -61.2"
            )
    return "\n".join(lines) + "\n"


def json_log():
    """Lines as fairseq-train prints them with --log-format json (values as strings)."""
    lines = ["2024-05-01 12:00:00 | INFO | fairseq_cli.train | task: TextVAETask"]
    for i, r in enumerate(training_records()):
        record = {"epoch": 1, "update": 0.1 * i, **{k: str(v) for k, v in r.items()}}
        lines.append(f"2024-05-01 12:00:0{i} | INFO | train_inner | {json.dumps(record)}")
    valid = {
        "epoch": 1,
        "valid_loss": "6.1",
        "valid_kl": "4.1",
        "valid_elbo": "-61.2",
        "valid_nll_loss": "6.1",
        "valid_beta": "1",
        "valid_num_updates": "60",
    }
    lines.append(f"2024-05-01 12:00:09 | INFO | valid | {json.dumps(valid)}")
    return "\n".join(lines) + "\n"


@pytest.mark.parametrize("fmt", ["simple", "json"])
def test_plot_training_reads_both_log_formats(tmp_path, fmt):
    plot_training = load_script("plot_training")
    text = simple_log() if fmt == "simple" else json_log()
    train, valid = plot_training.parse_log(text.splitlines())
    assert [r["num_updates"] for r in train] == [10, 20, 30, 40, 50, 60]
    assert [r["beta"] for r in train] == [0.25, 0.5, 0.75, 0.0, 0.25, 0.5]
    assert train[2]["kl"] == 5.0 and train[2]["elbo"] == -65.0 and train[2]["nll_loss"] == 7.3
    assert len(valid) == 1 and valid[0]["kl"] == 4.1 and valid[0]["elbo"] == -61.2
    log = tmp_path / "train.log"
    log.write_text(text)
    output = tmp_path / "training.png"
    plot_training.main([str(log), "--output", str(output)])
    assert_png_has_content(output, 800, 600)


@pytest.fixture(scope="module")
def tiny_checkpoint(dict_dir, tmp_path_factory):
    folder = tmp_path_factory.mktemp("latent")
    lines = random_sentences(40, seed=3)
    data = make_data_bin(str(folder / "bin"), dict_dir, {"test": lines})
    task, model, args = build_tiny(dict_dir)
    checkpoint = str(folder / "checkpoint.pt")
    save_checkpoint(checkpoint, model, args)
    labels = folder / "labels.tsv"
    rows = "".join(f"{s.split()[0]}\t{len(s.split()) > 5}\n" for s in lines)
    labels.write_text("first\tlong\n" + rows)
    return data, checkpoint, str(labels)


@pytest.mark.parametrize("colour", [True, False], ids=["labels", "no-labels"])
def test_plot_latent_draws_the_posterior_means(tiny_checkpoint, tmp_path, colour):
    plot_latent = load_script("plot_latent")
    data, checkpoint, labels = tiny_checkpoint
    output = tmp_path / "latent.png"
    argv = [data, "--path", checkpoint, "--gen-subset", "test", "--output", str(output), "--cpu"]
    if colour:
        argv += ["--labels", labels, "--color-by", "long"]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # two shared cores: one thread each is the fast way
    try:
        plot_latent.main(argv)
    finally:
        torch.set_num_threads(threads)
    assert_png_has_content(output, 600, 500)
