"""Generation through fairseq-generate / fairseq-interactive and the hub interface."""

import math
import re

import pytest
import torch
from conftest import USER_DIR, random_sentences, run_tool
from vae_fixtures import make_data_bin, save_checkpoint, train_tiny

from fairseq_vae.models.bart_vae import BARTVAEModel
from fairseq_vae.models.hub_interface import interpolate_latents


def generate(data_bin, checkpoint, *args):
    out = run_tool(
        "fairseq-generate",
        data_bin,
        "--user-dir",
        USER_DIR,
        "--task",
        "text_vae",
        "--path",
        checkpoint,
        "--cpu",
        *args,
    )
    hypotheses = {}
    for line in out.splitlines():
        match = re.match(r"H-(\d+)\t(\S+)\t?(.*)$", line)
        if match:
            hypotheses.setdefault(int(match[1]), []).append(match[3])
    return hypotheses, out


def test_prior_samples_exact_count_and_seeded(data_bin, tiny_checkpoint):
    prior = ["--latent-source", "prior", "--prior-samples", "20", "--sampling", "--beam", "1"]
    first, _ = generate(data_bin, tiny_checkpoint, *prior, "--seed", "7")
    again, _ = generate(data_bin, tiny_checkpoint, *prior, "--seed", "7")
    other, _ = generate(data_bin, tiny_checkpoint, *prior, "--seed", "8")
    assert sorted(first) == list(range(20)) and all(len(h) == 1 for h in first.values())
    assert first == again
    assert first != other


def test_prior_count_survives_odd_batch_sizes(data_bin, tiny_checkpoint):
    # fairseq's default --required-batch-size-multiple 8 once turned 6 samples into 4
    hyps, _ = generate(
        data_bin,
        tiny_checkpoint,
        "--latent-source",
        "prior",
        "--prior-samples",
        "6",
        "--batch-size",
        "4",
        "--seed",
        "1",
    )
    assert sorted(hyps) == list(range(6))


@pytest.mark.parametrize(
    "search",
    [
        ["--beam", "4", "--nbest", "3"],
        ["--sampling", "--sampling-topk", "5", "--beam", "2", "--nbest", "2"],
        ["--sampling", "--sampling-topp", "0.9", "--beam", "1"],
        ["--beam", "2", "--max-len-b", "3", "--max-tokens", "50"],
    ],
    ids=["beam-nbest", "topk", "topp", "maxlen-maxtokens"],
)
def test_search_options_work_unchanged(data_bin, tiny_checkpoint, search):
    hyps, _ = generate(data_bin, tiny_checkpoint, "--gen-subset", "valid", "--seed", "1", *search)
    nbest = int(search[search.index("--nbest") + 1]) if "--nbest" in search else 1
    assert sorted(hyps) == list(range(40))
    assert all(len(h) == nbest for h in hyps.values())
    if "--max-len-b" in search:
        assert all(len(h.split()) <= 3 for hs in hyps.values() for h in hs)
    if "--sampling" not in search:
        # a sentence's z and search do not depend on the rest of its batch
        alone, _ = generate(
            data_bin, tiny_checkpoint, "--gen-subset", "valid", "--batch-size", "1", *search
        )
        assert alone == hyps
    if "--sampling-topk" in search:
        k = int(search[search.index("--sampling-topk") + 1])
        ranks = token_ranks(data_bin, tiny_checkpoint, hyps)
        assert max(ranks) < k and len(ranks) > 40, sorted(ranks)[-5:]


