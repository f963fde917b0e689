"""bart_cvae: the conditional VAE's encoder, prior, posterior and memory against computations by
hand, its KL against torch.distributions, and paired data through fairseq's own tools."""

import math
import os
import re

import pytest
import torch
from conftest import TINY_ARCH, USER_DIR, WORDS, encode_lines, random_sentences, run_tool
from fairseq import options, tasks
from fairseq.data import Dictionary
from fairseq.models.transformer import TransformerEncoder
from torch.distributions import Normal, kl_divergence

from fairseq_vae.models.latent import masked_mean

CVAE_ARCH = ["--arch", "bart_cvae_small", *TINY_ARCH[2:]]
PAIRS = ["--source-lang", "src", "--target-lang", "tgt"]


@pytest.fixture(scope="module")
def pair_dict_dir(tmp_path_factory):
    """dict.src.txt = dict.tgt.txt over WORDS, as fairseq-preprocess --joined-dictionary."""
    folder = tmp_path_factory.mktemp("pair-dict")
    dictionary = Dictionary()
    for word in WORDS:
        dictionary.add_symbol(word)
    for lang in ("src", "tgt"):
        dictionary.save(str(folder / f"dict.{lang}.txt"))
    return str(folder)


def build_cvae(data_dir, *extra):
    parser = options.get_training_parser()
    args = options.parse_args_and_arch(
        parser,
        [data_dir, "--user-dir", USER_DIR, "--task", "text_vae", "--criterion", "elbo",
         "--max-update", "100", *CVAE_ARCH, *PAIRS, *extra],
    )  # fmt: skip
    task = tasks.setup_task(args)
    torch.manual_seed(0)
    model = task.build_model(args)
    model.eval()
    return task, model, args


def paired_batch(dictionary, sources, targets):
    src, src_lengths = encode_lines(dictionary, sources)
    tgt, tgt_lengths = encode_lines(dictionary, targets)
    prev = torch.roll(tgt.masked_fill(tgt.eq(dictionary.eos()), dictionary.pad()), 1, dims=1)
    prev[:, 0] = dictionary.eos()
    net_input = {"src_tokens": src, "src_lengths": src_lengths, "prev_output_tokens": prev,
                 "tgt_tokens": tgt, "tgt_lengths": tgt_lengths}  # fmt: skip
    return {"net_input": net_input, "target": tgt, "ntokens": int(tgt.ne(dictionary.pad()).sum())}


SOURCES = ["the cat sat", "a big red dog ran on the mat", "the rug"]
TARGETS = ["the cat sat on the mat", "a dog", "the small rug under a cat"]


def states_of(encoder, tokens, lengths):
    """BART's encoder states and padding mask for a batch, by the plain transformer encoder."""
    out = TransformerEncoder.forward(encoder, tokens, lengths)
    return out["encoder_out"][0], out["encoder_padding_mask"][0]


def test_the_memory_is_z_beside_the_source_and_q_reads_source_and_target(pair_dict_dir):
    task, model, _ = build_cvae(pair_dict_dir)
    sample = paired_batch(task.dictionary, SOURCES, TARGETS)
    encoder, net = model.encoder, sample["net_input"]
    encoder.latent_source = "mean"
    with torch.no_grad():
        out = encoder(net["src_tokens"], net["src_lengths"], tgt_tokens=net["tgt_tokens"],
                      tgt_lengths=net["tgt_lengths"])  # fmt: skip
        src_states, src_mask = states_of(encoder, net["src_tokens"], net["src_lengths"])
        tgt_states, tgt_mask = states_of(encoder, net["tgt_tokens"], net["tgt_lengths"])
        # the means over each sentence's own positions, by a loop
        c = torch.stack([src_states[:n, b].mean(0) for b, n in enumerate(net["src_lengths"])])
        x = torch.stack([tgt_states[:n, b].mean(0) for b, n in enumerate(net["tgt_lengths"])])
        mu = encoder.mlp_mu(torch.cat([c, x], dim=-1))
        prior_mu = encoder.prior_mu(c)
        memory = out["encoder_out"][0]
    torch.testing.assert_close(out["mu"][0], mu)
    torch.testing.assert_close(out["z"][0], mu)  # latent_source mean: z is q's mean
    torch.testing.assert_close(out["prior_mu"][0], prior_mu)
    # slot 0 is z's memory, then every source position; padding hides no slot
    assert memory.shape == (1 + src_states.size(0), len(SOURCES), src_states.size(2))
    torch.testing.assert_close(memory[:1], encoder.memory(mu))
    torch.testing.assert_close(memory[1:], src_states)
    mask = out["encoder_padding_mask"][0]
    assert not mask[:, 0].any() and torch.equal(mask[:, 1:], src_mask)


