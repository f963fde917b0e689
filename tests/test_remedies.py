"""Remedies that raise the latent's information: BN-VAE, decoder re-initialisation (Li et al.
2019), z in every decoder layer's memory and the bag-of-words loss (Zhao et al. 2017), each
checked against its definition."""

import re

import pytest
import torch
import torch.nn.functional as F
from conftest import (
    autoencoder_sample,
    build_tiny,
    encode_lines,
    random_sentences,
    run_tool,
    train_args,
)
from fairseq import checkpoint_utils

import fairseq_vae  # noqa: F401  (safe globals for torch.load)
from fairseq_vae.criterions.elbo import bag_of_words_nll
from fairseq_vae.models.checkpoint_compat import DECODER_RESET_MARKER


def raw_means(model, src, src_len):
    """mlp_mu's output before the batch norm, from the encoder's own pooled states."""
    encoder = model.encoder
    norm, encoder.mu_batch_norm = encoder.mu_batch_norm, None
    try:
        return encoder.posterior(src, src_len)[0]
    finally:
        encoder.mu_batch_norm = norm


def test_bn_vae_batch_moments_are_fixed(dict_dir):
    # over a training batch, mean_b mu_bd = shift_d and mean_b mu_bd^2 = gamma^2 + shift_d^2
    # (var / (var + eps) away from it), so the KL of every dimension has a floor
    task, model, _ = build_tiny(dict_dir, "--bn-vae-gamma", "0.7")
    shift = torch.linspace(-1.0, 1.0, model.encoder.latent_dim)
    model.encoder.mu_batch_norm.shift.data.copy_(shift)
    src, src_len = encode_lines(task.source_dictionary, random_sentences(64, seed=1))
    model.train()
    mu, _ = model.encoder.posterior(src, src_len)
    var = raw_means(model, src, src_len).var(dim=0, unbiased=False)
    torch.testing.assert_close(mu.mean(dim=0), shift, atol=1e-5, rtol=0)
    expected = 0.49 * var / (var + 1e-10) + shift**2
    torch.testing.assert_close(mu.pow(2).mean(dim=0), expected, atol=1e-5, rtol=1e-5)
    assert (mu.pow(2).mean(dim=0) > 0.48).all()


def test_bn_vae_matches_torch_batch_norm_in_training_and_eval(dict_dir):
    task, model, _ = build_tiny(dict_dir, "--bn-vae-gamma", "0.5")
    norm = model.encoder.mu_batch_norm
    norm.shift.data.normal_()
    dim = model.encoder.latent_dim
    weight = torch.full((dim,), 0.5)
    running_mean, running_var = torch.zeros(dim), torch.ones(dim)  # torch's reference state
    d = task.source_dictionary
    for seed in (2, 3):
        src, src_len = encode_lines(d, random_sentences(16, seed=seed))
        model.train()
        raw = raw_means(model, src, src_len).detach()
        expected = F.batch_norm(
            raw,
            running_mean,
            running_var,
            weight,
            norm.shift.detach(),
            training=True,
            momentum=0.1,
            eps=1e-10,
        )
        torch.testing.assert_close(model.encoder.posterior(src, src_len)[0], expected)
    torch.testing.assert_close(norm.running_mean, running_mean)
    torch.testing.assert_close(norm.running_var, running_var)
    # evaluation normalises with the running statistics, so a sentence's mu is its own
    model.eval()
    src, src_len = encode_lines(d, random_sentences(5, seed=4))
    raw = raw_means(model, src, src_len)
    expected = F.batch_norm(
        raw, running_mean, running_var, weight, norm.shift.detach(), training=False, eps=1e-10
    )
    mu = model.encoder.posterior(src, src_len)[0]
    torch.testing.assert_close(mu, expected)
    torch.testing.assert_close(model.encoder.posterior(src[:1], src_len[:1])[0], mu[:1])


