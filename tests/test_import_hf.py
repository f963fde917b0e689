"""fairseq-vae-import-hf against transformers and tokenizers as the independent reference.

Tiny random Hugging Face BART folders are built here (their own byte-level BPE trained in the
test, special tokens laid out as in facebook/bart-base), imported, and compared: token ids
through scripts/prepare_data.sh --bart, logits through fairseq's BARTModel.from_pretrained,
and the weights fairseq-train starts a bart_vae from.
"""

import json
import random
import re
import shlex

import pytest
import torch
from conftest import USER_DIR, random_sentences, run_tool
from fairseq.data import Dictionary, data_utils
from fairseq.models.bart import BARTModel
from safetensors.torch import load_file, save_file
from test_prepare_data import prepare
from tokenizers import ByteLevelBPETokenizer
from transformers import BartConfig, BartForConditionalGeneration, BartModel, BartTokenizer

import fairseq_vae  # noqa: F401  (its safe globals let torch.load read fairseq checkpoints)
from fairseq_vae.cli.import_hf import HFImportError, bart_vae_flags, import_hf

SPECIALS = ["<s>", "<pad>", "</s>", "<unk>"]  # ids 0-3, as in facebook/bart-base
PAD = 1
FIXED_SENTENCES = [
    "The cat sat on the mat.",
    "A dog ran under the red rug!",
    "Don't stop: it's 3.14, isn't it?",
    "naïve café owners in Zürich earn 1,250 CHF",
    "東京 and Kyōto are cities 🙂",
    'Mixed CASE, "quotes" and (brackets) -- dashes',
    "tabs\tand  double  spaces stay",
    "e-mail: someone@example.com; url https://example.org/x?y=1",
    "The end ... or is it?",
    "  leading spaces are stripped",
]


def corpus_sentences(n, seed):
    """Word soup with punctuation, digits, capitals and accents around the shared words."""
    rng = random.Random(seed)
    extras = ["Über", "isn't", "42", "3.5%", "café", "—", "?!", "O'Neil", "x2", "$9.99"]
    out = []
    for sentence in random_sentences(n, seed=seed):
        words = sentence.split()
        words.insert(rng.randrange(len(words) + 1), rng.choice(extras))
        out.append(" ".join(words).capitalize() + rng.choice([".", "!", "", ","]))
    return out


def train_tokenizer(folder, texts):
    """A byte-level BPE saved as a Hugging Face tokenizer: <s> <pad> </s> <unk> first,
    <mask> last (facebook/bart-base's layout). Returns the vocabulary size."""
    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator(
        texts, vocab_size=420, min_frequency=2, special_tokens=SPECIALS, show_progress=False
    )
    bpe.add_special_tokens(["<mask>"])
    folder.mkdir(parents=True, exist_ok=True)
    bpe.save_model(str(folder))  # vocab.json (without added tokens) and merges.txt
    vocab = bpe.get_vocab()  # with <mask>
    (folder / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False))
    BartTokenizer(
        vocab=str(folder / "vocab.json"), merges=str(folder / "merges.txt")
    ).save_pretrained(str(folder))
    assert vocab["<mask>"] == len(vocab) - 1
    return len(vocab)


def perturbed(model):
    """Every parameter moved away from its initial value, so a tensor left out shows."""
    torch.manual_seed(1)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(0.05 * torch.randn_like(parameter))
    return model.eval()


