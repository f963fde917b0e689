"""End to end through fairseq's own command-line tools on a tiny temporary corpus."""

import json
import math
import re

import pytest
from conftest import USER_DIR, run_tool, train_args
from omegaconf import OmegaConf

from fairseq_vae.schedules import kl_beta
from fairseq_vae.tasks.text_vae import TextVAEConfig


def test_help_lists_every_option_with_help_text():
    out = run_tool(
        "fairseq-train",
        "--user-dir",
        USER_DIR,
        "--arch",
        "bart_vae",
        "--task",
        "text_vae",
        "--criterion",
        "elbo",
        "--help",
    )
    options = [
        "--latent-dim",
        "--latent-fusion",
        "--latent-memory-slots",
        "--latent-to-embeddings",
        "--word-dropout",
        "--kl-schedule",
        "--kl-beta-max",
        "--kl-cycles",
        "--kl-cycle-updates",
        "--kl-ramp-fraction",
        "--kl-ramp-shape",
        "--sawtooth-period",
        "--sawtooth-ratio",
        "--sawtooth-power",
        "--sawtooth-scale",
        "--sawtooth-hold",
        "--kl-objective",
        "--free-bits",
        "--free-bits-mode",
        "--capacity-max",
        "--capacity-updates",
        "--capacity-gamma",
        "--label-smoothing",
    ]
    # argparse's entries: "  --option METAVAR  help..." continued by indented lines
    entries = re.split(r"\n  (?=-)", out.split("\noptions:")[-1])
    helps = {entry.split()[0].rstrip(","): entry for entry in entries if entry.strip()}
    for option in options:
        assert option in helps, f"{option} missing from --help"
        text = helps[option].split(None, 1)[1] if len(helps[option].split(None, 1)) > 1 else ""
        words = re.findall(r"[a-z]{3,}", text.replace(option.upper().lstrip("-"), ""))
        assert len(words) >= 3, f"{option} has no help text: {helps[option]!r}"


def test_train_logs_the_scheduled_beta_then_validate_reports_kl_and_elbo(data_bin, tmp_path):
    save_dir = tmp_path / "checkpoints"
    out = run_tool(
        "fairseq-train",
        *train_args(
            data_bin,
            save_dir,
            "--max-update",
            "9",
            "--kl-cycle-updates",
            "4",
            "--kl-ramp-fraction",
            "0.5",
            "--log-format",
            "json",
            "--log-interval",
            "1",
        ),
    )
    records = [
        json.loads(line.split("| train_inner |", 1)[1])
        for line in out.splitlines()
        if "| train_inner |" in line
    ]
    assert len(records) == 9, out[-3000:]
    cfg = OmegaConf.structured(TextVAEConfig)
    cfg.kl_cycle_updates, cfg.kl_ramp_fraction, cfg.max_update = 4, 0.5, 9
    for record in records:
        update = int(record["num_updates"])
        # the step that made update k ran with update_num k - 1
        assert float(record["beta"]) == pytest.approx(kl_beta(update - 1, cfg), abs=1e-4)
        for key in ("kl", "elbo", "elbo_tok", "elbo_ppl", "nll_loss", "active_dims"):
            assert key in record, key
    assert [float(r["beta"]) for r in records[:6]] == pytest.approx([0, 0.5, 1, 1, 0, 0.5])

    out = run_tool(
        "fairseq-validate",
        data_bin,
        "--user-dir",
        USER_DIR,
        "--task",
        "text_vae",
        "--path",
        str(save_dir / "checkpoint_last.pt"),
        "--max-tokens",
        "400",
        "--required-batch-size-multiple",
        "1",
        "--cpu",
    )
    line = [ln for ln in out.splitlines() if "valid on" in ln][-1]
    values = dict(re.findall(r"\| (\w+) ([-\d.]+)", line))
    assert float(values["beta"]) == 1.0
    kl, elbo, loss_bits = float(values["kl"]), float(values["elbo"]), float(values["loss"])
    assert kl >= 0 and elbo < 0
    # at beta = 1 and no label smoothing the loss is -ELBO: bits per token against nats per
    # sentence, so they agree through the token count
    ntok = float(values["wpb"])
    assert loss_bits * math.log(2) * ntok == pytest.approx(-elbo * 40, rel=0.02)


def test_tensorboard_event_files_carry_kl_beta_elbo_and_active_dims(data_bin, tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    logdir = tmp_path / "tensorboard"
    out = run_tool(
        "fairseq-train",
        *train_args(
            data_bin,
            tmp_path / "checkpoints",
            "--max-update",
            "4",
            "--kl-cycle-updates",
            "4",
            "--kl-ramp-fraction",
            "0.5",
            "--log-interval",
            "1",
            "--tensorboard-logdir",
            logdir,
        ),
    )
    assert "tensorboard not found" not in out
    cfg = OmegaConf.structured(TextVAEConfig)
    cfg.kl_cycle_updates, cfg.kl_ramp_fraction, cfg.max_update = 4, 0.5, 4
    for split in ("train_inner", "valid"):
        events = EventAccumulator(str(logdir / split)).Reload()
        assert {"kl", "beta", "elbo", "active_dims"} <= set(events.Tags()["scalars"]), split
    events = EventAccumulator(str(logdir / "train_inner")).Reload()
    # one point per update (--log-interval 1), at the beta the schedule gave that update
    beta = [(event.step, event.value) for event in events.Scalars("beta")]
    assert [step for step, _ in beta] == [1, 2, 3, 4]
    assert [value for _, value in beta] == pytest.approx([kl_beta(s - 1, cfg) for s, _ in beta])
    assert all(event.value >= 0 for event in events.Scalars("kl"))
