"""Import a Hugging Face BART folder as a fairseq BART checkpoint (``fairseq-vae-import-hf``).

    fairseq-vae-import-hf bart-base bart-base-fairseq

reads, from a local folder and without ``transformers``: ``config.json``; the weights
(``model.safetensors``, sharded ``model.safetensors.index.json``, or ``pytorch_model.bin``);
and the tokenizer (``tokenizer.json``, or ``vocab.json`` and ``merges.txt``). It writes into
the output folder:

* ``model.pt``: a fairseq BART checkpoint (task ``denoising``, the folder's own dimensions)
  with exactly the tensors fairseq's BART has, for ``BARTModel.from_pretrained`` and
  ``fairseq-train --finetune-from-model``;
* ``dict.txt``, ``encoder.json``, ``vocab.bpe``: what ``scripts/prepare_data.sh --bart`` reads.
  fairseq's GPT-2 BPE turns text into ``encoder.json`` ids written as words, and its
  dictionary puts ``<s> <pad> </s> <unk>`` first, then the words of ``dict.txt`` in order.
  ``encoder.json`` maps each token to its Hugging Face id and ``dict.txt`` lists the ids
  4, 5, ... in order, so the dictionary index of a token is its Hugging Face id. The last
  Hugging Face id is ``<mask>``, which fairseq's denoising task adds after ``dict.txt``;
  ``text_vae`` has no ``<mask>`` and fairseq's BART drops that last embedding row on load;
* ``train_flags.txt``: the ``fairseq-train`` flags that build ``bart_vae`` of the same
  dimensions (also printed).

What fairseq's BART cannot represent (embedding scaling, pre-norm layers, a final layer norm,
a logits bias, untied output embeddings, another activation, other special token ids) is
refused with an error naming the config field or tensor.
"""

import argparse
import io
import json
import logging
import os
import pickle
import shlex
import sys
from typing import Dict, List, Tuple

import torch
from fairseq import options
from fairseq.data import Dictionary
from fairseq.models.bart.model import bart_base_architecture, bart_large_architecture
from fairseq.tasks.denoising import DenoisingTask
from safetensors.torch import load_file
from torch import Tensor

from fairseq_vae.models.bart_vae import bart_vae_architecture, bart_vae_large_architecture
from fairseq_vae.text.hf_tokenizer import (
    HFImportError,
    gpt2_bpe_files,
    mask_id,
    read_json,
    read_tokenizer,
)

TRAIN_FLAGS_FILE = "train_flags.txt"
SUPPORTED_ARCHITECTURES = {"BartForConditionalGeneration", "BartModel"}
# Hugging Face activation names -> fairseq's (--activation-fn). "gelu" is the exact erf form in
# both; gelu_new, gelu_fast and gelu_pytorch_tanh are the tanh approximation that fairseq calls
# gelu_accurate. fairseq has no SiLU/swish choice.
ACTIVATIONS = {
    "gelu": "gelu",
    "relu": "relu",
    "tanh": "tanh",
    "linear": "linear",
    "gelu_new": "gelu_accurate",
    "gelu_fast": "gelu_accurate",
    "gelu_pytorch_tanh": "gelu_accurate",
}
# config fields of BART variants that fairseq's BART cannot represent, with the only value
# it can. fairseq's BART is post-norm, has layernorm_embedding, unscaled embeddings, learned
# positions offset by 2, no final layer norm and no logits bias. (Older configs still carry
# normalize_embedding, static_position_embeddings, add_bias_logits, extra_pos_embeddings.)
REPRESENTABLE = {
    "scale_embedding": False,
    "normalize_before": False,
    "add_final_layer_norm": False,
    "add_bias_logits": False,
    "normalize_embedding": True,
    "static_position_embeddings": False,
    "extra_pos_embeddings": 2,
}
# fairseq-train option -> config.json field, for the dimensions of the model
DIMENSIONS = {
    "encoder_embed_dim": "d_model",
    "decoder_embed_dim": "d_model",
    "encoder_ffn_embed_dim": "encoder_ffn_dim",
    "decoder_ffn_embed_dim": "decoder_ffn_dim",
    "encoder_layers": "encoder_layers",
    "decoder_layers": "decoder_layers",
    "encoder_attention_heads": "encoder_attention_heads",
    "decoder_attention_heads": "decoder_attention_heads",
    "max_source_positions": "max_position_embeddings",
    "max_target_positions": "max_position_embeddings",
}
DROPOUTS = {
    "dropout": "dropout",
    "attention_dropout": "attention_dropout",
    "activation_dropout": "activation_dropout",
}


