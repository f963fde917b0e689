"""End to end through fairseq's own command-line tools on a tiny temporary corpus."""

import argparse
import dataclasses
import json
import math
import re

import pytest
import torch
from conftest import USER_DIR, autoencoder_sample, run_tool, train_args
from fairseq import checkpoint_utils
from fairseq.criterions.label_smoothed_cross_entropy import (
    LabelSmoothedCrossEntropyCriterionConfig,
)
from fairseq.models.bart import BARTModel
from omegaconf import OmegaConf
from torch.distributions import Normal, kl_divergence

from fairseq_vae.criterions.elbo import ELBOConfig
from fairseq_vae.models.bart_vae import BARTVAEModel
from fairseq_vae.models.latent import LOGVAR_MIN
from fairseq_vae.schedules import kl_beta
from fairseq_vae.tasks.text_vae import TextVAEConfig


def registered_options():
    """Every option this plugin registers: the model's add_args beyond BART's, the task's
    dataclass fields (less fairseq's own, interpolated from other groups) and the
    criterion's beyond label_smoothed_cross_entropy's. A new option is checked as it lands."""
    model, bart = argparse.ArgumentParser(), argparse.ArgumentParser()
    BARTVAEModel.add_args(model)
    BARTModel.add_args(bart)
    names = {o for a in model._actions for o in a.option_strings} - {
        o for a in bart._actions for o in a.option_strings
    }
    inherited = {f.name for f in dataclasses.fields(LabelSmoothedCrossEntropyCriterionConfig)}
    fields = [f for f in dataclasses.fields(TextVAEConfig) if f.name not in ("_name", "data")]
    fields += [f for f in dataclasses.fields(ELBOConfig) if f.name not in inherited]
    for f in fields:
        if not str(f.default).startswith("${"):  # II("optimization.max_update") and the like
            names.add("--" + f.name.replace("_", "-"))
    return sorted(names)


def test_registered_options_include_the_ones_the_old_list_missed():
    missed = {
        "--bn-vae-gamma",
        "--bow-loss-weight",
        "--reset-decoder",
        "--untie-encoder-embeddings",
        "--latent-layer-memory",
        "--kl-zero-fraction",
        "--latent-source",
        "--prior-samples",
    }
    options = registered_options()
    assert missed <= set(options)
    assert {"--latent-dim", "--kl-schedule", "--free-bits", "--capacity-gamma"} <= set(options)
    assert not {"--max-update", "--train-subset", "--dataset-impl", "--encoder-layers"} & set(
        options
    )


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
    # argparse's entries: "  --option METAVAR  help..." continued by indented lines
    entries = re.split(r"\n  (?=-)", out.split("\noptions:")[-1])
    helps = {entry.split()[0].rstrip(","): entry for entry in entries if entry.strip()}
    for option in registered_options():
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
    expected_kl, expected_elbo, stderr = posterior_kl_and_elbo(
        str(save_dir / "checkpoint_last.pt"), data_bin
    )
    # the KL is analytic: the checkpoint's posteriors give it to the logged 3 decimals
    assert kl == pytest.approx(expected_kl, abs=1e-3)
    # the logged -ELBO uses one posterior sample per sentence: within 5 standard errors of
    # the mean over many samples
    assert abs(elbo - expected_elbo) <= 5 * stderr + 2e-3, (elbo, expected_elbo, stderr)
    # at beta = 1 and no label smoothing the loss is -ELBO: bits per token against nats per
    # sentence, so they agree through the token count
    ntok = float(values["wpb"])
    assert loss_bits * math.log(2) * ntok == pytest.approx(-elbo * 40, rel=0.02)


def valid_split_batch(checkpoint, data):
    """(model in eval mode, dictionary, the whole valid split as one batch) of a checkpoint."""
    models, _, task = checkpoint_utils.load_model_ensemble_and_task([checkpoint], {"data": data})
    task.load_dataset("valid")
    dictionary = task.source_dictionary
    lines = [dictionary.string(item["source"]) for item in task.dataset("valid")]
    return models[0].eval(), dictionary, autoencoder_sample(dictionary, lines)


def posterior_kl_and_elbo(checkpoint, data, samples=32):
    """(mean KL, mean one-sample ELBO, standard error of a one-sample estimate) over the valid
    split, per sentence in nats, from the checkpoint's model in-process with
    torch.distributions: the independent computation fairseq-validate's numbers must match."""
    model, dictionary, sample = valid_split_batch(checkpoint, data)
    net_input, target = sample["net_input"], sample["target"]
    with torch.no_grad():
        mu, logvar = model.encoder.posterior(net_input["src_tokens"], net_input["src_lengths"])
        q = Normal(mu.double(), torch.exp(0.5 * logvar.double()))
        kl = kl_divergence(q, Normal(0.0, 1.0)).sum(dim=1)  # per sentence
        nll = []
        for _ in range(samples):  # z ~ q(z|x): the encoder's default in validation
            logits, _ = model(**net_input)
            lprobs = torch.log_softmax(logits.double(), dim=-1)
            token_nll = -lprobs.gather(-1, target[..., None])[..., 0]
            nll.append((token_nll * target.ne(dictionary.pad())).sum(dim=1))
    nll = torch.stack(nll)  # samples x sentences
    n = target.size(0)
    elbo = -(nll.mean() + kl.mean())
    # the logged value is a mean over n sentences of one draw each; ours has its own noise
    stderr = (nll.var(dim=0).sum() * (1 + 1 / samples)).sqrt() / n
    return float(kl.mean()), float(elbo), float(stderr)


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