def test_without_a_target_z_comes_from_the_prior_given_the_source(pair_dict_dir):
    task, model, _ = build_cvae(pair_dict_dir)
    src, lengths = encode_lines(task.dictionary, SOURCES)
    encoder = model.encoder
    with torch.no_grad():
        states, mask = states_of(encoder, src, lengths)
        c = masked_mean(states, mask)
        encoder.latent_source = "prior-mean"
        out = encoder(src, lengths)
        torch.testing.assert_close(out["z"][0], encoder.prior_mu(c))
        encoder.latent_source = "mean"
        with pytest.raises(ValueError, match="needs the target"):
            encoder(src, lengths)


def test_the_criterions_kl_is_kl_of_the_posterior_to_the_conditional_prior(pair_dict_dir):
    task, model, args = build_cvae(pair_dict_dir)
    criterion = task.build_criterion(args)
    sample = paired_batch(task.dictionary, SOURCES, TARGETS)
    with torch.no_grad():
        _, _, logged = criterion(model, sample)
        _, extra = model(**sample["net_input"])
    q = Normal(extra["mu"], torch.exp(0.5 * extra["logvar"]))
    p = Normal(extra["prior_mu"], torch.exp(0.5 * extra["prior_logvar"]))
    torch.testing.assert_close(logged["kl"], kl_divergence(q, p).sum())
    # the validation loss is the plain -ELBO: NLL + KL, in bits (fairseq divides by ln 2 later)
    torch.testing.assert_close(logged["loss"], logged["nll_loss"] + logged["kl"])


def test_the_bag_of_words_reads_z_and_the_source_mean(pair_dict_dir):
    task, model, _ = build_cvae(pair_dict_dir, "--bow-loss-weight", "1", "--bow-head", "shared")
    sample = paired_batch(task.dictionary, SOURCES, TARGETS)
    net, encoder = sample["net_input"], model.encoder
    model.train()
    with torch.no_grad():
        torch.manual_seed(4)
        _, extra = model(**net)
        torch.manual_seed(4)
        z = encoder(net["src_tokens"], net["src_lengths"], tgt_tokens=net["tgt_tokens"],
                    tgt_lengths=net["tgt_lengths"])["z"][0]  # fmt: skip
        src_states, _ = states_of(encoder, net["src_tokens"], net["src_lengths"])
        c = torch.stack([src_states[:n, b].mean(0) for b, n in enumerate(net["src_lengths"])])
    # Zhao et al.: the words from [z; c], scored against the decoder's output embeddings
    head, embeddings = encoder.latent_bow, model.decoder.output_projection.weight
    expected = head.proj(torch.cat([z, c], dim=-1)) @ embeddings.t() + head.bias
    torch.testing.assert_close(extra["bow_logits"], expected)


def test_a_standard_prior_is_n01_whatever_the_source(pair_dict_dir):
    task, model, _ = build_cvae(pair_dict_dir, "--cvae-prior", "standard")
    sample = paired_batch(task.dictionary, SOURCES, TARGETS)
    assert not hasattr(model.encoder, "prior_mu")
    with torch.no_grad():
        _, extra = model(**sample["net_input"])
    assert not extra["prior_mu"].any() and not extra["prior_logvar"].any()


def test_models_and_data_must_match(pair_dict_dir, dict_dir):
    with pytest.raises(ValueError, match="is for --arch bart_cvae"):
        parser = options.get_training_parser()
        args = options.parse_args_and_arch(
            parser,
            [pair_dict_dir, "--user-dir", USER_DIR, "--task", "text_vae", "--criterion", "elbo",
             *TINY_ARCH, *PAIRS],
        )  # fmt: skip
        tasks.setup_task(args).build_model(args)
    with pytest.raises(ValueError, match="give it paired data"):
        parser = options.get_training_parser()
        args = options.parse_args_and_arch(
            parser,
            [dict_dir, "--user-dir", USER_DIR, "--task", "text_vae", "--criterion", "elbo",
             *CVAE_ARCH],
        )  # fmt: skip
        tasks.setup_task(args).build_model(args)