# Hugging Face names of the one token embedding (the model.-prefix removed); files may hold
# any of them, as tied tensors are often saved once
TIED_EMBEDDINGS = (
    "shared.weight",
    "encoder.embed_tokens.weight",
    "decoder.embed_tokens.weight",
    "lm_head.weight",
)


def load_hf_weights(folder: str) -> Dict[str, Tensor]:
    """The folder's state dict, from whichever of Hugging Face's weight files it has."""
    single = os.path.join(folder, "model.safetensors")
    if os.path.isfile(single):
        return load_file(single)
    for index_name, load in (
        ("model.safetensors.index.json", load_file),
        ("pytorch_model.bin.index.json", load_torch),
    ):
        if os.path.isfile(os.path.join(folder, index_name)):
            weight_map = read_json(folder, index_name).get("weight_map")
            if not isinstance(weight_map, dict):
                raise HFImportError(f"{os.path.join(folder, index_name)}: no weight_map")
            shards = sorted(set(weight_map.values()))
            state = {}
            for shard in shards:
                path = os.path.join(folder, shard)
                if not os.path.isfile(path):
                    raise HFImportError(f"missing {path} (a shard listed in {index_name})")
                state.update(load(path))
            return state
    binary = os.path.join(folder, "pytorch_model.bin")
    if os.path.isfile(binary):
        return load_torch(binary)
    raise HFImportError(
        f"missing {single}: {folder} has none of model.safetensors, "
        "model.safetensors.index.json, pytorch_model.bin"
    )


def load_torch(path: str) -> Dict[str, Tensor]:
    # tensors only: a pickle that names anything else is refused, never run
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        # torch's message suggests weights_only=False, which would run what the pickle asks
        refused = [line.strip() for line in str(error).splitlines() if "GLOBAL" in line]
        raise HFImportError(
            f"{path}: refused by torch.load(weights_only=True), it holds more than tensors "
            f"({'; '.join(refused) or str(error).splitlines()[0]})"
        ) from None


def check_config(config: dict, source: str) -> Dict[str, object]:
    """The fairseq options of the folder's model; refuses what fairseq's BART cannot represent."""

    def field(name):
        if name not in config:
            raise HFImportError(f"{source}: missing field {name}")
        return config[name]

    if config.get("model_type", "bart") != "bart":
        raise HFImportError(
            f"{source}: model_type is {config['model_type']!r}; only 'bart' can be imported"
        )
    unsupported = set(config.get("architectures") or []) - SUPPORTED_ARCHITECTURES
    if unsupported:
        raise HFImportError(
            f"{source}: architectures {sorted(unsupported)} are not supported; only "
            f"{' and '.join(sorted(SUPPORTED_ARCHITECTURES))} can be imported"
        )
    for name, value in REPRESENTABLE.items():
        if name in config and config[name] != value:
            raise HFImportError(
                f"{source}: {name} is {json.dumps(config[name])}, which fairseq's BART cannot "
                f"represent (it needs {json.dumps(value)})"
            )
    # fairseq's dictionary fixes the special ids, and its BART decoder starts from </s>
    fixed = Dictionary()
    for name, token_id in (
        ("bos_token_id", fixed.bos()),
        ("pad_token_id", fixed.pad()),
        ("eos_token_id", fixed.eos()),
        ("decoder_start_token_id", fixed.eos()),
    ):
        if name in config and config[name] != token_id:
            raise HFImportError(
                f"{source}: {name} is {config[name]}, fairseq's BART needs {token_id}"
            )
    activation = field("activation_function")
    if activation not in ACTIVATIONS:
        raise HFImportError(
            f"{source}: activation_function {activation!r} has no fairseq equivalent "
            f"(supported: {', '.join(sorted(ACTIVATIONS))})"
        )
    fairseq_options = {name: int(field(hf)) for name, hf in DIMENSIONS.items()}
    fairseq_options["activation_fn"] = ACTIVATIONS[activation]
    fairseq_options.update({name: float(config.get(hf, 0.0)) for name, hf in DROPOUTS.items()})
    return fairseq_options


def shared_embedding(hf: Dict[str, Tensor], source: str) -> Tensor:
    """The one token embedding fairseq's BART shares between encoder, decoder and output."""
    present = [name for name in TIED_EMBEDDINGS if name in hf]
    if not present:
        raise HFImportError(f"{source}: no token embedding (shared.weight)")
    embedding = hf[present[0]]
    for name in present[1:]:
        if not torch.equal(hf[name], embedding):
            raise HFImportError(
                f"{source}: {name} differs from {present[0]}; fairseq's BART ties its input and "
                "output embeddings (tie_word_embeddings)"
            )
    return embedding