def hf_folder(folder, tokenizer_dir, vocab_size, cls, how, activation="gelu", mask_row=True):
    """Saves a tiny random BART as a Hugging Face folder; returns the model. Without
    ``mask_row`` the embedding stops before <mask>, as facebook/bart-large-cnn's does."""
    config = BartConfig(
        vocab_size=vocab_size if mask_row else vocab_size - 1,
        d_model=32,
        encoder_layers=2,
        decoder_layers=3,
        encoder_attention_heads=4,
        decoder_attention_heads=2,
        encoder_ffn_dim=64,
        decoder_ffn_dim=48,
        max_position_embeddings=64,
        dropout=0.0,
        attention_dropout=0.0,
        activation_dropout=0.0,
        activation_function=activation,
    )
    torch.manual_seed(0)
    model = perturbed(cls(config))
    folder.mkdir(parents=True)
    if how == "bin":  # what older transformers wrote: every tied name, pickled tensors
        config.save_pretrained(str(folder))
        torch.save(model.state_dict(), folder / "pytorch_model.bin")
    elif how == "sharded":
        model.save_pretrained(str(folder), max_shard_size="20KB")
        assert (folder / "model.safetensors.index.json").exists()
    else:
        model.save_pretrained(str(folder))
        assert (folder / "model.safetensors").exists()
    # older folders have only vocab.json and merges.txt; newer ones also tokenizer.json,
    # which transformers (and the importer) read first
    names = ["vocab.json", "merges.txt"]
    if how != "bin":
        names += ["tokenizer.json", "tokenizer_config.json"]
    for name in names:
        (folder / name).write_bytes((tokenizer_dir / name).read_bytes())
    return model


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """Raw train/valid/test text and a tokenizer trained on the train split."""
    root = tmp_path_factory.mktemp("hf-corpus")
    splits = {
        "train": corpus_sentences(300, 0),
        "valid": corpus_sentences(20, 1),
        "test": FIXED_SENTENCES + corpus_sentences(50, 2),
    }
    (root / "raw").mkdir()
    for split, lines in splits.items():
        (root / "raw" / f"{split}.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
    vocab_size = train_tokenizer(root / "tokenizer", splits["train"])
    return root, vocab_size


# (weights file, model class, activation, has a <mask> row): every kind of folder, and
# activations mapped to fairseq's gelu, relu, gelu_accurate and tanh
VARIANTS = {
    "safetensors": ("safetensors", BartForConditionalGeneration, "gelu", True),
    "bart-model": ("safetensors", BartModel, "relu", True),
    "pytorch-bin": ("bin", BartForConditionalGeneration, "gelu_new", True),
    "sharded": ("sharded", BartForConditionalGeneration, "tanh", True),
    "no-mask-row": ("safetensors", BartForConditionalGeneration, "gelu", False),
}


@pytest.fixture(scope="module")
def imported(corpus, tmp_path_factory):
    """variant -> (Hugging Face model, its folder, the imported folder, the flags printed)"""
    root, vocab_size = corpus
    out = {}
    for name, (how, cls, activation, mask_row) in VARIANTS.items():
        folder = tmp_path_factory.mktemp(name)
        model = hf_folder(
            folder / "hf", root / "tokenizer", vocab_size, cls, how, activation, mask_row
        )
        if name == "safetensors":  # the console script once; the function for the others
            log = run_tool("fairseq-vae-import-hf", folder / "hf", folder / "fairseq")
        else:
            log = " ".join(import_hf(str(folder / "hf"), str(folder / "fairseq")))
        out[name] = model, folder / "hf", folder / "fairseq", log
    return out


@pytest.fixture(scope="module")
def hf_data(corpus, imported, tmp_path_factory):
    """The corpus binarised by scripts/prepare_data.sh --bart with the imported files."""
    root, _ = corpus
    _, _, fairseq_dir, _ = imported["safetensors"]
    out = tmp_path_factory.mktemp("hf-data-bin")
    result = prepare(root / "raw", "hf-data", out, "--bart", str(fairseq_dir))
    assert result.returncode == 0, result.stderr
    return out / "hf-data"


def hf_batch(tokenizer, sentences):
    """Right-padded source ids (<s> ... </s>) and BART's decoder input (</s> <s> ...)."""
    rows = [tokenizer(s)["input_ids"] for s in sentences]
    width = max(len(r) for r in rows)
    src = torch.full((len(rows), width), PAD)
    for i, row in enumerate(rows):
        src[i, : len(row)] = torch.tensor(row)
    prev = torch.full_like(src, PAD)
    prev[:, 0] = tokenizer.eos_token_id
    prev[:, 1:] = src[:, :-1].masked_fill(src[:, :-1] == tokenizer.eos_token_id, PAD)
    return src, prev


def test_prepare_data_gives_the_hugging_face_token_ids(corpus, imported, hf_data):
    root, _ = corpus
    _, hf_dir, _, _ = imported["safetensors"]
    tokenizer = BartTokenizer.from_pretrained(str(hf_dir))
    dest = hf_data
    dictionary = Dictionary.load(str(dest / "dict.txt"))
    data = data_utils.load_indexed_dataset(str(dest / "test"), dictionary)
    lines = (root / "raw" / "test.txt").read_text(encoding="utf-8").splitlines()
    assert len(data) == len(lines) >= 50
    merged = 0
    for i, line in enumerate(lines):
        expected = tokenizer(line.strip(), add_special_tokens=False)["input_ids"]
        assert data[i].tolist() == expected + [tokenizer.eos_token_id], line
        merged += sum(token >= 4 + 256 for token in expected)  # ids past the byte alphabet
    assert merged > 100  # the merges were applied, not only single bytes


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_fairseq_logits_equal_transformers(corpus, imported, variant):
    hf_model, hf_dir, fairseq_dir, log = imported[variant]
    flags = (fairseq_dir / "train_flags.txt").read_text().strip()
    assert flags in log
    bart = BARTModel.from_pretrained(
        str(fairseq_dir),
        "model.pt",
        gpt2_encoder_json=str(fairseq_dir / "encoder.json"),
        gpt2_vocab_bpe=str(fairseq_dir / "vocab.bpe"),
    )
    bart.eval()
    tokenizer = BartTokenizer.from_pretrained(str(hf_dir))
    sentences = FIXED_SENTENCES[:6]
    src, prev = hf_batch(tokenizer, sentences)
    # the hub's own BPE and dictionary give the same source ids
    for sentence, row in zip(sentences, src):
        assert bart.encode(sentence).tolist() == row[row != PAD].tolist()
    with torch.no_grad():
        ours = bart.model(src, src.ne(PAD).sum(1), prev)[0]
        kwargs = dict(
            input_ids=src,
            attention_mask=src.ne(PAD),
            decoder_input_ids=prev,
            decoder_attention_mask=prev.ne(PAD),
        )
        if isinstance(hf_model, BartModel):  # no head: the output layer is the shared embedding
            theirs = hf_model(**kwargs).last_hidden_state @ hf_model.shared.weight.T
        else:
            theirs = hf_model(**kwargs).logits
    keep = prev.ne(PAD)
    if not VARIANTS[variant][3]:  # fairseq's dictionary has <mask>, the model had no row for it
        assert ours.size(-1) == theirs.size(-1) + 1
        ours = ours[..., :-1]
    assert ours.shape == theirs.shape
    assert theirs[keep].abs().max() > 0.5  # logits of some size, not a near-zero model
    torch.testing.assert_close(ours[keep], theirs[keep], atol=1e-4, rtol=0)


def test_finetuning_bart_vae_starts_from_the_hugging_face_weights(imported, hf_data, tmp_path):
    hf_model, _, fairseq_dir, _ = imported["safetensors"]
    flags = shlex.split((fairseq_dir / "train_flags.txt").read_text())
    save_dir = tmp_path / "vae"
    # --lr 0: Adam's step is exactly zero, so the saved model is the model as loaded
    out = run_tool(
        "fairseq-train",
        hf_data,
        "--user-dir",
        USER_DIR,
        "--task",
        "text_vae",
        "--criterion",
        "elbo",
        *flags,
        "--dropout",
        "0",
        "--attention-dropout",
        "0",
        "--finetune-from-model",
        fairseq_dir / "model.pt",
        "--optimizer",
        "adam",
        "--lr",
        "0",
        "--max-update",
        "3",
        "--max-tokens",
        "400",
        "--kl-schedule",
        "constant",
        "--kl-beta-max",
        "0.1",
        "--save-dir",
        save_dir,
        "--no-epoch-checkpoints",
        "--disable-validation",
        "--required-batch-size-multiple",
        "1",
        "--num-workers",
        "0",
        "--cpu",
        "--seed",
        "3",
    )
    assert re.search(r"num_updates 3\b|num_updates\": \"3\"", out), out[-3000:]
    vae = torch.load(save_dir / "checkpoint_last.pt", map_location="cpu")["model"]
    hf = hf_model.state_dict()
    compared = 0
    for key, tensor in vae.items():
        if key.endswith(".version") or not key.startswith(("encoder.", "decoder.")):
            continue
        if key.startswith(("encoder.mlp_", "encoder.latent_")):
            continue  # the VAE's own modules: not in BART
        if key.endswith(("embed_tokens.weight", "output_projection.weight")):
            # the shared embedding; text_vae's dictionary has no <mask>, the last row
            expected = hf["model.shared.weight"][:-1]
        else:
            expected = hf["model." + key]
        assert torch.equal(tensor, expected), key
        compared += 1
    # every Hugging Face tensor but the tied names and the logits bias was compared
    n_hf = len(
        [
            k
            for k in hf
            if "embed_tokens" not in k
            and k not in ("model.shared.weight", "lm_head.weight", "final_logits_bias")
        ]
    )
    assert compared == n_hf + 3  # + the embedding under its three fairseq names


def test_flags_name_the_registered_architectures_for_bart_base_and_large():
    # the dimensions of facebook/bart-base's and facebook/bart-large's config.json
    def dims(width, layers, heads):
        return {
            "encoder_embed_dim": width,
            "decoder_embed_dim": width,
            "encoder_ffn_embed_dim": 4 * width,
            "decoder_ffn_embed_dim": 4 * width,
            "encoder_layers": layers,
            "decoder_layers": layers,
            "encoder_attention_heads": heads,
            "decoder_attention_heads": heads,
            "max_source_positions": 1024,
            "max_target_positions": 1024,
            "activation_fn": "gelu",
        }

    assert bart_vae_flags(dims(768, 6, 12)) == ["--arch", "bart_vae"]
    assert bart_vae_flags(dims(1024, 12, 16)) == ["--arch", "bart_vae_large"]
    assert bart_vae_flags({**dims(768, 6, 12), "decoder_layers": 3}) == [
        "--arch",
        "bart_vae",
        "--decoder-layers",
        "3",
    ]


def edit_config(folder, **changes):
    config = json.loads((folder / "config.json").read_text())
    config.update(changes)
    (folder / "config.json").write_text(json.dumps(config))


@pytest.fixture
def hf_copy(imported, tmp_path):
    """A fresh copy of the safetensors folder, to break."""
    _, hf_dir, _, _ = imported["safetensors"]
    copy = tmp_path / "hf"
    copy.mkdir()
    for path in hf_dir.iterdir():
        (copy / path.name).write_bytes(path.read_bytes())
    return copy


@pytest.mark.parametrize(
    "changes,field",
    [
        ({"scale_embedding": True}, "scale_embedding"),
        ({"add_final_layer_norm": True}, "add_final_layer_norm"),
        ({"normalize_before": True}, "normalize_before"),
        ({"activation_function": "silu"}, "activation_function"),
        ({"model_type": "mbart"}, "model_type"),
        ({"decoder_start_token_id": 0}, "decoder_start_token_id"),
    ],
)
def test_unrepresentable_config_names_the_field(hf_copy, tmp_path, changes, field):
    edit_config(hf_copy, **changes)
    with pytest.raises(HFImportError, match=field):
        import_hf(str(hf_copy), str(tmp_path / "out"))
    assert not (tmp_path / "out").exists()  # refused before anything is written


def test_weights_fairseq_cannot_hold_are_refused_by_name(hf_copy, tmp_path):
    weights = load_file(str(hf_copy / "model.safetensors"))
    biased = {**weights, "final_logits_bias": torch.full_like(weights["final_logits_bias"], 0.1)}
    save_file(biased, str(hf_copy / "model.safetensors"))
    with pytest.raises(HFImportError, match="final_logits_bias"):
        import_hf(str(hf_copy), str(tmp_path / "out"))
    untied = {**weights, "lm_head.weight": weights["model.shared.weight"] + 1}
    save_file(untied, str(hf_copy / "model.safetensors"))
    with pytest.raises(HFImportError, match="lm_head.weight"):
        import_hf(str(hf_copy), str(tmp_path / "out"))
    # mBART's final layer norm, under a config that does not say so
    width = weights["model.shared.weight"].size(1)
    extra = {**weights, "model.encoder.layer_norm.weight": torch.ones(width)}
    save_file(extra, str(hf_copy / "model.safetensors"))
    with pytest.raises(HFImportError, match=r"encoder\.layer_norm\.weight"):
        import_hf(str(hf_copy), str(tmp_path / "out"))
    del weights["model.decoder.layers.2.fc1.bias"]
    save_file(weights, str(hf_copy / "model.safetensors"))
    with pytest.raises(HFImportError, match=r"decoder\.layers\.2\.fc1\.bias"):
        import_hf(str(hf_copy), str(tmp_path / "out"))
    assert not (tmp_path / "out").exists()  # refused before anything is written


@pytest.mark.parametrize(
    "removed,named",
    [
        (["config.json"], "config.json"),
        (["tokenizer.json", "vocab.json"], "vocab.json"),
        (["tokenizer.json", "merges.txt"], "merges.txt"),
        (["model.safetensors"], "model.safetensors"),
    ],
)
def test_missing_file_is_named(hf_copy, tmp_path, removed, named):
    for name in removed:
        (hf_copy / name).unlink()
    with pytest.raises(HFImportError, match=re.escape(str(hf_copy / named))):
        import_hf(str(hf_copy), str(tmp_path / "out"))


def test_tokenizer_fairseq_cannot_reproduce_is_refused(hf_copy, tmp_path):
    tokenizer = json.loads((hf_copy / "tokenizer.json").read_text())
    tokenizer["pre_tokenizer"]["add_prefix_space"] = True  # " " + text: other ids
    (hf_copy / "tokenizer.json").write_text(json.dumps(tokenizer))
    with pytest.raises(HFImportError, match="pre_tokenizer.add_prefix_space"):
        import_hf(str(hf_copy), str(tmp_path / "out"))


class NotATensor:
    """A global that torch.load(weights_only=True) must refuse to unpickle."""


def test_pickle_with_more_than_tensors_is_refused(hf_copy, tmp_path):
    weights = load_file(str(hf_copy / "model.safetensors"))
    (hf_copy / "model.safetensors").unlink()
    torch.save({**weights, "extra": NotATensor()}, hf_copy / "pytorch_model.bin")
    with pytest.raises(HFImportError, match=re.escape(str(hf_copy / "pytorch_model.bin"))):
        import_hf(str(hf_copy), str(tmp_path / "out"))


def one_error_line(hf_dir, out_dir):
    result = run_tool("fairseq-vae-import-hf", hf_dir, out_dir, check=False)
    lines = [line for line in result.splitlines() if line.strip()]
    errors = [line for line in lines if "error" in line]
    assert len(errors) == 1 and "Traceback" not in result, result
    return errors[0]


def test_cli_errors_are_one_line(hf_copy, tmp_path):
    weights = (hf_copy / "model.safetensors").read_bytes()
    (hf_copy / "model.safetensors").unlink()
    line = one_error_line(hf_copy, tmp_path / "out")
    assert line.startswith("fairseq-vae-import-hf: error:")
    assert str(hf_copy / "model.safetensors") in line
    (hf_copy / "model.safetensors").write_bytes(weights)
    edit_config(hf_copy, scale_embedding=True)
    line = one_error_line(hf_copy, tmp_path / "out")
    assert line.startswith("fairseq-vae-import-hf: error:") and "scale_embedding" in line