# --- paired data through fairseq's tools ----------------------------------------------------


def pair_corpus(n, seed):
    """Sources and targets: each target is its source with a tail the source does not fix."""
    sources = random_sentences(n, seed, 2, 5)
    tails = random_sentences(n, seed + 100, 1, 3)
    return sources, [f"{s} {t}" for s, t in zip(sources, tails)]


@pytest.fixture(scope="module")
def pair_bin(tmp_path_factory):
    raw = tmp_path_factory.mktemp("pairs-raw")
    for split, n, seed in (("train", 300, 0), ("valid", 20, 1), ("test", 12, 2)):
        sources, targets = pair_corpus(n, seed)
        (raw / f"{split}.src").write_text("\n".join(sources) + "\n")
        (raw / f"{split}.tgt").write_text("\n".join(targets) + "\n")
    dest = tmp_path_factory.mktemp("pairs-bin")
    run_tool("fairseq-preprocess", "--source-lang", "src", "--target-lang", "tgt",
             "--joined-dictionary", "--trainpref", raw / "train", "--validpref", raw / "valid",
             "--testpref", raw / "test", "--destdir", dest, "--workers", "1")  # fmt: skip
    return str(dest)


@pytest.fixture(scope="module")
def cvae_checkpoint(pair_bin, tmp_path_factory):
    save_dir = tmp_path_factory.mktemp("cvae-ckpt")
    run_tool("fairseq-train", pair_bin, "--user-dir", USER_DIR, "--task", "text_vae",
             "--criterion", "elbo", *CVAE_ARCH, *PAIRS, "--optimizer", "adam", "--lr", "0.003",
             "--max-tokens", "2000", "--max-update", "40", "--save-dir", save_dir, "--cpu",
             "--no-epoch-checkpoints", "--log-format", "simple", "--log-interval", "10",
             "--num-workers", "0", "--seed", "1")  # fmt: skip
    return str(save_dir / "checkpoint_last.pt")


def hypotheses(stdout):
    return {int(m[1]): m[2] for m in re.finditer(r"^H-(\d+)\t\S+\t(.*)$", stdout, re.M)}


@pytest.mark.parametrize("source, beam", [("prior", 1), ("prior-mean", 4), ("posterior-mean", 1)])
def test_generate_decodes_every_test_pair_from_each_latent_source(pair_bin, cvae_checkpoint,
                                                                   source, beam):  # fmt: skip
    """Beam search reorders z, the memory and its padding mask with the hypotheses."""
    out = run_tool("fairseq-generate", pair_bin, "--user-dir", USER_DIR, "--task", "text_vae",
                   *PAIRS, "--path", cvae_checkpoint, "--cpu", "--beam", beam,
                   "--latent-source", source, "--seed", "1")  # fmt: skip
    hyps = hypotheses(out)
    assert sorted(hyps) == list(range(12)), out[-2000:]
    assert all(h.split() for h in hyps.values())


def test_paired_data_with_another_count_on_one_side_is_refused(pair_bin, cvae_checkpoint,
                                                                tmp_path):  # fmt: skip
    """fairseq-preprocess binarises each side apart: a test split whose target file lost its
    last line still binarises, and training must say which files disagree."""
    raw = tmp_path / "raw"
    raw.mkdir()
    sources, targets = pair_corpus(10, 5)
    (raw / "test.src").write_text("\n".join(sources) + "\n")
    (raw / "test.tgt").write_text("\n".join(targets[:-1]) + "\n")
    dest = tmp_path / "bin"
    run_tool("fairseq-preprocess", "--source-lang", "src", "--target-lang", "tgt",
             "--srcdict", os.path.join(pair_bin, "dict.src.txt"), "--joined-dictionary",
             "--testpref", raw / "test", "--destdir", dest, "--workers", "1",
             check=False)  # fmt: skip
    if not (dest / "test.src-tgt.tgt.bin").exists():
        pytest.skip("this fairseq-preprocess refuses sides of different lengths itself")
    for name in ("dict.src.txt", "dict.tgt.txt"):
        (dest / name).write_text(open(os.path.join(pair_bin, name)).read())
    result = run_tool("fairseq-generate", dest, "--user-dir", USER_DIR, "--task", "text_vae",
                      *PAIRS, "--path", cvae_checkpoint, "--cpu", check=False)  # fmt: skip
    assert "has 10 sentences but" in result and "has 9" in result, result[-2000:]