def generated(data, checkpoint, *args):
    """fairseq-generate's hypotheses on the valid split, {sample id: text}."""
    out = run_tool(
        "fairseq-generate",
        data,
        "--user-dir",
        USER_DIR,
        "--task",
        "text_vae",
        "--path",
        checkpoint,
        "--gen-subset",
        "valid",
        "--beam",
        "1",
        "--cpu",
        *args,
    )
    return dict(re.findall(r"^H-(\d+)\t\S+\t(.*)$", out, flags=re.M))


def with_posterior_variance(checkpoint, log_variance, path):
    """The checkpoint with every posterior variance set to exp(log_variance) (the log-variance
    head made constant); the posterior means are unchanged."""
    state = torch.load(checkpoint)
    state["model"]["encoder.mlp_logvar.2.weight"].zero_()
    state["model"]["encoder.mlp_logvar.2.bias"].fill_(log_variance)
    torch.save(state, path)
    return str(path)


def test_posterior_sample_decodes_mu_plus_sigma_noise(data_bin, tiny_checkpoint, tmp_path):
    mean = generated(data_bin, tiny_checkpoint, "--latent-source", "posterior-mean")
    assert len(mean) == 40
    sample = ["--latent-source", "posterior-sample"]

    # sigma = exp(-15): z = mu + sigma * eps is mu to fp32 precision, whatever the seed
    narrow = with_posterior_variance(tiny_checkpoint, LOGVAR_MIN, tmp_path / "narrow.pt")
    assert generated(data_bin, narrow, *sample, "--seed", "1") == mean
    assert generated(data_bin, narrow, *sample, "--seed", "2") == mean

    # sigma = exp(4) ~ 55 (the tiny decoder reads z weakly): other latents than mu, drawn
    # from the seed
    wide = with_posterior_variance(tiny_checkpoint, 8.0, tmp_path / "wide.pt")
    first = generated(data_bin, wide, *sample, "--seed", "1")
    assert sorted(first) == sorted(mean)
    assert sum(first[i] != mean[i] for i in mean) >= 10
    assert generated(data_bin, wide, *sample, "--seed", "1") == first
    other = generated(data_bin, wide, *sample, "--seed", "2")
    assert sum(first[i] != other[i] for i in mean) >= 10
    # the same wide checkpoint decodes mu under posterior-mean: the noise made the difference
    assert generated(data_bin, wide, "--latent-source", "posterior-mean") == mean


def test_validation_iw_nll_picks_checkpoint_best_and_matches_an_independent_estimate(
    data_bin, tmp_path
):
    save_dir = tmp_path / "checkpoints"
    k = 30
    out = run_tool(
        "fairseq-train",
        *train_args(
            data_bin,
            save_dir,
            "--max-update",
            "36",
            "--kl-schedule",
            "constant",
            "--valid-iw-samples",
            str(k),
            "--best-checkpoint-metric",
            "iw_nll",
            "--log-format",
            "json",
        ),
    )
    epochs = [
        json.loads(line.split("| valid |", 1)[1])
        for line in out.splitlines()
        if "| valid |" in line
    ]
    assert len(epochs) >= 3, out[-3000:]
    for record in epochs:
        # K = 30 importance samples bound log p(x) more tightly than the one-sample -ELBO
        assert float(record["valid_iw_nll"]) < float(record["valid_loss"]), record
        assert float(record["valid_iw_ppl"]) == pytest.approx(
            2 ** float(record["valid_iw_nll"]), rel=1e-2
        )
    iw = [float(r["valid_iw_nll"]) for r in epochs]
    best_epoch = int(epochs[iw.index(min(iw))]["epoch"])
    best = checkpoint_utils.load_checkpoint_to_cpu(str(save_dir / "checkpoint_best.pt"))
    assert best["extra_state"]["train_iterator"]["epoch"] == best_epoch
    assert best["extra_state"]["best"] == pytest.approx(min(iw), abs=1e-3)

    # the same bound computed here: torch.distributions densities and float64 log-softmax
    # over the decoder given each z, fresh draws, so agreement is up to Monte Carlo noise
    model, dictionary, sample = valid_split_batch(str(save_dir / "checkpoint_best.pt"), data_bin)
    net_input, target = sample["net_input"], sample["target"]
    torch.manual_seed(0)
    with torch.no_grad():
        mu, logvar = model.encoder.posterior(net_input["src_tokens"], net_input["src_lengths"])
        q = Normal(mu.double(), torch.exp(0.5 * logvar.double()))
        log_w = []
        for _ in range(k):
            z = q.sample()
            given = model.encoder(net_input["src_tokens"], net_input["src_lengths"], z=z.float())
            logits, _ = model.decoder(net_input["prev_output_tokens"], encoder_out=given)
            lprobs = torch.log_softmax(logits.double(), dim=-1)
            token_ll = lprobs.gather(-1, target[..., None])[..., 0]
            log_px_z = (token_ll * target.ne(dictionary.pad())).sum(dim=1)
            log_pz = Normal(0.0, 1.0).log_prob(z).sum(1)
            log_w.append(log_px_z + log_pz - q.log_prob(z).sum(1))
        log_px = torch.logsumexp(torch.stack(log_w), dim=0) - math.log(k)
    bits_per_token = float(-log_px.sum()) / sample["ntokens"] / math.log(2)
    assert bits_per_token == pytest.approx(min(iw), rel=0.01)
