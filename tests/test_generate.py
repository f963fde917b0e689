"""Generation through fairseq-generate / fairseq-interactive and the hub interface."""

import re

import pytest
import torch
from conftest import USER_DIR, run_tool

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


def test_reconstruction_prints_bleu(data_bin, tiny_checkpoint):
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
    assert re.search(r"Generate test with beam=1: BLEU = [\d.]+", out), out[-2000:]


def test_interactive_reconstructs_typed_sentences(data_bin, tiny_checkpoint):
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
        input="the cat sat on the mat\na big dog ran\n",
    )
    assert len(re.findall(r"^H-\d+\t", out, flags=re.M)) == 2


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


def test_hub_encode_shapes_and_determinism(hub):
    mu, logvar = hub.encode(SENTENCES)
    assert mu.shape == logvar.shape == (4, hub.latent_dim)
    torch.testing.assert_close(hub.latent(SENTENCES), mu)
    torch.testing.assert_close(hub.latent(SENTENCES), hub.latent(SENTENCES))
    sampled = hub.latent(SENTENCES, sample=True)
    assert sampled.shape == mu.shape and not torch.allclose(sampled, mu)


def test_hub_batching_one_or_many_gives_the_same_per_sentence(hub):
    mu_all, _ = hub.encode(SENTENCES)
    mu_one = torch.cat([hub.encode([s])[0] for s in SENTENCES])
    torch.testing.assert_close(mu_all, mu_one, atol=1e-5, rtol=1e-5)
    assert hub.reconstruct(SENTENCES) == [hub.reconstruct([s])[0] for s in SENTENCES]
    small_batches = type(hub)(hub.cfg, hub.task, hub.model, batch_size=1)
    assert small_batches.reconstruct(SENTENCES) == hub.reconstruct(SENTENCES)


def test_hub_decode_sample_reconstruct(hub):
    z = torch.randn(3, hub.latent_dim)
    decoded = hub.decode(z)
    assert len(decoded) == 3 and all(isinstance(s, str) for s in decoded)
    assert hub.decode(z) == decoded  # greedy is deterministic
    assert hub.sample(5, seed=4) == hub.sample(5, seed=4)
    assert len(hub.sample(5, seed=4, sampling=True, sampling_topk=3)) == 5
    assert hub.reconstruct(SENTENCES[:2]) == hub.decode(hub.latent(SENTENCES[:2]))
    assert len(hub.decode(z, beam=3)) == 3


def test_hub_interpolation_endpoints_are_the_endpoints_latents(hub):
    z = hub.latent(SENTENCES[:2])
    for spherical in (False, True):
        path = interpolate_latents(z[0], z[1], 6, spherical=spherical)
        assert path.shape == (6, hub.latent_dim)
        assert torch.equal(path[0], z[0]) and torch.equal(path[-1], z[1])
        sentences = hub.interpolate(SENTENCES[0], SENTENCES[1], steps=6, spherical=spherical)
        assert len(sentences) == 6
        assert sentences[0] == hub.decode(z[:1])[0] and sentences[-1] == hub.decode(z[1:])[0]


def test_linear_and_spherical_paths():
    a, b = torch.tensor([1.0, 0.0]), torch.tensor([0.0, 2.0])
    torch.testing.assert_close(interpolate_latents(a, b, 3)[1], torch.tensor([0.5, 1.0]))
    mid = interpolate_latents(a, b, 3, spherical=True)[1]
    # slerp halfway between orthogonal vectors: equal weights sin(pi/4) / sin(pi/2)
    torch.testing.assert_close(mid, (a + b) * (2**-0.5))


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


def test_hub_truncates_a_sentence_longer_than_the_positions_with_a_warning(hub, caplog):
    limit = hub.model.encoder.max_positions()
    words = (SENTENCES[0].split() * limit)[: limit + 40]
    with caplog.at_level("WARNING"):
        mu, _ = hub.encode([" ".join(words)])
    assert f"{limit + 41} tokens is longer than the model's {limit} positions" in caplog.text
    # the first limit - 1 words and </s>: what encoding the cut sentence gives
    torch.testing.assert_close(mu, hub.encode([" ".join(words[: limit - 1])])[0])
    assert len(hub.reconstruct([" ".join(words)])) == 1


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
