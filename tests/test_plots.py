"""scripts/plot_training.py and scripts/plot_latent.py: what they draw (the data read back
from the matplotlib Figure each returns) is the log's numbers and the posterior means' PCA."""

import importlib.util
import json
import os

import numpy as np
import pytest
import torch
from conftest import ROOT, build_tiny, encode_lines, random_sentences
from matplotlib import image
from vae_fixtures import make_data_bin, save_checkpoint


def load_script(name):
    spec = importlib.util.spec_from_file_location(name, os.path.join(ROOT, "scripts", name + ".py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def assert_png_written(path, fig):
    """The PNG holds the figure at the scripts' 100 dpi."""
    pixels = image.imread(str(path))  # H x W x 4
    width, height = fig.get_size_inches() * 100
    assert pixels.shape[:2] == (round(height), round(width)), pixels.shape


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
    fig = plot_training.main([str(log), "--output", str(output)])
    assert_png_written(output, fig)
    # what is drawn, against the records the log was written from
    valid_point = {"simple": (30, {"kl": 4.1, "nll_loss": 6.1, "elbo": -61.2, "beta": 1.0})}
    valid_point["json"] = (60, valid_point["simple"][1])
    update, valid_values = valid_point[fmt]
    records = list(training_records())
    for ax, (key, title) in zip(fig.axes, plot_training.PANELS):
        assert ax.get_title() == title
        train_line, valid_line = ax.get_lines()
        expected = [(r["num_updates"], r[key]) for r in records]
        np.testing.assert_allclose(train_line.get_xydata(), expected)
        np.testing.assert_allclose(valid_line.get_xydata(), [(update, valid_values[key])])
        assert valid_line.get_linestyle() == "None" and valid_line.get_marker() == "o"


def test_plot_training_marks_a_metric_the_log_lacks(tmp_path):
    plot_training = load_script("plot_training")
    train = [{"num_updates": 10, "kl": 2.0}, {"num_updates": 20, "kl": 3.0}]
    fig = plot_training.plot(train, [], str(tmp_path / "t.png"))
    panels = dict(zip([key for key, _ in plot_training.PANELS], fig.axes))
    np.testing.assert_allclose(panels["kl"].get_lines()[0].get_xydata(), [(10, 2.0), (20, 3.0)])
    assert [t.get_text() for t in panels["beta"].texts] == ["no 'beta' in the log"]
    assert panels["beta"].get_lines() == []


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
    # the posterior means, from the encoder on the sentences' tokens
    with torch.no_grad():
        mu, _ = model.encoder.posterior(*encode_lines(task.source_dictionary, lines))
    return data, checkpoint, str(labels), lines, mu.double().numpy()


def pca_by_hand(points):
    """(N x 2 projection on the first two principal axes, their shares of the variance)."""
    centred = points - points.mean(axis=0)
    _, singular, axes = np.linalg.svd(centred, full_matrices=False)
    return centred @ axes[:2].T, singular[:2] ** 2 / (singular**2).sum()


def assert_same_up_to_axis_signs(drawn, expected):
    signs = np.sign((drawn * expected).sum(axis=0))  # a principal axis has no sign of its own
    np.testing.assert_allclose(drawn, expected * signs, atol=1e-4)


@pytest.mark.parametrize("colour", [True, False], ids=["labels", "no-labels"])
def test_plot_latent_draws_the_pca_of_the_posterior_means(tiny_checkpoint, tmp_path, colour):
    plot_latent = load_script("plot_latent")
    data, checkpoint, labels, lines, mu = tiny_checkpoint
    output = tmp_path / "latent.png"
    argv = [data, "--path", checkpoint, "--gen-subset", "test", "--output", str(output), "--cpu"]
    if colour:
        argv += ["--labels", labels, "--color-by", "long"]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # two shared cores: one thread each is the fast way
    try:
        fig = plot_latent.main(argv)
    finally:
        torch.set_num_threads(threads)
    assert_png_written(output, fig)
    (ax,) = fig.axes
    expected, shares = pca_by_hand(mu)
    for label, share in zip((ax.get_xlabel(), ax.get_ylabel()), shares):
        assert f"({100 * share:.1f}% of variance)" in label, (label, share)
    scatters = ax.collections
    if not colour:
        assert len(scatters) == 1
        assert_same_up_to_axis_signs(scatters[0].get_offsets().data, expected)
        return
    # one scatter per label value, each with that value's sentences in line order
    long = [len(s.split()) > 5 for s in lines]
    assert [c.get_label() for c in scatters] == ["False", "True"]
    drawn = np.zeros_like(expected)
    for scatter, value in zip(scatters, (False, True)):
        rows = [i for i, is_long in enumerate(long) if is_long == value]
        assert len(scatter.get_offsets()) == len(rows)
        drawn[rows] = scatter.get_offsets().data
    assert_same_up_to_axis_signs(drawn, expected)
    colours = [tuple(c.get_facecolor()[0]) for c in scatters]
    assert colours[0] != colours[1]
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["False", "True"]