def token_ranks(data_bin, checkpoint, hyps):
    """The rank of each hypothesis token among the tokens the search may choose, by the
    model's next-token distribution given the posterior mean of its source sentence and the
    tokens before it (0: the most probable)."""
    from fairseq import checkpoint_utils

    models, _, task = checkpoint_utils.load_model_ensemble_and_task(
        [checkpoint], {"data": data_bin}
    )
    model, d = models[0].eval(), task.source_dictionary
    model.encoder.latent_source = "mean"  # what --latent-source posterior-mean decodes from
    task.load_dataset("valid")
    ranks = []
    with torch.no_grad():
        for i, texts in hyps.items():
            source = task.dataset("valid")[i]["source"]
            encoder_out = model.encoder(source[None], torch.tensor([len(source)]))
            for text in texts:
                tokens = d.encode_line(text, add_if_not_exist=False).long()
                prev = torch.cat([tokens.new_tensor([d.eos()]), tokens[:-1]])
                logits, _ = model.decoder(prev[None], encoder_out=encoder_out)
                scores = logits[0].float()  # T x V
                # the search never emits padding, nor an end of sentence first (--min-len 1)
                scores[:, d.pad()] = float("-inf")
                scores[0, d.eos()] = float("-inf")
                chosen = scores.gather(1, tokens[:, None])
                ranks += (scores > chosen).sum(dim=1).tolist()
    return ranks


def test_reconstruction_bleu_is_sacrebleu_of_the_printed_sentences(data_bin, tiny_checkpoint):
    import sacrebleu

    hyps, out = generate(
        data_bin,
        tiny_checkpoint,
        "--gen-subset",
        "test",
        "--beam",
        "1",
        "--latent-source",
        "posterior-mean",
        "--scoring",
        "sacrebleu",
    )
    assert sorted(hyps) == list(range(30))
    targets = dict(re.findall(r"^T-(\d+)\t(.*)$", out, flags=re.M))
    detokenized = dict(re.findall(r"^D-(\d+)\t\S+\t(.*)$", out, flags=re.M))
    ids = sorted(targets, key=int)
    # the references are the test split's sentences: a VAE reconstructs its input
    assert [targets[i] for i in ids] == random_sentences(30, seed=2)
    bleu = sacrebleu.corpus_bleu([detokenized[i] for i in ids], [[targets[i] for i in ids]])
    # the whole line: BLEU, the n-gram precisions, brevity penalty and lengths
    assert f"Generate test with beam=1: {bleu.format()}" in out, (bleu.format(), out[-500:])
    assert bleu.precisions[0] > 0  # some words right: a wrong pairing would show


def test_interactive_reconstructs_typed_sentences(vae):
    typed = ["the cat sat on the mat", "a dog"]
    out = run_tool(
        "fairseq-interactive",
        vae.data,
        "--user-dir",
        USER_DIR,
        "--task",
        "text_vae",
        "--path",
        vae.checkpoint,
        "--cpu",
        "--beam",
        "1",
        input="\n".join(typed) + "\n",
    )
    printed = dict(re.findall(r"^H-(\d+)\t\S+\t(.*)$", out, flags=re.M))
    mu, _ = posterior_by_hand(vae, typed)  # the same checkpoint, loaded by the hub
    assert printed == {str(i): text_of(vae, greedy_by_hand(vae, row)) for i, row in enumerate(mu)}
    assert printed["0"] != printed["1"]  # the typed sentences' latents tell them apart


def test_interactive_constraints_appear_in_the_output(data_bin, tiny_checkpoint):
    # lexically constrained beam search: each typed line carries its constraints after a tab
    out = run_tool(
        "fairseq-interactive",
        data_bin,
        "--user-dir",
        USER_DIR,
        "--task",
        "text_vae",
        "--path",
        tiny_checkpoint,
        "--cpu",
        "--beam",
        "4",
        "--constraints",
        input="the cat sat on the mat\tquickly\na big dog ran\tunder\tred\n",
    )
    hypotheses = re.findall(r"^H-(\d+)\t\S+\t(.*)$", out, flags=re.M)
    assert len(hypotheses) == 2, out[-3000:]
    words = dict((int(i), text.split()) for i, text in hypotheses)
    assert "quickly" in words[0]
    assert "under" in words[1] and "red" in words[1]


@pytest.fixture(scope="module")
def hub(data_bin, tiny_checkpoint):
    import os

    return BARTVAEModel.from_pretrained(
        os.path.dirname(tiny_checkpoint), os.path.basename(tiny_checkpoint), data_bin
    )


SENTENCES = ["the cat sat on the mat", "a big red dog ran quickly", "the rug", "a cat sat"]