def test_pairs_with_an_empty_target_or_an_over_long_source_are_skipped_naming_their_lines(
    pair_bin, cvae_checkpoint, tmp_path
):
    """A pair is skipped where either side cannot be used, with the side's file and the line
    in the log; the other pairs are decoded (the sentence VAE's rule for its sentences)."""
    raw = tmp_path / "raw"
    raw.mkdir()
    sources, targets = pair_corpus(6, 7)
    targets[1] = ""  # line 2: an empty target
    sources[3] = " ".join(["the"] * 300)  # line 4: over the checkpoint's 256 positions
    (raw / "test.src").write_text("\n".join(sources) + "\n")
    (raw / "test.tgt").write_text("\n".join(targets) + "\n")
    dest = tmp_path / "bin"
    run_tool("fairseq-preprocess", "--source-lang", "src", "--target-lang", "tgt",
             "--srcdict", os.path.join(pair_bin, "dict.src.txt"), "--joined-dictionary",
             "--testpref", raw / "test", "--destdir", dest, "--workers", "1")  # fmt: skip
    out = run_tool("fairseq-generate", dest, "--user-dir", USER_DIR, "--task", "text_vae",
                   *PAIRS, "--path", cvae_checkpoint, "--cpu", "--beam", "1",
                   "--latent-source", "posterior-mean")  # fmt: skip
    assert f"{dest}/test.src-tgt.tgt: skipping 1 of 6 sentences, empty (lines 2 " in out, out
    assert f"{dest}/test.src-tgt.src: skipping 1 of 6 sentences, longer than 256 tokens" in out
    assert "(lines 4 of the text" in out
    assert sorted(hypotheses(out)) == [0, 2, 4, 5], out[-2000:]


def all_hypotheses(stdout):
    """{sentence id: its hypotheses in the order printed}."""
    found = {}
    for m in re.finditer(r"^H-(\d+)\t\S+\t(.*)$", stdout, re.M):
        found.setdefault(int(m[1]), []).append(m[2])
    return found


def test_latent_samples_are_n_draws_a_source_fixed_by_seed_and_id(pair_bin, cvae_checkpoint):
    common = ["fairseq-generate", pair_bin, "--user-dir", USER_DIR, "--task", "text_vae",
              *PAIRS, "--path", cvae_checkpoint, "--cpu", "--beam", "2",
              "--latent-source", "prior", "--latent-samples", "3", "--seed", "7"]  # fmt: skip
    together = all_hypotheses(run_tool(*common))
    alone = all_hypotheses(run_tool(*common, "--batch-size", "1"))
    assert sorted(together) == list(range(12)) and all(len(h) == 3 for h in together.values())
    assert together == alone  # the k-th draw of a source does not depend on its batch
    other_seed = all_hypotheses(run_tool(*common[:-1], "8"))
    assert other_seed != together


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--latent-samples", "0"], "--latent-samples must be at least 1, got 0"),
        (["--latent-samples", "2"], "would decode one z 2 times"),
    ],
)
def test_latent_samples_options_are_refused_in_one_line(pair_bin, cvae_checkpoint, extra,
                                                        message):  # fmt: skip
    out = run_tool("fairseq-generate", pair_bin, "--user-dir", USER_DIR, "--task", "text_vae",
                   *PAIRS, "--path", cvae_checkpoint, "--cpu", *extra, check=False)  # fmt: skip
    assert message in out and "Traceback" not in out, out[-2000:]


# --- the hub ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def cvae_hub(pair_bin, cvae_checkpoint):
    from fairseq_vae.models.bart_cvae import BARTCVAEModel

    return BARTCVAEModel.from_pretrained(
        os.path.dirname(cvae_checkpoint), os.path.basename(cvae_checkpoint), pair_bin
    )