# fairseq's trainer casts the whole model for --fp16 and --bf16
CASTS = {"fp16": lambda m: m.half(), "bf16": lambda m: m.to(torch.bfloat16)}


@pytest.mark.parametrize("precision", ["fp16", "bf16"])
def test_bn_vae_statistics_stay_fp32_when_the_model_is_cast(dict_dir, tmp_path, precision):
    task, model, args = build_tiny(dict_dir, "--bn-vae-gamma", "0.6")
    model = CASTS[precision](model)
    assert model.encoder.mlp_mu[0].weight.dtype != torch.float32  # the cast did happen
    norm = model.encoder.mu_batch_norm
    seen = []
    norm.register_forward_pre_hook(lambda module, inputs: seen.append(inputs[0].detach().double()))
    criterion = task.build_criterion(args)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
    model.train()
    for step in range(8):
        sample = autoencoder_sample(task.source_dictionary, random_sentences(16, seed=20 + step))
        loss, sample_size, _ = criterion(model, sample)
        optimizer.zero_grad()
        (loss / sample_size).backward()  # normalised as fairseq's optimizer step is
        optimizer.step()
    # torch's batch norm keeping the same statistics of the same inputs in fp64
    mean = torch.zeros(model.encoder.latent_dim, dtype=torch.float64)
    var = torch.ones(model.encoder.latent_dim, dtype=torch.float64)
    for mu in seen:
        F.batch_norm(mu, mean, var, training=True, momentum=0.1, eps=1e-10)
    assert len(seen) == 8 and (var - 1).abs().max() > 1e-3  # they moved
    # in fp16 or bf16 they would be off by 1e-4 to 1e-3: updates of 0.1 x a small change round
    # away near 1
    torch.testing.assert_close(norm.running_mean.double(), mean, rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(norm.running_var.double(), var, rtol=1e-5, atol=1e-7)
    assert norm.running_mean.dtype == norm.running_var.dtype == torch.float32

    # the trainer casts a new model, then loads the checkpoint into it; the hub casts after
    torch.save(model.state_dict(), tmp_path / "model.pt")
    state = torch.load(tmp_path / "model.pt")
    assert state["encoder.mu_batch_norm.running_var"].dtype == torch.float32
    _, cast_then_loaded, _ = build_tiny(dict_dir, "--bn-vae-gamma", "0.6")
    cast_then_loaded = CASTS[precision](cast_then_loaded)
    cast_then_loaded.load_state_dict(state)
    _, loaded_then_cast, _ = build_tiny(dict_dir, "--bn-vae-gamma", "0.6")
    loaded_then_cast.load_state_dict(state)
    loaded_then_cast = CASTS[precision](loaded_then_cast)
    for reloaded in (cast_then_loaded, loaded_then_cast):
        for name in ("running_mean", "running_var"):
            buffer = getattr(reloaded.encoder.mu_batch_norm, name)
            assert buffer.dtype == torch.float32
            assert torch.equal(buffer, getattr(norm, name))


def load_model(path):
    models, _, _ = checkpoint_utils.load_model_ensemble_and_task([str(path)])
    return models[0].eval()


def test_bn_vae_checkpoint_keeps_running_statistics(data_bin, tmp_path):
    run_tool(
        "fairseq-train",
        *train_args(data_bin, tmp_path, "--max-update", "6", "--bn-vae-gamma", "0.6"),
    )
    state = torch.load(tmp_path / "checkpoint_last.pt", map_location="cpu")["model"]
    key = "encoder.mu_batch_norm."
    # six updates moved the statistics away from their initial 0 and 1
    assert state[key + "running_mean"].abs().max() > 1e-3
    assert (state[key + "running_var"] - 1).abs().max() > 1e-3
    model = load_model(tmp_path / "checkpoint_last.pt")
    src, src_len = encode_lines(model.encoder.dictionary, random_sentences(4, seed=7))
    raw = raw_means(model, src, src_len)
    expected = F.batch_norm(
        raw,
        state[key + "running_mean"],
        state[key + "running_var"],
        torch.full((raw.size(1),), 0.6),
        state[key + "shift"],
        training=False,
        eps=1e-10,
    )
    torch.testing.assert_close(model.encoder.posterior(src, src_len)[0], expected)


def is_decoder_side(key):
    shared = key in ("decoder.embed_tokens.weight", "decoder.output_projection.weight")
    return key.startswith(("decoder.", "encoder.latent_attn.")) and not shared


def test_reset_decoder_keeps_the_encoder_and_reinitialises_the_decoder(data_bin, tmp_path):
    # phase 1: an autoencoder (beta = 0)
    phase1 = tmp_path / "phase1"
    run_tool(
        "fairseq-train",
        *train_args(
            data_bin,
            phase1,
            "--max-update",
            "15",
            "--kl-schedule",
            "constant",
            "--kl-beta-max",
            "0",
        ),
    )
    # phase 2 at --lr 0 (Adam's step is exactly zero: the saved model is the model as loaded),
    # and a run from scratch with the same seed: the fresh initialisation to compare with
    phase2, scratch = tmp_path / "phase2", tmp_path / "scratch"
    common = ["--max-update", "1", "--lr", "0", "--free-bits", "0.5", "--disable-validation"]
    phase1_model = phase1 / "checkpoint_last.pt"
    out = run_tool(
        "fairseq-train",
        *train_args(
            data_bin, phase2, *common, "--reset-decoder", "--finetune-from-model", phase1_model
        ),
    )
    assert "decoder-side tensors re-initialised" in out
    run_tool("fairseq-train", *train_args(data_bin, scratch, *common, "--reset-decoder"))
    trained = torch.load(phase1 / "checkpoint_last.pt", map_location="cpu")["model"]
    fresh = torch.load(scratch / "checkpoint_last.pt", map_location="cpu")["model"]
    result = torch.load(phase2 / "checkpoint_last.pt", map_location="cpu")["model"]
    decoder_keys = [k for k in trained if is_decoder_side(k)]
    assert "decoder.layers.0.encoder_attn.k_proj.weight" in decoder_keys
    assert "encoder.latent_attn.v_proj.weight" in decoder_keys
    # training moved the decoder away from its initialisation, so "fresh" is not "trained"
    fc1 = "decoder.layers.0.fc1.weight"
    assert not torch.equal(trained[fc1], fresh[fc1])
    for key in trained:
        if is_decoder_side(key):
            assert torch.equal(result[key], fresh[key]), key
        else:  # the encoder, the posterior heads, the shared embeddings
            assert torch.equal(result[key], trained[key]), key
    # the phase-2 checkpoint carries the marker: loading it (evaluation, a restart) keeps its
    # decoder instead of resetting it again
    assert DECODER_RESET_MARKER in result
    reloaded = load_model(phase2 / "checkpoint_last.pt").state_dict()
    for key in decoder_keys:
        assert torch.equal(reloaded[key], result[key]), key


def test_layer_memory_appends_each_layers_own_projection_of_z(dict_dir):
    task, model, _ = build_tiny(dict_dir, "--latent-layer-memory", "--decoder-layers", "2")
    d = task.source_dictionary
    src, src_len = encode_lines(d, random_sentences(3, seed=8))
    prev, _ = encode_lines(d, random_sentences(3, seed=9))
    seen = {}

    def keep_memory(idx):
        def hook(module, args, kwargs):
            seen[idx] = kwargs["key"]

        return hook

    for idx, layer in enumerate(model.decoder.layers):
        layer.encoder_attn.register_forward_pre_hook(keep_memory(idx), with_kwargs=True)
    model.encoder.latent_source = "mean"
    encoder_out = model.encoder(src, src_len)
    model.decoder(prev, encoder_out=encoder_out)
    z, shared = encoder_out["z"][0], encoder_out["encoder_out"][0]  # B x latent, 1 x B x C
    for idx, proj in enumerate(model.decoder.latent_layer_memory):
        own = (z @ proj.weight.T + proj.bias)[None]
        torch.testing.assert_close(seen[idx], torch.cat([shared, own]))
    assert not torch.allclose(seen[0][1], seen[1][1])  # a separate projection per layer


def test_latent_to_output_adds_one_projection_of_z_to_every_positions_features(dict_dir):
    task, model, _ = build_tiny(dict_dir, "--latent-to-output")
    d = task.source_dictionary
    src, src_len = encode_lines(d, random_sentences(3, seed=8))
    prev, _ = encode_lines(d, random_sentences(3, seed=9))
    model.encoder.latent_source = "mean"
    encoder_out = model.encoder(src, src_len)
    with_z, _ = model.decoder(prev, encoder_out=encoder_out, features_only=True)
    proj = model.decoder.latent_to_output
    model.decoder.latent_to_output = None  # the same decoder without the path
    without, _ = model.decoder(prev, encoder_out=encoder_out, features_only=True)
    z = encoder_out["z"][0]
    shift = (z @ proj.weight.T + proj.bias)[:, None, :].expand_as(without)
    torch.testing.assert_close(with_z - without, shift)
    # and the logits are the output layer of those features
    model.decoder.latent_to_output = proj
    logits, _ = model.decoder(prev, encoder_out=encoder_out)
    torch.testing.assert_close(logits, model.decoder.output_layer(with_z))


def test_layer_memory_incremental_decoding_matches_the_full_forward(dict_dir):
    task, model, _ = build_tiny(
        dict_dir, "--latent-layer-memory", "--latent-to-embeddings", "--latent-to-output"
    )
    d = task.source_dictionary
    src, src_len = encode_lines(d, random_sentences(2, seed=10))
    prev, _ = encode_lines(d, ["the cat sat on", "a dog ran under"])
    model.encoder.latent_source = "mean"
    encoder_out = model.encoder(src, src_len)
    full, _ = model.decoder(prev, encoder_out=encoder_out)
    state = {}
    steps = [
        model.decoder(prev[:, : t + 1], encoder_out=encoder_out, incremental_state=state)[0]
        for t in range(prev.size(1))
    ]
    torch.testing.assert_close(torch.cat(steps, dim=1), full, atol=1e-5, rtol=1e-5)


def test_bag_of_words_nll_scores_every_token_with_one_distribution_per_sentence():
    torch.manual_seed(0)
    logits = torch.randn(3, 11)
    pad = 1
    target = torch.tensor([[4, 7, 4, 2], [9, 2, pad, pad], [0, 10, 3, 2]])
    expected = 0.0
    for b in range(3):
        words = torch.distributions.Categorical(logits=logits[b])
        expected -= sum(words.log_prob(t) for t in target[b] if t != pad)
    torch.testing.assert_close(bag_of_words_nll(logits, target, pad), expected)
    # the order of a sentence's words does not matter
    shuffled = target.clone()
    shuffled[0] = target[0, [3, 1, 0, 2]]
    torch.testing.assert_close(bag_of_words_nll(logits, shuffled, pad), expected)


def test_bow_loss_is_added_to_the_training_loss_only(dict_dir):
    task, model, args = build_tiny(dict_dir, "--bow-loss-weight", "0.5")
    _, plain, plain_args = build_tiny(dict_dir)
    # the same weights without the head: same z and the same -ELBO, no bag-of-words term
    plain.load_state_dict({k: v for k, v in model.state_dict().items() if "latent_bow" not in k})
    sample = autoencoder_sample(task.source_dictionary, random_sentences(6, seed=11))
    criterion, plain_criterion = task.build_criterion(args), task.build_criterion(plain_args)
    for training in (True, False):
        model.train(training)
        plain.train(training)
        torch.manual_seed(5)
        loss, _, log = criterion(model, sample)
        torch.manual_seed(5)
        plain_loss, _, _ = plain_criterion(plain, sample)
        if not training:  # the validation loss stays the plain -ELBO
            torch.testing.assert_close(loss, plain_loss)
            assert "bow" not in log
            continue
        torch.manual_seed(5)
        net_input = sample["net_input"]
        z = model.encoder(net_input["src_tokens"], net_input["src_lengths"])["z"][0]
        pad = task.source_dictionary.pad()
        # each word of the sentence scored by the one distribution z gives its sentence
        words = torch.distributions.Categorical(logits=model.encoder.latent_bow(z))  # B x V
        tokens = sample["target"].t()  # T x B: log_prob broadcasts over the batch
        bow = -(words.log_prob(tokens) * tokens.ne(pad)).sum()
        torch.testing.assert_close(log["bow"], bow)
        torch.testing.assert_close(loss, plain_loss + 0.5 * bow)
        # the term trains the encoder: its gradient reaches the posterior heads
        model.zero_grad()
        bow.backward()
        assert model.encoder.mlp_mu[0].weight.grad.abs().sum() > 0


def test_a_shared_bow_head_scores_words_against_the_output_embeddings(dict_dir):
    task, model, _ = build_tiny(dict_dir, "--bow-loss-weight", "1", "--bow-head", "shared")
    bow_head, embeddings = model.encoder.latent_bow, model.decoder.output_projection.weight
    num_words, width = embeddings.shape
    latent = model.args.latent_dim
    # no words x features matrix of its own: a projection to the width and a bias a word
    assert sum(p.numel() for p in bow_head.parameters()) == latent * width + width + num_words
    sample = autoencoder_sample(task.source_dictionary, random_sentences(4, seed=3))
    net_input = sample["net_input"]
    model.train()
    torch.manual_seed(2)
    _, extra = model(**net_input)
    torch.manual_seed(2)
    z = model.encoder(net_input["src_tokens"], net_input["src_lengths"])["z"][0]
    # by hand: z to the width, one dot product with each word's output embedding, its bias
    hidden = z @ bow_head.proj.weight.t() + bow_head.proj.bias
    expected = hidden @ embeddings.t() + bow_head.bias
    torch.testing.assert_close(extra["bow_logits"], expected)
    # the loss trains the projection, and with z held fixed (z reaches the shared table
    # through the encoder too) it still moves the output embeddings it scores against
    model.zero_grad()
    logits = bow_head(z.detach(), embeddings)
    bag_of_words_nll(logits, sample["target"], task.source_dictionary.pad()).backward()
    assert bow_head.proj.weight.grad.abs().sum() > 0
    assert embeddings.grad.abs().sum() > 0


def test_bow_loss_fine_tunes_a_checkpoint_without_the_head(data_bin, tiny_checkpoint, tmp_path):
    out = run_tool(
        "fairseq-train",
        *train_args(
            data_bin,
            tmp_path,
            "--max-update",
            "4",
            "--bow-loss-weight",
            "1",
            "--log-interval",
            "1",
            "--finetune-from-model",
            tiny_checkpoint,
        ),
    )
    fresh = "keep their fresh initialisation: encoder.latent_bow.weight, encoder.latent_bow.bias"
    assert fresh in out
    assert re.search(r"\bbow=[0-9.]+", out), out[-2000:]
    # the saved model has the head and loads for evaluation, where it is not used
    model = load_model(tmp_path / "checkpoint_last.pt")
    assert model.encoder.latent_bow is not None
    src, src_len = encode_lines(model.encoder.dictionary, random_sentences(2, seed=12))
    extra = model(src, src_len, src)[1]
    assert "bow_logits" not in extra


def test_untied_encoder_embeddings_train_apart_from_the_decoders(
    data_bin, tiny_checkpoint, tmp_path
):
    # fine-tuned from a checkpoint with BART's one shared table: both copies start from it
    out = run_tool(
        "fairseq-train",
        *train_args(
            data_bin,
            tmp_path,
            "--max-update",
            "4",
            "--untie-encoder-embeddings",
            "--finetune-from-model",
            tiny_checkpoint,
        ),
    )
    assert "done training" in out
    tied = torch.load(tiny_checkpoint, map_location="cpu")["model"]
    assert torch.equal(tied["encoder.embed_tokens.weight"], tied["decoder.embed_tokens.weight"])
    state = torch.load(tmp_path / "checkpoint_last.pt", map_location="cpu")["model"]
    encoder, decoder = state["encoder.embed_tokens.weight"], state["decoder.embed_tokens.weight"]
    # the decoder's input and output embeddings are still one table ...
    assert torch.equal(decoder, state["decoder.output_projection.weight"])
    # ... and the encoder's is its own: both moved from the shared start, to different values
    assert not torch.equal(encoder, tied["encoder.embed_tokens.weight"])
    assert not torch.equal(decoder, tied["decoder.embed_tokens.weight"])
    assert not torch.equal(encoder, decoder)
    model = load_model(tmp_path / "checkpoint_last.pt")
    assert model.encoder.embed_tokens.weight is not model.decoder.embed_tokens.weight
    torch.testing.assert_close(model.encoder.embed_tokens.weight, encoder)


@pytest.mark.parametrize("frozen_for", [3, 1])
def test_freeze_decoder_updates_keeps_the_decoder_fixed_while_the_rest_learns(
    data_bin, tmp_path, frozen_for
):
    # a start with every module of the run (the z projection into the decoder's inputs too)
    start = tmp_path / "start"
    run_tool(
        "fairseq-train",
        *train_args(data_bin, start, "--max-update", "1", "--latent-to-embeddings"),
    )
    # Park & Lee's first phase: 3 updates with the decoder fixed, or 1 of the 3
    out = run_tool(
        "fairseq-train",
        *train_args(
            data_bin,
            tmp_path,
            "--max-update",
            "3",
            "--freeze-decoder-updates",
            str(frozen_for),
            "--latent-to-embeddings",
            "--finetune-from-model",
            start / "checkpoint_last.pt",
        ),
    )
    assert "done training" in out
    before = torch.load(start / "checkpoint_last.pt", map_location="cpu")["model"]
    after = torch.load(tmp_path / "checkpoint_last.pt", map_location="cpu")["model"]
    moved = {k for k in before if not torch.equal(before[k], after[k])}
    # the latent modules, the decoder's z projection among them, learn throughout
    assert {"encoder.mlp_mu.0.weight", "decoder.embed_positions.latent_to_embed.weight"} <= moved
    assert "encoder.layers.0.fc1.weight" in moved
    decoder = {k for k in moved if k.startswith("decoder.") and "latent_to_embed" not in k}
    if frozen_for == 3:
        assert decoder == set(), sorted(decoder)
        # its embeddings are the encoder's too (BART's one table)
        assert "encoder.embed_tokens.weight" not in moved
    else:
        assert "decoder.layers.0.fc1.weight" in decoder


def test_latent_lr_scale_is_adamw_with_a_learning_rate_group_of_its_own():
    """Three steps of fairseq's Adam, the latent modules' steps stretched 5x, against
    torch.optim.AdamW given those modules as a parameter group of 5 times the learning rate."""
    from fairseq.optim.adam import Adam

    from fairseq_vae.tasks.kl_schedule import latent_parameters, step_with_latent_lr_scale

    torch.manual_seed(0)
    ours = torch.nn.ModuleDict({"mlp_mu": torch.nn.Linear(4, 3), "body": torch.nn.Linear(3, 2)})
    theirs = torch.nn.ModuleDict({"mlp_mu": torch.nn.Linear(4, 3), "body": torch.nn.Linear(3, 2)})
    theirs.load_state_dict(ours.state_dict())
    lr, wd = 1e-2, 0.1
    optimizer = Adam(ours.parameters(), lr=lr, weight_decay=wd, eps=1e-8)
    reference = torch.optim.AdamW(
        [
            {"params": theirs["mlp_mu"].parameters(), "lr": 5 * lr},
            {"params": theirs["body"].parameters(), "lr": lr},
        ],
        weight_decay=wd,
        eps=1e-8,
    )
    assert {id(p) for p in latent_parameters(ours)} == {id(p) for p in ours["mlp_mu"].parameters()}
    start = {k: v.clone() for k, v in ours.state_dict().items()}
    for _ in range(3):
        x = torch.randn(8, 4)
        for model, opt in ((ours, optimizer), (theirs, reference)):
            opt.zero_grad()
            model["body"](torch.tanh(model["mlp_mu"](x))).pow(2).sum().backward()
        step_with_latent_lr_scale(optimizer, ours, 5.0)
        reference.step()
    for name, value in theirs.state_dict().items():
        # fairseq's Adam adds eps to sqrt(v) before its bias correction, torch's after: 1e-6
        torch.testing.assert_close(ours.state_dict()[name], value, rtol=1e-5, atol=1e-6)
        assert not torch.equal(value, start[name])


def test_latent_lr_scale_refuses_an_optimizer_with_an_fp32_master_copy():
    from fairseq_vae.tasks.kl_schedule import step_with_latent_lr_scale

    class MasterCopy:  # fairseq's FP16Optimizer steps fp32_params, then copies them back
        fp32_params = torch.zeros(3)

        def step(self):
            raise AssertionError("must not step")

    with pytest.raises(ValueError, match="--memory-efficient-fp16"):
        step_with_latent_lr_scale(MasterCopy(), torch.nn.Linear(2, 2), 3.0)


def test_latent_lr_scale_moves_the_latent_modules_further_in_fairseq_train(
    data_bin, tiny_checkpoint, tmp_path
):
    # one update from the same weights and batch, at --lr 3e-3 (fixed): Adam's first step is
    # lr * g / (|g| + eps / sqrt(1 - beta2)): never more than lr, and lr wherever |g| >> 3e-7
    runs = {}
    for scale in ("1", "4"):
        save_dir = tmp_path / f"scale-{scale}"
        out = run_tool(
            "fairseq-train",
            *train_args(
                data_bin,
                save_dir,
                "--max-update",
                "1",
                "--latent-lr-scale",
                scale,
                "--finetune-from-model",
                tiny_checkpoint,
            ),
        )
        assert "done training" in out
        runs[scale] = torch.load(save_dir / "checkpoint_last.pt", map_location="cpu")["model"]
    start = torch.load(tiny_checkpoint, map_location="cpu")["model"]
    step = {s: {k: runs[s][k] - start[k] for k in start} for s in runs}
    latent = "encoder.mlp_mu.0.weight"
    moved = step["1"][latent].abs() > 1e-4  # the rest behind a ReLU that was off for the batch
    assert moved.float().mean() > 0.25
    size = step["1"][latent][moved].abs()
    assert size.max() <= 3e-3 * 1.001
    assert ((size - 3e-3).abs() < 0.05 * 3e-3).float().mean() > 0.8
    torch.testing.assert_close(step["4"][latent], 4 * step["1"][latent], rtol=1e-4, atol=1e-7)
    for other in ("encoder.layers.0.fc1.weight", "decoder.layers.0.fc1.weight"):
        assert step["1"][other].abs().max() > 1e-3
        torch.testing.assert_close(step["4"][other], step["1"][other])


def test_latent_lr_scale_must_be_positive(data_bin, tmp_path):
    out = run_tool(
        "fairseq-train",
        *train_args(data_bin, tmp_path, "--max-update", "1", "--latent-lr-scale", "0"),
        check=False,
    )
    assert out.strip().splitlines()[-1] == (
        "fairseq-train: error: --latent-lr-scale must be > 0, a multiple of the learning rate, "
        "got 0.0"
    )
    assert not any(tmp_path.iterdir())
