"""bart_vae: the latent is pooled per sentence, and it is the decoder's only view of x."""

import re

import pytest
import torch
from conftest import autoencoder_sample, build_tiny, encode_lines, random_sentences
from fairseq import checkpoint_utils
from fairseq.sequence_generator import SequenceGenerator
from vae_fixtures import save_checkpoint, train_tiny

from fairseq_vae.criterions.elbo import gaussian_kl
from fairseq_vae.models.latent import masked_mean, word_dropout


def test_masked_mean_ignores_padding_and_other_sentences():
    states = torch.randn(5, 3, 4)  # T x B x C
    pad = torch.zeros(3, 5, dtype=torch.bool)
    pad[1, 3:] = True
    pooled = masked_mean(states, pad)
    torch.testing.assert_close(pooled[1], states[:3, 1].mean(dim=0))
    torch.testing.assert_close(pooled[0], states[:, 0].mean(dim=0))


def test_mu_does_not_depend_on_the_batch_or_padding(dict_dir):
    task, model, _ = build_tiny(dict_dir)
    d = task.source_dictionary
    sentence = "the cat sat on the mat"
    alone, alone_len = encode_lines(d, [sentence])
    batch, batch_len = encode_lines(
        d, ["a big red dog ran quickly under the small rug", sentence, "a"]
    )
    mu_alone, logvar_alone = model.encoder.posterior(alone, alone_len)
    mu_batch, logvar_batch = model.encoder.posterior(batch, batch_len)
    torch.testing.assert_close(mu_batch[1], mu_alone[0], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(logvar_batch[1], logvar_alone[0], atol=1e-5, rtol=1e-5)
    # more padding on the same batch changes nothing either
    padded = torch.cat([batch, batch.new_full((3, 4), d.pad())], dim=1)
    mu_padded, _ = model.encoder.posterior(padded, batch_len)
    torch.testing.assert_close(mu_padded, mu_batch, atol=1e-5, rtol=1e-5)


def test_seed_t_position_fusion_equals_one_position_memory(dict_dir):
    task, model, _ = build_tiny(dict_dir)
    d = task.source_dictionary
    src, src_len = encode_lines(d, random_sentences(4, seed=1))
    prev, _ = encode_lines(d, random_sentences(4, seed=2))
    encoder = model.encoder
    # the seed: attention with the encoder states as queries and z as the only key/value
    states = super(type(encoder), encoder).forward(src, src_len)
    H, pad = states["encoder_out"][0], states["encoder_padding_mask"][0]  # T x B x C, B x T
    z = torch.randn(4, encoder.latent_dim)
    seed_memory = encoder.latent_attn(query=H, key=z[None], value=z[None])[0]  # T x B x C
    assert seed_memory.size(0) == H.size(0) > 1
    seed_out = {"encoder_out": [seed_memory], "encoder_padding_mask": [pad], "z": [z]}
    ours = encoder.latent_encoder_out(z, torch.zeros_like(z), z)
    assert ours["encoder_out"][0].size(0) == 1
    logits_seed, _ = model.decoder(prev, encoder_out=seed_out)
    logits_ours, _ = model.decoder(prev, encoder_out=ours)
    torch.testing.assert_close(logits_ours, logits_seed, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize(
    "extra",
    [
        [],
        ["--latent-fusion", "memory", "--latent-memory-slots", "3"],
        ["--latent-to-embeddings"],
        ["--latent-layer-memory"],
        ["--latent-to-output"],
    ],
    ids=["attention", "memory", "to-embeddings", "layer-memory", "to-output"],
)
def test_with_z_fixed_the_decoder_ignores_the_encoder_input(dict_dir, extra):
    task, model, _ = build_tiny(dict_dir, *extra)
    d = task.source_dictionary
    prev, _ = encode_lines(d, random_sentences(3, seed=5))
    z_fixed = torch.randn(3, model.encoder.latent_dim)
    # make the posterior mean a constant: then z is fixed whatever the input
    with torch.no_grad():
        last = model.encoder.mlp_mu[2]
        last.weight.zero_()
        last.bias.copy_(z_fixed[0])
    model.encoder.latent_source = "mean"
    outputs = []
    for seed in (10, 11):
        src, src_len = encode_lines(d, random_sentences(3, seed=seed))
        logits, extra_out = model(src, src_len, prev)
        torch.testing.assert_close(extra_out["z"], z_fixed[0].expand(3, -1))
        outputs.append(logits)
    torch.testing.assert_close(outputs[0], outputs[1])
    # ...and a different z does change the output: z really is used
    model.encoder.mlp_mu[2].bias.data.copy_(z_fixed[1])
    src, src_len = encode_lines(d, random_sentences(3, seed=10))
    assert not torch.allclose(model(src, src_len, prev)[0], outputs[0])


def test_reorder_encoder_out_carries_the_latent(dict_dir):
    # reordering the encoder's output must give what encoding the reordered sentences gives
    task, model, _ = build_tiny(dict_dir)
    model.encoder.latent_source = "mean"  # z = mu: both encodings are deterministic
    lines = random_sentences(3, seed=3)
    order = [2, 2, 0, 1]
    out = model.encoder(*encode_lines(task.source_dictionary, lines))
    reordered = model.encoder.reorder_encoder_out(out, torch.tensor(order))
    expected = model.encoder(*encode_lines(task.source_dictionary, [lines[i] for i in order]))
    for key in ("mu", "logvar", "z", "encoder_out"):
        torch.testing.assert_close(reordered[key][0], expected[key][0], atol=1e-5, rtol=1e-5)
    assert not torch.allclose(out["z"][0][0], out["z"][0][1])  # the sentences differ


def test_posterior_sample_has_the_posterior_moments(dict_dir):
    task, model, _ = build_tiny(dict_dir)
    src, src_len = encode_lines(task.source_dictionary, ["the cat sat"] * 4000)
    out = model.encoder(src, src_len)
    mu, logvar, z = out["mu"][0], out["logvar"][0], out["z"][0]
    torch.testing.assert_close(z.mean(0), mu[0], atol=0.1, rtol=0)
    torch.testing.assert_close(z.var(0), logvar[0].exp(), atol=0.1, rtol=0.1)


def test_one_worker_draws_its_noise_from_torchs_generator_as_before(dict_dir):
    # without a process group, posterior noise and word-dropout masks are the draws of torch's
    # global generator, in this order: single-worker runs repeat earlier ones bit for bit
    task, model, _ = build_tiny(dict_dir, "--word-dropout", "0.5")
    sample = autoencoder_sample(task.source_dictionary, random_sentences(6, seed=7))
    net_input = sample["net_input"]
    model.train()
    torch.manual_seed(11)
    _, extra = model(**net_input)
    torch.manual_seed(11)
    eps = torch.randn(6, model.encoder.latent_dim)
    uniform = torch.rand(net_input["prev_output_tokens"].shape)
    torch.testing.assert_close(extra["z"], extra["mu"] + torch.exp(0.5 * extra["logvar"]) * eps)
    prev = net_input["prev_output_tokens"]
    fed = []
    handle = model.decoder.register_forward_pre_hook(lambda module, args: fed.append(args[0]))
    torch.manual_seed(11)
    model(**net_input)
    handle.remove()
    d = task.source_dictionary
    droppable = prev.ne(d.pad()) & prev.ne(d.eos()) & prev.ne(d.bos())
    assert torch.equal(fed[0], prev.masked_fill((uniform < 0.5) & droppable, d.unk()))


def test_word_dropout_replaces_only_ordinary_tokens():
    torch.manual_seed(0)
    tokens = torch.randint(4, 50, (64, 40))
    tokens[:, 0] = 2  # the decoder's leading eos
    tokens[:, 30:] = 1  # padding
    dropped = word_dropout(tokens, 0.3, unk=3, keep=[1, 2, 0])
    assert torch.equal(dropped[:, 0], tokens[:, 0]) and torch.equal(dropped[:, 30:], tokens[:, 30:])
    changed = dropped[:, 1:30].ne(tokens[:, 1:30])
    assert dropped[:, 1:30][changed].eq(3).all()
    assert 0.25 < changed.float().mean() < 0.35


def test_word_dropout_applies_in_training_only(dict_dir):
    task, model, _ = build_tiny(dict_dir, "--word-dropout", "1.0")
    src, src_len = encode_lines(task.source_dictionary, random_sentences(2, seed=4))
    model.encoder.latent_source = "mean"
    eval_logits, _ = model(src, src_len, src)
    model.train()
    train_logits, _ = model(src, src_len, src)
    unk_input = src.masked_fill(src.gt(task.source_dictionary.nspecial - 1), 3)
    model.eval()
    unk_logits, _ = model(src, src_len, unk_input)
    torch.testing.assert_close(train_logits, unk_logits)
    assert not torch.allclose(train_logits, eval_logits)


def criterion_loss(dict_dir, *extra, training=True, update_num=0, beta=1.0):
    from fairseq import criterions

    task, model, args = build_tiny(dict_dir, *extra)
    criterion = criterions.build_criterion(args, task)
    criterion.set_schedule_state(update_num, beta)
    d = task.source_dictionary
    sample = autoencoder_sample(d, random_sentences(5, seed=6))
    src = sample["target"]
    model.encoder.latent_source = "mean"  # deterministic, so two runs can be compared
    model.train(training)
    loss, sample_size, log = criterion(model, sample)
    logits, extra_out = model(**sample["net_input"])
    lprobs = torch.log_softmax(logits.float(), dim=-1)
    nll = -lprobs.gather(-1, src.unsqueeze(-1)).squeeze(-1)[src.ne(d.pad())].sum()
    kl = gaussian_kl(extra_out["mu"], extra_out["logvar"])
    return loss, sample_size, log, nll, kl


def test_elbo_loss_is_nll_plus_beta_kl(dict_dir):
    loss, sample_size, log, nll, kl = criterion_loss(dict_dir, beta=0.25)
    torch.testing.assert_close(loss, nll + 0.25 * kl.sum(), atol=1e-4, rtol=1e-5)
    assert sample_size == log["ntokens"]
    torch.testing.assert_close(log["kl"], kl.sum())
    torch.testing.assert_close(log["nll_loss"], nll, atol=1e-4, rtol=1e-5)


def test_validation_loss_uses_beta_one(dict_dir):
    loss, _, log, nll, kl = criterion_loss(dict_dir, training=False, beta=0.0)
    torch.testing.assert_close(loss, nll + kl.sum(), atol=1e-4, rtol=1e-5)
    assert log["beta"] == log["nsentences"]  # beta 1, weighted by sentences


def test_validation_loss_is_the_plain_elbo_without_label_smoothing(dict_dir):
    # the default best checkpoint is chosen by the validation loss: it must be -ELBO
    smoothing = ["--label-smoothing", "0.1"]
    loss, _, log, nll, kl = criterion_loss(dict_dir, *smoothing, training=False, beta=0.0)
    torch.testing.assert_close(loss, nll + kl.sum(), atol=1e-4, rtol=1e-5)
    train_loss, _, _, train_nll, _ = criterion_loss(dict_dir, *smoothing, beta=0.0)
    assert abs(float(train_loss - train_nll)) > 1e-3  # training keeps the smoothing


def test_capacity_objective_in_the_criterion(dict_dir):
    extra = [
        "--kl-objective",
        "capacity",
        "--capacity-max",
        "10",
        "--capacity-updates",
        "100",
        "--capacity-gamma",
        "3",
    ]
    loss, _, log, nll, kl = criterion_loss(dict_dir, *extra, update_num=40)
    expected = nll + 3.0 * (kl.sum(1) - 4.0).abs().sum()
    torch.testing.assert_close(loss, expected, atol=1e-4, rtol=1e-5)
    assert log["capacity"] == pytest.approx(4.0 * log["nsentences"])


# --- loading checkpoints into bart_vae ------------------------------------------------------


def test_checkpoint_with_other_layers_is_refused_naming_the_keys(dict_dir):
    _, one_layer, _ = build_tiny(dict_dir)
    _, two_layers, _ = build_tiny(dict_dir, "--decoder-layers", "2")
    # fewer layers: the second decoder layer must not "load" with its random initialisation
    with pytest.raises(ValueError, match=r"missing from the checkpoint: decoder\.layers\.1\."):
        two_layers.load_state_dict(one_layer.state_dict())
    with pytest.raises(ValueError, match=r"not in the model: decoder\.layers\.1\."):
        one_layer.load_state_dict(two_layers.state_dict())


def test_plain_bart_weights_load_and_only_the_vae_modules_keep_their_init(dict_dir):
    # a BART state dict: no posterior heads, fusion or z projection, and BART's own name for
    # the decoder's learned positions
    _, source, _ = build_tiny(dict_dir, "--latent-to-embeddings")
    vae_parts = ("mlp_mu", "mlp_logvar", "latent_attn", "latent_to_embed")
    bart = {k: v for k, v in source.state_dict().items() if not any(p in k for p in vae_parts)}
    positions = bart.pop("decoder.embed_positions.positions.weight")
    bart["decoder.embed_positions.weight"] = positions
    _, target, _ = build_tiny(dict_dir, "--latent-to-embeddings")
    with torch.no_grad():  # build_tiny seeds its init: make every weight differ from source's
        for param in target.parameters():
            param.add_(1.0)
    fresh = {k: v.clone() for k, v in target.state_dict().items()}
    target.load_state_dict(bart)
    loaded = target.state_dict()
    for key, value in loaded.items():
        expected = fresh[key] if any(p in key for p in vae_parts) else source.state_dict()[key]
        assert torch.equal(value, expected), key


# --- the k-slot memory (--latent-fusion memory) in search -----------------------------------

MEMORY = ["--latent-fusion", "memory", "--latent-memory-slots", "4"]


def test_memory_fusion_incremental_decoding_matches_the_full_forward(dict_dir):
    task, model, _ = build_tiny(dict_dir, *MEMORY)
    d = task.source_dictionary
    src, src_len = encode_lines(d, random_sentences(3, seed=12))
    # one length, so that no position is padding (whose positions the full forward skips)
    prev, _ = encode_lines(d, ["the cat sat on the", "a dog ran under a", "big red mat on a"])
    model.encoder.latent_source = "mean"
    encoder_out = model.encoder(src, src_len)
    assert encoder_out["encoder_out"][0].shape == (4, 3, 16)  # 4 slots x B x C
    full, _ = model.decoder(prev, encoder_out=encoder_out)
    state = {}
    steps = [
        model.decoder(prev[:, : t + 1], encoder_out=encoder_out, incremental_state=state)[0]
        for t in range(3)
    ]
    torch.testing.assert_close(torch.cat(steps, dim=1), full[:, :3], atol=1e-5, rtol=1e-5)
    # then the way beam search drops finished sentences: keep sentences 2 and 0, in that order
    order = torch.tensor([2, 0])
    encoder_out = model.encoder.reorder_encoder_out(encoder_out, order)
    model.decoder.reorder_incremental_state_scripting(state, order)
    kept = prev[order]
    steps = [
        model.decoder(kept[:, : t + 1], encoder_out=encoder_out, incremental_state=state)[0]
        for t in range(3, prev.size(1))
    ]
    torch.testing.assert_close(torch.cat(steps, dim=1), full[order, 3:], atol=1e-5, rtol=1e-5)


def test_memory_fusion_beam_search_of_a_batch_equals_each_sentence_alone(dict_dir):
    # trained enough that z sets the length and words of what is decoded
    task, model, _ = train_tiny(dict_dir, 150, 0.1, 0, *MEMORY)
    model.encoder.latent_source = "mean"
    d = task.target_dictionary
    lines = random_sentences(4, seed=13)
    generator = SequenceGenerator([model], d, beam_size=3, max_len_b=15)

    def search(batch):
        src, src_len = encode_lines(d, batch)
        sample = {
            "id": torch.arange(len(batch)),
            "net_input": {"src_tokens": src, "src_lengths": src_len},
        }
        return [
            [(h["tokens"].tolist(), float(h["score"])) for h in hyps]
            for hyps in generator.generate([model], sample)
        ]

    together = search(lines)
    for i, line in enumerate(lines):
        alone = search([line])[0]
        assert [tokens for tokens, _ in together[i]] == [tokens for tokens, _ in alone], i
        for (_, score), (_, expected) in zip(together[i], alone):
            assert score == pytest.approx(expected, abs=1e-4)
    assert all(len(hyps) == 3 for hyps in together)  # three beams each
    assert len({tuple(hyps[0][0]) for hyps in together}) > 1  # the sentences decode differently


# --- a VAE checkpoint that lacks some latent module ------------------------------------------


@pytest.mark.parametrize(
    "override, missing, trained_by",
    [
        ({"latent_to_embeddings": True}, "decoder.embed_positions.latent_to_embed.weight", ""),
        ({"latent_layer_memory": True}, "decoder.latent_layer_memory.0.weight", ""),
        ({"latent_to_output": True}, "decoder.latent_to_output.weight", ""),
        ({"bn_vae_gamma": 0.5}, "encoder.mu_batch_norm.running_var", ""),
        ({"bow_loss_weight": 1.0}, "encoder.latent_bow.weight", ""),
        # a fine-tuning run saves its --finetune-from-model with its checkpoints
        ({"bow_loss_weight": 1.0}, "encoder.latent_bow.weight", "finetuning"),
    ],
    ids=["to-embeddings", "layer-memory", "to-output", "bn-vae", "bow", "bow-finetuned-checkpoint"],
)
def test_vae_checkpoint_lacking_a_latent_module_is_refused_naming_the_keys(
    dict_dir, tmp_path, override, missing, trained_by
):
    # what fairseq-generate --model-overrides does: the checkpoint's options, one switched on
    _, model, args = build_tiny(dict_dir)
    if trained_by == "finetuning":
        args.finetune_from_model = str(tmp_path / "pretrained.pt")
    path = str(tmp_path / "vae.pt")
    save_checkpoint(path, model, args)
    models, _, _ = checkpoint_utils.load_model_ensemble_and_task([path])  # as trained: loads
    assert torch.equal(models[0].encoder.mlp_mu[0].weight, model.encoder.mlp_mu[0].weight)
    with pytest.raises(ValueError, match=re.escape(missing)) as refused:
        checkpoint_utils.load_model_ensemble_and_task([path], arg_overrides=override)
    assert path in str(refused.value)  # the file, the keys and the option are named
    option = "--" + next(iter(override)).replace("_", "-")
    assert option in str(refused.value)


# --- --cross-attention-init: how strongly z reaches the decoder at the start ----------------


def test_fairseq_cross_attention_init_is_xavier_and_touches_nothing_else(dict_dir):
    _, bart_init, _ = build_tiny(dict_dir)
    _, xavier, _ = build_tiny(dict_dir, "--cross-attention-init", "fairseq")
    for layer in xavier.decoder.layers:
        for name, gain in (("v_proj", 2**-0.5), ("out_proj", 1.0)):
            weight = getattr(layer.encoder_attn, name).weight
            fan_out, fan_in = weight.shape
            # xavier_uniform's bound; its standard deviation is bound / sqrt(3)
            bound = gain * (6 / (fan_in + fan_out)) ** 0.5
            assert weight.abs().max() <= bound + 1e-6
            assert abs(weight.std().item() - bound / 3**0.5) < 0.15 * bound / 3**0.5
    for layer in bart_init.decoder.layers:  # BART's N(0, 0.02)
        assert abs(layer.encoder_attn.v_proj.weight.std().item() - 0.02) < 0.003
    # everything outside the decoder's cross-attention is the default model's, seed for seed
    for (key, a), (_, b) in zip(bart_init.state_dict().items(), xavier.state_dict().items()):
        if ".encoder_attn." not in key:
            assert torch.equal(a, b), key