def fairseq_state_dict(hf: Dict[str, Tensor], mask: int, source: str) -> Dict[str, Tensor]:
    """fairseq BART's state dict from a Hugging Face BartModel or BartForConditionalGeneration
    one: the names are the same but for the ``model.`` prefix and the tied embeddings."""
    hf = {key[len("model.") :] if key.startswith("model.") else key: t for key, t in hf.items()}
    bias = hf.pop("final_logits_bias", None)
    if bias is not None and bias.any():
        raise HFImportError(
            f"{source}: final_logits_bias is not zero, and fairseq's BART has no logits bias"
        )
    embedding = shared_embedding(hf, source)
    if embedding.size(0) == mask:
        # no <mask> row (see mask_id): fairseq's BART adds <mask> to its dictionary, so the
        # checkpoint needs a row; a zero one, never trained, which fine-tuning bart_vae drops
        embedding = torch.cat([embedding, embedding.new_zeros(1, embedding.size(1))])
    state = {key: t for key, t in hf.items() if key not in TIED_EMBEDDINGS}
    for key in (
        "encoder.embed_tokens.weight",
        "decoder.embed_tokens.weight",
        "decoder.output_projection.weight",
    ):
        state[key] = embedding
    return state


def closest_architecture(dims: Dict[str, object], architectures) -> Tuple[str, List[str]]:
    """The registered architecture needing the fewest overrides, and the overriding flags."""
    best = None
    for arch, fill_defaults in architectures:
        defaults = argparse.Namespace()
        fill_defaults(defaults)
        flags = []
        for name, value in dims.items():
            if getattr(defaults, name) != value:
                flags += ["--" + name.replace("_", "-"), str(value)]
        if best is None or len(flags) < len(best[1]):
            best = (arch, flags)
    return best


def bart_vae_flags(dims: Dict[str, object]) -> List[str]:
    """fairseq-train flags building bart_vae with these dimensions."""
    arch, flags = closest_architecture(
        dims, [("bart_vae", bart_vae_architecture), ("bart_vae_large", bart_vae_large_architecture)]
    )
    return ["--arch", arch, *flags]


def bart_args(out_dir: str, fairseq_options: Dict[str, object]) -> argparse.Namespace:
    """The options fairseq-train would record for BART of these dimensions on out_dir."""
    dims = {name: fairseq_options[name] for name in [*DIMENSIONS, "activation_fn"]}
    arch, _ = closest_architecture(
        dims, [("bart_base", bart_base_architecture), ("bart_large", bart_large_architecture)]
    )
    argv = [
        out_dir,
        "--task",
        "denoising",
        "--arch",
        arch,
        "--criterion",
        "cross_entropy",
        "--tokens-per-sample",
        str(fairseq_options["max_source_positions"]),
        "--bpe",
        "gpt2",
        "--gpt2-encoder-json",
        os.path.join(out_dir, "encoder.json"),
        "--gpt2-vocab-bpe",
        os.path.join(out_dir, "vocab.bpe"),
    ]
    for name, value in fairseq_options.items():  # all given, whatever the architecture's defaults
        argv += ["--" + name.replace("_", "-"), str(value)]
    return options.parse_args_and_arch(options.get_training_parser(), argv)


def fairseq_bart_state(
    args: argparse.Namespace, dict_txt: str, state: Dict[str, Tensor], source: str
) -> Dict[str, Tensor]:
    """Builds fairseq's BART for ``args`` and ``dict_txt`` and checks that ``state`` has exactly
    its tensor names and shapes; returns ``state`` with fairseq's own buffers (the layers'
    "version") added."""
    dictionary = Dictionary()
    dictionary.add_from_file(io.StringIO(dict_txt))
    task = DenoisingTask(args, dictionary)  # adds <mask>, as loading the checkpoint will
    # (not on the meta device: BART's initialisation copies through the CPU)
    expected = task.build_model(args).state_dict()
    buffers = {key: expected[key] for key in expected if key.endswith(".version")}
    state = {**state, **buffers}
    missing = sorted(set(expected) - set(state))
    if missing:
        raise HFImportError(f"{source}: no tensor for fairseq's {missing[0]}")
    extra = sorted(set(state) - set(expected))
    if extra:
        raise HFImportError(f"{source}: tensor {extra[0]} has no counterpart in fairseq's BART")
    for key, tensor in expected.items():
        if state[key].shape != tensor.shape:
            raise HFImportError(
                f"{source}: {key} has shape {tuple(state[key].shape)}, fairseq's BART of this "
                f"config.json needs {tuple(tensor.shape)}"
            )
    return state