def test_hub_samples_the_draws_fairseq_generate_decodes(pair_bin, cvae_checkpoint, cvae_hub):
    sources, _ = pair_corpus(12, 2)  # the test split, in its order: sentence i has id i
    printed = all_hypotheses(
        run_tool(
            "fairseq-generate",
            pair_bin,
            "--user-dir",
            USER_DIR,
            "--task",
            "text_vae",
            *PAIRS,
            "--path",
            cvae_checkpoint,
            "--cpu",
            "--beam",
            "1",
            "--latent-source",
            "prior",
            "--latent-samples",
            "3",
            "--seed",
            "5",
        )  # fmt: skip
    )
    assert cvae_hub.sample(sources, n=3, seed=5) == [printed[i] for i in range(12)]


def test_hub_reconstructs_and_transfers_from_the_posterior_mean(cvae_hub):
    sources, targets = pair_corpus(4, 9)
    mu, _ = cvae_hub.encode(sources, targets)
    prior_mu, _ = cvae_hub.prior(sources)
    assert mu.shape == prior_mu.shape == (4, cvae_hub.latent_dim)
    # reconstruct: q's mean beside the source; transfer: the same z beside other sources
    assert cvae_hub.reconstruct(sources, targets) == cvae_hub.decode_under(mu, sources)
    others = sources[1:] + sources[:1]
    assert cvae_hub.transfer(sources, targets, others) == cvae_hub.decode_under(mu, others)
    assert cvae_hub.sample(sources, mean=True) == [
        [t] for t in cvae_hub.decode_under(prior_mu, sources)
    ]
    with pytest.raises(ValueError, match="4 sources but 3 targets"):
        cvae_hub.encode(sources, targets[:3])
    with pytest.raises(NotImplementedError, match="depends on a source"):
        cvae_hub.interpolate(sources[0], sources[1])


# --- what loads into bart_cvae ------------------------------------------------------------------


def rewritten_checkpoint(source, dest, edit):
    """A copy of a checkpoint whose model weights ``edit`` changed (in place)."""
    import fairseq_vae  # noqa: F401  (the allow-list weights_only needs for fairseq's globals)

    state = torch.load(source, map_location="cpu", weights_only=True)
    edit(state["model"])
    torch.save(state, dest)
    return str(dest)


def finetune(data, start, save_dir, *arch):
    return run_tool("fairseq-train", data, "--user-dir", USER_DIR, "--task", "text_vae",
                    "--criterion", "elbo", *arch, "--optimizer", "adam", "--lr", "0.001",
                    "--max-tokens", "2000", "--max-update", "2", "--save-dir", save_dir,
                    "--cpu", "--num-workers", "0", "--finetune-from-model", start,
                    check=False)  # fmt: skip


def test_a_plain_bart_fine_tunes_into_bart_cvae_with_fresh_latent_heads(pair_bin,
                                                                       cvae_checkpoint,
                                                                       tmp_path):  # fmt: skip
    from fairseq_vae.models.checkpoint_compat import is_latent_parameter

    def strip(weights):  # what a plain BART of these dimensions holds
        for key in [k for k in weights if is_latent_parameter(k) or "sha256" in k]:
            del weights[key]

    plain = rewritten_checkpoint(cvae_checkpoint, tmp_path / "plain.pt", strip)
    out = finetune(pair_bin, plain, tmp_path / "ft", *CVAE_ARCH, *PAIRS)
    assert "| done training" in out, out[-3000:]
    fresh = re.search(r"keep their fresh initialisation: (.*)", out)[1]
    assert "encoder.prior_mu.0.weight" in fresh and "encoder.mlp_mu.0.weight" in fresh
    assert "decoder.layers.0" not in fresh  # BART's own weights came from the file