@pytest.fixture(scope="module")
def vae(dict_dir, tmp_path_factory):
    """A hub whose sentences depend on z: trained in-process until z carries the sentence's
    length (the one thing random word strings share), so that decoding other latents gives
    other sentences. Its checkpoint and data-bin are there for the command-line tools."""
    import os

    folder = tmp_path_factory.mktemp("latent-in-use")
    task, model, args = train_tiny(dict_dir, 150, 0.1, 0)
    save_checkpoint(str(folder / "checkpoint.pt"), model, args)
    data = make_data_bin(str(folder / "bin"), dict_dir, {"test": random_sentences(12, seed=5)})
    hub = BARTVAEModel.from_pretrained(str(folder), "checkpoint.pt", data)
    hub.checkpoint, hub.data = os.path.join(folder, "checkpoint.pt"), data
    return hub


# --- independent references: tokens looked up by hand, greedy decoding written out -----------


def hand_batch(hub, sentences):
    """Right-padded tokens of word-level sentences, each word looked up in the dictionary."""
    d = hub.dictionary
    rows = [[d.index(word) for word in s.split()] + [d.eos()] for s in sentences]
    tokens = torch.full((len(rows), max(map(len, rows))), d.pad())
    for i, row in enumerate(rows):
        tokens[i, : len(row)] = torch.tensor(row)
    return tokens, torch.tensor([len(row) for row in rows])


@torch.no_grad()
def posterior_by_hand(hub, sentences):
    """(mu, logvar) of q(z|x): the encoder's posterior on the hand-made batch."""
    return hub.model.encoder.posterior(*hand_batch(hub, sentences))


def max_len(hub):
    # fairseq's default max_len_b, capped by the decoder's positions as SequenceGenerator does
    return min(200, hub.model.max_decoder_positions() - 1)


@torch.no_grad()
def next_token_scores(hub, z, prefix):
    """log p(next token | z, </s> + prefix) over the vocabulary, the decoder rerun on the whole
    prefix (no incremental state, no search object)."""
    d = hub.dictionary
    encoder_out = hub.model.encoder(torch.tensor([[d.eos()]]), torch.tensor([1]), z=z[None])
    logits, _ = hub.model.decoder(torch.tensor([[d.eos(), *prefix]]), encoder_out=encoder_out)
    return torch.log_softmax(logits[0, -1].float(), dim=-1)


def greedy_by_hand(hub, z):
    """Greedy decoding written out: the most probable token at each step, never padding nor
    </s> first (fairseq's min_len 1); </s> ends the sentence, forced after max_len tokens."""
    d, tokens = hub.dictionary, []
    while not tokens or tokens[-1] != d.eos():
        scores = next_token_scores(hub, z, tokens)
        scores[d.pad()] = float("-inf")
        if not tokens:
            scores[d.eos()] = float("-inf")
        tokens.append(d.eos() if len(tokens) == max_len(hub) else int(scores.argmax()))
    return tokens


def text_of(hub, tokens):
    return " ".join(hub.dictionary[t] for t in tokens if t != hub.dictionary.eos())