def checkpoint(args: argparse.Namespace, state: Dict[str, Tensor]) -> dict:
    """A checkpoint laid out as fairseq's released BART model.pt files are: options as an
    argparse.Namespace under "args", which fairseq's loader upgrades (and which, unlike a
    stored omegaconf dict, takes the hub's ``bpe=`` overrides)."""
    return {
        "args": args,
        "model": state,
        "optimizer_history": [
            {
                "criterion_name": "CrossEntropyCriterion",
                "optimizer_name": "none",
                "lr_scheduler_state": {},
                "num_updates": 0,
            }
        ],
        "extra_state": {},
        "last_optimizer_state": None,
    }


def import_hf(hf_dir: str, out_dir: str) -> List[str]:
    """Writes model.pt, dict.txt, encoder.json, vocab.bpe and train_flags.txt into out_dir;
    returns the bart_vae flags."""
    config_path = os.path.join(hf_dir, "config.json")
    config = read_json(hf_dir, "config.json")
    fairseq_options = check_config(config, config_path)
    vocab_size = config.get("vocab_size")
    if not isinstance(vocab_size, int):
        raise HFImportError(f"{config_path}: missing field vocab_size")
    vocab, merges, tokenizer_path = read_tokenizer(hf_dir)
    mask = mask_id(vocab, vocab_size, tokenizer_path)
    state = fairseq_state_dict(load_hf_weights(hf_dir), mask, hf_dir)
    encoder, vocab_bpe, dict_txt = gpt2_bpe_files(vocab, merges, mask)
    args = bart_args(os.path.abspath(out_dir), fairseq_options)
    state = fairseq_bart_state(args, dict_txt, state, hf_dir)

    # everything is checked: nothing is written for a folder that cannot be imported
    os.makedirs(out_dir, exist_ok=True)
    with open(os.path.join(out_dir, "encoder.json"), "w", encoding="utf-8") as f:
        json.dump(encoder, f, ensure_ascii=False)
    with open(os.path.join(out_dir, "vocab.bpe"), "w", encoding="utf-8") as f:
        f.write(vocab_bpe)
    with open(os.path.join(out_dir, "dict.txt"), "w", encoding="utf-8") as f:
        f.write(dict_txt)
    torch.save(checkpoint(args, state), os.path.join(out_dir, "model.pt"))

    dims = {name: fairseq_options[name] for name in [*DIMENSIONS, "activation_fn"]}
    flags = bart_vae_flags(dims)
    with open(os.path.join(out_dir, TRAIN_FLAGS_FILE), "w", encoding="utf-8") as f:
        f.write(shlex.join(flags) + "\n")
    return flags


def cli_main():
    parser = argparse.ArgumentParser(
        prog="fairseq-vae-import-hf",
        description="Import a local Hugging Face BART folder (BartForConditionalGeneration or "
        "BartModel) as a fairseq BART checkpoint, with the dict.txt and GPT-2 BPE files that "
        "scripts/prepare_data.sh --bart needs. Nothing is downloaded.",
    )
    parser.add_argument(
        "hf_dir",
        help="folder with config.json, model.safetensors (or "
        "model.safetensors.index.json and its shards, or pytorch_model.bin), "
        "tokenizer.json or vocab.json and merges.txt",
    )
    parser.add_argument(
        "out_dir",
        help="where model.pt, dict.txt, encoder.json, vocab.bpe "
        f"and {TRAIN_FLAGS_FILE} are written",
    )
    args = parser.parse_args()
    logging.basicConfig(
        format="%(levelname)s | %(name)s | %(message)s",
        level=logging.WARNING,
        stream=sys.stderr,
        force=True,
    )
    try:
        flags = import_hf(args.hf_dir, args.out_dir)
    except HFImportError as error:
        sys.exit(f"fairseq-vae-import-hf: error: {error}")
    print(f"wrote {os.path.join(args.out_dir, 'model.pt')}, dict.txt, encoder.json, vocab.bpe")
    print(f"bart_vae of the same dimensions (also in {TRAIN_FLAGS_FILE}):")
    print(shlex.join(flags))


if __name__ == "__main__":
    cli_main()