def test_a_sentence_vae_and_a_conditional_one_do_not_load_into_each_other(pair_bin,
                                                                         cvae_checkpoint,
                                                                         tmp_path):  # fmt: skip
    def as_sentence_vae(weights):  # one mean into the posterior heads, no prior heads
        for head in ("mlp_mu", "mlp_logvar"):
            key = f"encoder.{head}.0.weight"
            weights[key] = weights[key][:, : weights[key].size(1) // 2].clone()
        for key in [k for k in weights if ".prior_" in k]:
            del weights[key]

    vae = rewritten_checkpoint(cvae_checkpoint, tmp_path / "vae.pt", as_sentence_vae)
    out = finetune(pair_bin, vae, tmp_path / "a", *CVAE_ARCH, *PAIRS)
    assert "is a bart_vae (a sentence VAE)" in out and "Traceback" not in out, out[-3000:]
    # the other way: one side of the same corpus, binarised with its dictionary
    raw = tmp_path / "raw"
    raw.mkdir()
    sources, _ = pair_corpus(40, 3)
    (raw / "train.txt").write_text("\n".join(sources) + "\n")
    one_side = tmp_path / "one-side"
    run_tool("fairseq-preprocess", "--only-source", "--srcdict",
             os.path.join(pair_bin, "dict.src.txt"), "--trainpref", raw / "train.txt",
             "--validpref", raw / "train.txt", "--destdir", one_side, "--workers", "1")  # fmt: skip
    out = finetune(str(one_side), cvae_checkpoint, tmp_path / "b", *TINY_ARCH)
    assert "is a bart_cvae (a conditional VAE)" in out and "Traceback" not in out, out[-3000:]


# --- evaluation ---------------------------------------------------------------------------------


def log_p_x_given_c_by_hand(model, sample, eps, log_prior=None) -> torch.Tensor:
    """log p(x|c) ~ logsumexp_k [log p(x|z_k, c) + log p(z_k|c) - log q(z_k|c, x)] - log K for
    a one-pair batch, each term by hand in float64: the decoder's token log-probabilities
    summed, the two densities by torch.distributions; eps: 1 x K x D. ``log_prior(z, p)``: the
    log-density of another prior at z (D) given p(z|c) (a Normal), instead of p(z|c)'s."""
    net, encoder = sample["net_input"], model.encoder
    states, mask, mean = encoder.source_context(net["src_tokens"], net["src_lengths"])
    prior_mu, prior_logvar = encoder.prior(mean)
    mu, logvar = encoder.conditional_posterior(mean, net["tgt_tokens"], net["tgt_lengths"])
    q = Normal(mu[0].double(), torch.exp(0.5 * logvar[0]).double())
    p = Normal(prior_mu[0].double(), torch.exp(0.5 * prior_logvar[0]).double())
    terms = []
    for j in range(eps.size(1)):
        z = mu[0].double() + torch.exp(0.5 * logvar[0]).double() * eps[0, j].double()
        latent = {"mu": mu, "logvar": logvar, "z": z[None], "prior_mu": prior_mu,
                  "prior_logvar": prior_logvar, "source_mean": mean}  # fmt: skip
        out = encoder.conditional_encoder_out(states, mask, latent)
        logits, _ = model.decoder(net["prev_output_tokens"], encoder_out=out)
        lprobs = torch.log_softmax(logits.double(), dim=-1)[0]
        log_px = lprobs.gather(1, sample["target"][0][:, None]).sum()
        log_pz = p.log_prob(z).sum() if log_prior is None else log_prior(z, p)
        terms.append(log_px + log_pz - q.log_prob(z).sum())
    return torch.logsumexp(torch.stack(terms), 0) - math.log(eps.size(1))


def test_the_iw_bound_of_log_p_x_given_c_is_the_float64_loop(pair_dict_dir):
    from fairseq_vae.metrics.estimators import iw_estimates

    task, model, _ = build_cvae(pair_dict_dir)
    model.double()
    sample = paired_batch(task.dictionary, SOURCES[:1], TARGETS[:1])
    net, encoder, k = sample["net_input"], model.encoder, 6
    with torch.no_grad():
        states, mask, mean = encoder.source_context(net["src_tokens"], net["src_lengths"])
        prior_mu, prior_logvar = encoder.prior(mean)
        mu, logvar = encoder.conditional_posterior(mean, net["tgt_tokens"], net["tgt_lengths"])
        eps = torch.randn(1, k, encoder.latent_dim, generator=torch.Generator().manual_seed(3))
        got = iw_estimates(model, mu, logvar, net["prev_output_tokens"], sample["target"], k,
                           chunk=4, eps=eps, prior=(prior_mu, prior_logvar),
                           encoder_out_of=encoder.encoder_out_for(states, mask, mean))  # fmt: skip
        expected = log_p_x_given_c_by_hand(model, sample, eps)
    torch.testing.assert_close(got.log_px[0].double(), expected, rtol=1e-5, atol=1e-5)


def test_validation_iw_nll_of_bart_cvae_is_log_p_x_given_c(pair_dict_dir):
    """--valid-iw-samples: the criterion's iw_nll (nats, summed) is -log p(x|c) with the draws
    of a generator seeded by the batch's first id + 1."""
    k = 5
    task, model, args = build_cvae(pair_dict_dir, "--valid-iw-samples", str(k))
    model.double()
    criterion = task.build_criterion(args)
    sample = paired_batch(task.dictionary, SOURCES[1:2], TARGETS[1:2])
    sample["id"] = torch.tensor([4])
    with torch.no_grad():
        _, _, logged = criterion(model, sample)
        eps = torch.randn(
            1, k, model.encoder.latent_dim, generator=torch.Generator().manual_seed(5)
        )
        expected = log_p_x_given_c_by_hand(model, sample, eps)
    torch.testing.assert_close(logged["iw_nll"].double(), -expected, rtol=1e-5, atol=1e-5)


def test_eval_reports_log_p_x_given_c_and_the_measures_of_several_latents(pair_bin,
                                                                         cvae_checkpoint,
                                                                         tmp_path):  # fmt: skip
    import json

    report_path = tmp_path / "report.json"
    out = run_tool("fairseq-vae-eval", pair_bin, "--user-dir", USER_DIR, "--task", "text_vae",
                   *PAIRS, "--path", cvae_checkpoint, "--gen-subset", "test", "--cpu",
                   "--iw-samples", "4", "--latent-samples", "3", "--results-json",
                   report_path)  # fmt: skip
    report = json.load(open(report_path))
    m, c = report["metrics"], report["conditional"]
    assert m["kl"] >= 0 and m["iw_nll"] > 0 and m["iw_nll"] <= m["neg_elbo"] + 1e-6
    assert isinstance(m["info_beyond_source"], float) and "recon_bleu" in m
    sources, targets = pair_corpus(12, 2)
    assert c["sources"] == len(set(sources)) and c["latent_samples"] == 3
    assert all(len(e["outputs"]) == 3 for e in c["examples"])
    for key in ("multi_ref_bleu", "precision_bleu", "recall_bleu", "self_bleu", "source_bleu"):
        assert -1e-9 <= c[key] <= 100 + 1e-9, key  # a BLEU, up to rounding
    assert "precision / recall BLEU" in out and "IW-NLL" in out
    assert "3 z from p(z|c) for each of" in out  # the draws' prior, named


def test_interactive_decodes_n_latents_a_typed_source_as_the_hub_does(pair_bin, cvae_checkpoint,
                                                                      cvae_hub):  # fmt: skip
    """Typed sources have no sentence ids: the i-th typed source draws as the hub's i-th."""
    import subprocess

    sources, _ = pair_corpus(3, 11)
    command = [os.path.join(os.path.dirname(__import__("sys").executable), "fairseq-interactive"),
               pair_bin, "--user-dir", USER_DIR, "--task", "text_vae", *PAIRS, "--path",
               cvae_checkpoint, "--cpu", "--latent-source", "prior", "--latent-samples", "2",
               "--beam", "1", "--seed", "4", "--buffer-size", "2"]  # fmt: skip
    env = dict(os.environ, OMP_NUM_THREADS="1")
    out = subprocess.run(command, input="\n".join(sources) + "\n", capture_output=True,
                         text=True, timeout=300, env=env)  # fmt: skip
    printed = {}
    for m in re.finditer(r"^D-(\d+)\t\S+\t(.*)$", out.stdout, re.M):
        printed.setdefault(int(m[1]), []).append(m[2])
    assert [printed[i] for i in range(3)] == cvae_hub.sample(sources, n=2, seed=4), out.stderr[
        -2000:
    ]


def test_a_paired_folder_missing_one_side_is_refused_naming_the_file(pair_bin, cvae_checkpoint,
                                                                     tmp_path):  # fmt: skip
    import shutil

    copy = tmp_path / "pairs"
    shutil.copytree(pair_bin, copy)
    for ext in ("bin", "idx"):
        (copy / f"test.src-tgt.tgt.{ext}").unlink()
    out = run_tool("fairseq-generate", copy, "--user-dir", USER_DIR, "--task", "text_vae",
                   *PAIRS, "--path", cvae_checkpoint, "--cpu", check=False)  # fmt: skip
    assert f"split 'test': no {copy}/test.src-tgt.tgt.bin/.idx" in out, out[-2000:]
    assert "Traceback" not in out