def test_hub_posterior_is_the_encoders_on_the_sentences_words(vae):
    mu, logvar = vae.encode(SENTENCES)
    expected_mu, expected_logvar = posterior_by_hand(vae, SENTENCES)
    torch.testing.assert_close(mu, expected_mu, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(logvar, expected_logvar, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(vae.latent(SENTENCES), expected_mu, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(expected_mu[0], expected_mu[1])  # the sentences differ in z


def test_hub_posterior_samples_follow_q(vae):
    n = 4000
    torch.manual_seed(0)
    samples = vae.latent([SENTENCES[0]] * n, sample=True)  # n x latent
    mu, logvar = posterior_by_hand(vae, SENTENCES[:1])
    sigma = (0.5 * logvar[0]).exp()
    # the sample mean within 5 standard errors of mu, the spread within 10% of sigma
    assert ((samples.mean(0) - mu[0]).abs() < 5 * sigma / n**0.5).all()
    torch.testing.assert_close(samples.std(0), sigma, rtol=0.1, atol=0.0)


def test_hub_decode_is_greedy_decoding(vae):
    z = torch.randn(3, vae.latent_dim, generator=torch.Generator().manual_seed(0))
    expected = [greedy_by_hand(vae, row) for row in z]
    assert len(set(map(tuple, expected))) > 1  # this model's sentences depend on z
    hypotheses = vae.decode_hypotheses(z)
    assert [h[0]["tokens"].tolist() for h in hypotheses] == expected
    assert vae.decode(z) == [text_of(vae, tokens) for tokens in expected]


def test_hub_sample_decodes_the_seeded_prior_draw(vae):
    sentences = vae.sample(5, seed=4)
    assert vae.sample(5, seed=4) == sentences
    assert vae.sample(5, seed=5) != sentences
    z = torch.randn(5, vae.latent_dim, generator=torch.Generator().manual_seed(4))
    assert sentences == [text_of(vae, greedy_by_hand(vae, row)) for row in z]


def test_hub_top_k_sampling_draws_among_the_k_most_probable_words(vae):
    z = torch.randn(5, vae.latent_dim, generator=torch.Generator().manual_seed(4))
    d, ranks = vae.dictionary, []
    for row, sentence in zip(z, vae.sample(5, seed=4, sampling=True, sampling_topk=3)):
        tokens = [d.index(word) for word in sentence.split()] + [d.eos()]
        for step, token in enumerate(tokens[: max_len(vae)]):  # the last may be forced
            scores = next_token_scores(vae, row, tokens[:step])
            scores[d.pad()] = float("-inf")
            if step == 0:
                scores[d.eos()] = float("-inf")
            ranks.append(int((scores > scores[token]).sum()))
    assert max(ranks) < 3 and max(ranks) > 0, ranks  # among the top 3, and not only the first


def test_hub_beam_search_scores_are_the_models_log_probabilities(vae):
    z = torch.randn(3, vae.latent_dim, generator=torch.Generator().manual_seed(1))
    hypotheses = vae.decode_hypotheses(z, beam=3, nbest=3)
    for row, hypos in zip(z, hypotheses):
        assert len(hypos) == 3
        for hypo in hypos:
            tokens = hypo["tokens"].tolist()
            lprobs = torch.stack(
                [next_token_scores(vae, row, tokens[:i])[t] for i, t in enumerate(tokens)]
            )
            torch.testing.assert_close(hypo["positional_scores"], lprobs, atol=1e-4, rtol=1e-4)
            # fairseq's score: the mean log-probability (length penalty 1)
            assert abs(float(hypo["score"]) - float(lprobs.mean())) < 1e-4
        scores = [float(h["score"]) for h in hypos]
        assert scores == sorted(scores, reverse=True)
    assert vae.decode(z, beam=3) == [text_of(vae, h[0]["tokens"].tolist()) for h in hypotheses]


def test_hub_reconstruct_decodes_the_posterior_mean_greedily(vae):
    mu, _ = posterior_by_hand(vae, SENTENCES)
    assert vae.reconstruct(SENTENCES) == [text_of(vae, greedy_by_hand(vae, row)) for row in mu]


def test_hub_batching_one_or_many_gives_the_same_per_sentence(hub):
    mu_all, _ = hub.encode(SENTENCES)
    mu_one = torch.cat([hub.encode([s])[0] for s in SENTENCES])
    torch.testing.assert_close(mu_all, mu_one, atol=1e-5, rtol=1e-5)
    assert hub.reconstruct(SENTENCES) == [hub.reconstruct([s])[0] for s in SENTENCES]
    small_batches = type(hub)(hub.cfg, hub.task, hub.model, batch_size=1)
    assert small_batches.reconstruct(SENTENCES) == hub.reconstruct(SENTENCES)


def angles(path):
    unit = path / path.norm(dim=1, keepdim=True)
    return torch.arccos((unit[:-1] * unit[1:]).sum(1).clamp(-1, 1))


def test_hub_interpolation_decodes_the_path_between_the_posterior_means(vae):
    z, _ = posterior_by_hand(vae, SENTENCES[::2])
    t = torch.linspace(0, 1, 6)[:, None]
    for spherical in (False, True):
        path = interpolate_latents(z[0], z[1], 6, spherical=spherical)
        assert torch.equal(path[0], z[0]) and torch.equal(path[-1], z[1])
        if not spherical:
            torch.testing.assert_close(path, (1 - t) * z[0] + t * z[1])
        else:  # in the plane of z_a and z_b, equal angles, the norm moving linearly
            plane = torch.linalg.qr(z.T)[0]  # latent x 2
            torch.testing.assert_close(path @ plane @ plane.T, path, atol=1e-5, rtol=0)
            torch.testing.assert_close(angles(path), angles(z).expand(5) / 5)
            norms = (1 - t[:, 0]) * z[0].norm() + t[:, 0] * z[1].norm()
            torch.testing.assert_close(path.norm(dim=1), norms)
        sentences = vae.interpolate(SENTENCES[0], SENTENCES[2], steps=6, spherical=spherical)
        assert sentences == [text_of(vae, greedy_by_hand(vae, row)) for row in path]
        assert len(set(sentences)) > 1  # the path leads somewhere else


def test_linear_and_spherical_paths():
    a, b = torch.tensor([1.0, 0.0]), torch.tensor([0.0, 2.0])
    torch.testing.assert_close(interpolate_latents(a, b, 3)[1], torch.tensor([0.5, 1.0]))
    path = interpolate_latents(a, b, 5, spherical=True)
    # a quarter of the way: 22.5 degrees turned, norm 1 + (2 - 1) / 4; halfway: 45 degrees, 1.5
    quarter = math.radians(22.5)
    torch.testing.assert_close(path[1], 1.25 * torch.tensor([math.cos(quarter), math.sin(quarter)]))
    torch.testing.assert_close(path[2], 1.5 * torch.tensor([0.5**0.5, 0.5**0.5]))


def test_slerp_between_antiparallel_latents_turns_through_an_orthogonal_direction():
    # z_b = -2 z_a: the angle is pi and every half circle is a slerp; the path turns through
    # the axis least aligned with z_a (here the second), the norm going from 2 to 4
    a, b = torch.tensor([2.0, 0.0]), torch.tensor([-4.0, 0.0])
    h = 0.5**0.5
    expected = torch.tensor([[2, 0], [2.5 * h, 2.5 * h], [0, 3], [-3.5 * h, 3.5 * h], [-4, 0]])
    torch.testing.assert_close(interpolate_latents(a, b, 5, spherical=True), expected)
    z = torch.randn(8, generator=torch.Generator().manual_seed(0))
    path = interpolate_latents(z, -z, 7, spherical=True)
    assert torch.isfinite(path).all()
    torch.testing.assert_close(path.norm(dim=1), z.norm().expand(7))
    assert abs(float(torch.dot(path[3], z))) < 1e-5  # halfway: orthogonal to z_a
    torch.testing.assert_close(angles(path), torch.full((6,), math.pi / 6))
    # a 1-D latent has nowhere to turn: the line through 0
    line = interpolate_latents(torch.tensor([1.0]), torch.tensor([-2.0]), 4, spherical=True)
    torch.testing.assert_close(line[:, 0], torch.tensor([1.0, 0.0, -1.0, -2.0]))


def test_hub_refuses_empty_sentences_naming_them(vae):
    with pytest.raises(ValueError, match=r"sentence 1 is empty \(''\)"):
        vae.reconstruct([SENTENCES[0], ""])
    with pytest.raises(ValueError, match=r"sentence 0 is empty \('  '\)"):
        vae.encode(["  ", SENTENCES[0]])
    with pytest.raises(ValueError, match="sentence 0 is empty"):
        vae.interpolate("", SENTENCES[0])


def test_from_pretrained_names_a_missing_folder(data_bin, tiny_checkpoint, tmp_path):
    import os

    folder, name = os.path.dirname(tiny_checkpoint), os.path.basename(tiny_checkpoint)
    missing = str(tmp_path / "no-such-folder")
    with pytest.raises(FileNotFoundError, match=f"model folder '{missing}' does not exist"):
        BARTVAEModel.from_pretrained(missing, name, data_bin)
    with pytest.raises(FileNotFoundError, match=f"data folder '{missing}' does not exist"):
        BARTVAEModel.from_pretrained(folder, name, missing)
    with pytest.raises(ValueError, match="data_name_or_path is empty"):
        BARTVAEModel.from_pretrained(folder, name, "")


def generate_in_process(task, model, split):
    """{sample id: best hypothesis' tokens} of beam-2 generation, as fairseq-generate runs it."""
    from fairseq.dataclass.configs import GenerationConfig

    task.load_dataset(split)
    generator = task.build_generator([model], GenerationConfig(beam=2))
    batches = task.get_batch_iterator(dataset=task.dataset(split), max_tokens=400)
    hypotheses = {}
    for sample in batches.next_epoch_itr(shuffle=False):
        for i, hypos in zip(sample["id"].tolist(), task.inference_step(generator, [model], sample)):
            hypotheses[i] = hypos[0]["tokens"].tolist()
    return hypotheses


def cpu_runs(dtype):
    try:
        torch.ones(2, 2, dtype=dtype) @ torch.ones(2, 2, dtype=dtype)
        return True
    except RuntimeError:
        return False


@pytest.mark.parametrize("precision", ["fp16", "bf16"])
def test_checkpoint_trained_in_half_precision_generates_in_half_precision(
    data_bin, tiny_checkpoint, tmp_path, precision
):
    # what --fp16/--bf16 training saves: half-precision weights and the flag in the config
    # (fairseq's --bf16 training needs a GPU or TPU, so the checkpoint is converted here)
    from fairseq import checkpoint_utils

    dtype = torch.float16 if precision == "fp16" else torch.bfloat16
    if not cpu_runs(dtype):
        pytest.skip(f"this machine's torch has no {precision} matrix product on the CPU")
    state = torch.load(tiny_checkpoint, map_location="cpu")
    state["model"] = {
        k: v.to(dtype) if v.is_floating_point() else v for k, v in state["model"].items()
    }
    state["cfg"]["common"][precision] = True
    half = str(tmp_path / f"checkpoint_{precision}.pt")
    torch.save(state, half)

    # fairseq-generate converts the model with --fp16 only (it has no --bf16 for generation),
    # so both are run here as it runs them, with the model in the half precision
    def load(checkpoint, dtype):
        models, _, task = checkpoint_utils.load_model_ensemble_and_task(
            [checkpoint], {"data": data_bin}
        )
        return task, models[0].to(dtype).eval()

    task, model = load(half, dtype)
    logits_dtypes = set()
    model.decoder.output_projection.register_forward_hook(
        lambda module, inputs, out: logits_dtypes.add(out.dtype)
    )
    hypotheses = generate_in_process(task, model, "valid")
    assert logits_dtypes == {dtype}  # the decoder really ran in half precision
    assert sorted(hypotheses) == list(range(40))
    # the same sentences as the fp32 model (this tiny model's top hypotheses are far apart)
    assert hypotheses == generate_in_process(*load(tiny_checkpoint, torch.float32), "valid")

    if precision == "fp16":  # and the command line, from the data and from the prior
        hyps, _ = generate(data_bin, half, "--fp16", "--gen-subset", "valid", "--beam", "2")
        assert sorted(hyps) == list(range(40))
        prior, _ = generate(
            data_bin, half, "--fp16", "--latent-source", "prior", "--prior-samples", "5"
        )
        assert sorted(prior) == list(range(5))


# --- the hub's edges ------------------------------------------------------------------------


def test_hub_refuses_a_sentence_longer_than_the_positions_naming_it(hub):
    """fairseq-interactive skips such a line, naming it; the hub names the sentence rather than
    encode a cut one (the old behaviour decoded a sentence the caller never gave)."""
    limit = hub.model.encoder.max_positions()
    words = (SENTENCES[0].split() * limit)[: limit + 40]
    with pytest.raises(ValueError, match=f"sentence 1 has {limit + 41} tokens, more than"):
        hub.encode([SENTENCES[1], " ".join(words)])
    with pytest.raises(ValueError, match=f"model's {limit} positions"):
        hub.reconstruct([" ".join(words)])
    # limit - 1 words and </s> fit: encoded as the whole sentence
    fits = " ".join(words[: limit - 1])
    torch.testing.assert_close(hub.encode([fits])[0], posterior_by_hand(hub, [fits])[0])


def test_hub_empty_inputs_give_empty_results(hub):
    mu, logvar = hub.encode([])
    assert mu.shape == logvar.shape == (0, hub.latent_dim)
    assert hub.reconstruct([]) == [] and hub.sample(0) == [] and hub.decode(mu) == []


def test_hub_seeded_sampling_ignores_and_keeps_the_global_random_state(hub):
    options = {"sampling": True, "sampling_topk": 10}
    torch.manual_seed(0)
    first = hub.sample(6, seed=3, **options)
    torch.manual_seed(1)
    state = torch.get_rng_state()
    assert hub.sample(6, seed=3, **options) == first
    assert torch.equal(torch.get_rng_state(), state)  # the caller's random stream is untouched
    # the word draws follow the seed: the same z with other word draws gives other sentences
    z = torch.randn(6, hub.latent_dim, generator=torch.Generator().manual_seed(3))
    assert hub.decode(z, seed=3, **options) == first
    assert hub.decode(z, seed=4, **options) != first


def test_hub_refuses_generation_options_fairseq_does_not_have(hub):
    with pytest.raises(TypeError, match="'sampling_top_p' \\(did you mean 'sampling_topp'\\?\\)"):
        hub.sample(2, sampling=True, sampling_top_p=0.9)
    with pytest.raises(TypeError, match="unknown generation option 'beem'"):
        hub.reconstruct(SENTENCES, beem=2)


def test_hub_match_source_len_decodes_against_the_real_sources(hub, data_bin, tiny_checkpoint):
    _, out = generate(
        data_bin,
        tiny_checkpoint,
        "--gen-subset",
        "test",
        "--beam",
        "1",
        "--match-source-len",
        "--batch-size",
        "8",
    )
    sources = dict(re.findall(r"^S-(\d+)\t(.*)$", out, flags=re.M))
    expected = dict(re.findall(r"^H-(\d+)\t\S+\t(.*)$", out, flags=re.M))
    ids = sorted(sources, key=int)
    got = hub.reconstruct([sources[i] for i in ids], match_source_len=True)
    assert got == [expected[i] for i in ids]  # fairseq-generate's lengths, from the real source
    assert len({len(s.split()) for s in got}) > 1
    with pytest.raises(ValueError, match="match_source_len needs the source sentences"):
        hub.sample(2, match_source_len=True)


def test_interactive_skips_empty_lines_and_warns_of_unknown_words(data_bin, tiny_checkpoint):
    typed = ["the cat sat on the mat", "", "The Cat Sat On The Mat"]
    out = run_tool(
        "fairseq-interactive",
        data_bin,
        "--user-dir",
        USER_DIR,
        "--task",
        "text_vae",
        "--path",
        tiny_checkpoint,
        "--cpu",
        "--beam",
        "1",
        input="\n".join(typed) + "\n",
    )
    # fairseq numbers the outputs by input line - 1: the empty line 2 has none
    assert sorted(re.findall(r"^H-(\d+)\t", out, flags=re.M)) == ["0", "2"]
    assert "skipping input line 2: empty" in out
    assert "input line 3: 100% of its tokens are unknown to the dictionary" in out
    assert "input line 1:" not in out


def test_hub_warns_when_most_of_a_sentence_is_unknown(hub, caplog):
    with caplog.at_level("WARNING"):
        hub.reconstruct(["the cat sat on the mat"])
    assert "unknown to the dictionary" not in caplog.text
    with caplog.at_level("WARNING"):
        hub.reconstruct(["The Cat Sat on the mat"])  # 3 of 6 words: not most
        assert "unknown to the dictionary" not in caplog.text
        hub.reconstruct(["The Cat Sat On the mat"])
    assert "'The Cat Sat On the mat': 67% of its tokens are unknown" in caplog.text
