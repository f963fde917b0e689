"""How a checkpoint is fitted to a ``bart_vae`` model at load: the compatibility policy.

``BARTVAEModel.upgrade_state_dict_named`` calls :func:`upgrade_vae_state_dict` once fairseq's
BART upgrade has run. A plain BART checkpoint (fine-tuned into a VAE) lacks the latent modules'
parameters: they keep their fresh initialisation. A VAE checkpoint lacking some of them loads
only as the start of a --finetune-from-model run. Anything else that does not fit (other
dimensions, another dictionary, missing or unknown keys) is refused with the keys, sizes or
files named. ``--reset-decoder`` (Li et al. 2019) re-initialises the decoder side once.
"""

import hashlib
import logging
import os
from typing import Dict, Optional

import torch
import torch.distributed as dist
from torch import Tensor

from .latent import LATENT_MODULE_OPTIONS, LATENT_MODULES

logger = logging.getLogger(__name__)


class CheckpointMismatchError(ValueError):
    """A checkpoint that does not fit the model (dimensions, dictionary, keys, latent modules).

    Its own class so that checkpoint_safety can tell it from any other error when fairseq's
    trainer hides it behind its generic "architectures match" message."""


# a buffer holding the SHA-256 of the training dictionary's symbols, in order: a dictionary of
# the same size in another order (fairseq-preprocess run on other text) is refused at load
DICTIONARY_CHECKSUM = "dictionary_sha256"


def dictionary_sha256(dictionary) -> Tensor:
    """The SHA-256 of a fairseq Dictionary's symbols in index order, as 32 uint8 values."""
    digest = hashlib.sha256("\n".join(dictionary.symbols).encode("utf-8")).digest()
    return torch.tensor(list(digest), dtype=torch.uint8)


def is_latent_parameter(key: str) -> bool:
    """Whether a state-dict key belongs to one of the LATENT_MODULES."""
    return not LATENT_MODULES.isdisjoint(key.split("."))


# what --reset-decoder re-initialises (Li et al. 2019): the decoder and the z -> memory fusion,
# everything that reads z; the encoder, the posterior heads and the embeddings the decoder
# shares with the encoder keep the checkpoint's weights
DECODER_SIDE = ("decoder.", "encoder.latent_attn.", "encoder.latent_memory.")
SHARED_EMBEDDINGS = ("decoder.embed_tokens.weight", "decoder.output_projection.weight")
# a buffer whose presence in a checkpoint says "this decoder was trained in this setting":
# loading a checkpoint without it under --reset-decoder re-initialises the decoder once
DECODER_RESET_MARKER = "decoder_reset_done"


def differing_size(theirs: Tensor, own: Tensor) -> str:
    """The sizes that differ between two shapes: the width (the last dimension) when it does,
    else the first dimension that differs (a latent head's rows under another --latent-dim)."""
    if theirs.dim() != own.dim() or own.dim() == 0:
        return f"{theirs.dim()} dimensions vs {own.dim()}"
    if theirs.size(-1) != own.size(-1):
        return f"width {theirs.size(-1)} vs {own.size(-1)}"
    dim = next(i for i, (a, b) in enumerate(zip(theirs.shape, own.shape)) if a != b)
    return f"size {theirs.size(dim)} vs {own.size(dim)} in dimension {dim}"


def check_shapes(checkpoint: Dict[str, Tensor], own: Dict[str, Tensor], prefix: str, n_dict: int):
    """Raises a CheckpointMismatchError naming both sizes when a checkpoint's tensors do not
    fit the model."""
    for key, tensor in own.items():
        theirs = checkpoint.get(prefix + key)
        if theirs is None or theirs.shape == tensor.shape:
            continue
        if key.endswith("embed_tokens.weight") and theirs.size(1) == tensor.size(1):
            raise CheckpointMismatchError(
                f"the checkpoint's dictionary has {theirs.size(0)} entries but this task's has "
                f"{n_dict} ({key}): preprocess the data with the checkpoint's dict.txt "
                "(fairseq-preprocess --srcdict, or scripts/prepare_data.sh --bart)"
            )
        options = "--arch"
        if is_latent_parameter(key):
            options += " and latent options (--latent-dim, --latent-memory-slots)"
        raise CheckpointMismatchError(
            f"checkpoint tensor {key} has shape {tuple(theirs.shape)} but the model's is "
            f"{tuple(tensor.shape)}: the checkpoint was trained with other dimensions "
            f"({differing_size(theirs, tensor)}); choose the matching {options}"
        )


def check_keys(checkpoint: Dict[str, Tensor], own: Dict[str, Tensor], prefix: str):
    """Raises a CheckpointMismatchError naming the keys when the checkpoint lacks a parameter
    that is not one of the LATENT_MODULES', or holds one the model does not have."""
    theirs = {key[len(prefix) :] for key in checkpoint if key.startswith(prefix)}
    filled = [key for key in own if is_latent_parameter(key) or key == DICTIONARY_CHECKSUM]
    missing = sorted(key for key in own if key not in theirs and key not in filled)
    unexpected = sorted(key for key in theirs if key not in own)
    problems = []
    if missing:
        problems.append(f"{len(missing)} missing from the checkpoint: {', '.join(missing)}")
    if unexpected:
        problems.append(f"{len(unexpected)} not in the model: {', '.join(unexpected)}")
    if problems:
        raise CheckpointMismatchError(
            f"the checkpoint's parameters do not fit this model: {'; '.join(problems)} (was it "
            "trained with other --encoder-layers, --decoder-layers or latent options?)"
        )


def rename_wrapped_positions(state_dict, prefix: str):
    """With --latent-to-embeddings the decoder's learned positions are wrapped
    (``LatentPlusPositions``): BART's ``decoder.embed_positions.weight`` moves under
    ``.positions``."""
    positions = prefix + "decoder.embed_positions."
    for key in [k for k in state_dict if k.startswith(positions)]:
        rest = key[len(positions) :]
        if not rest.startswith(("positions.", "latent_to_embed.")):
            state_dict[positions + "positions." + rest] = state_dict.pop(key)


def check_dictionary(model, checksum: Optional[Tensor], state_dict):
    """Raises a CheckpointMismatchError naming both files when the checkpoint's dictionary
    checksum is not the model's task's (a checkpoint without one, older or a plain BART, is not
    checked)."""
    if checksum is None or torch.equal(checksum.cpu(), model.dictionary_sha256.cpu()):
        return
    # checkpoint_safety's loader notes the file on the state dict it returns
    checkpoint = getattr(state_dict, "checkpoint_file", "the checkpoint")
    dictionary = model.dictionary_file or "this task's dictionary"
    raise CheckpointMismatchError(
        f"checkpoint {checkpoint} was trained with another dictionary than {dictionary}: "
        "the same size, but other symbols or another order, so every token id would mean "
        "another word. Use the data-bin the model was trained on, or binarise with the "
        "checkpoint's dict.txt (fairseq-preprocess --srcdict)"
    )


def reset_decoder_weights(model, state_dict, prefix: str):
    """--reset-decoder: the first time a checkpoint without the marker is loaded (phase 1
    of Li et al.'s recipe), its decoder-side tensors are replaced by the model's fresh
    initialisation; this run's own checkpoints carry the marker and load unchanged."""
    if prefix + DECODER_RESET_MARKER in state_dict:
        return
    shared = model.args.share_all_embeddings  # then the decoder's embeddings are the encoder's
    own = model.state_dict()
    reset = [
        key
        for key in own
        if key.startswith(DECODER_SIDE) and not (shared and key in SHARED_EMBEDDINGS)
    ]
    for key in reset:
        state_dict[prefix + key] = own[key]
    state_dict[prefix + DECODER_RESET_MARKER] = own[DECODER_RESET_MARKER]
    logger.info(f"--reset-decoder: {len(reset)} decoder-side tensors re-initialised")


def latent_module(key: str) -> str:
    """The LATENT_MODULES module a key belongs to, by its path: ``encoder.latent_bow``."""
    parts = key.split(".")
    end = next(i for i, part in enumerate(parts) if part in LATENT_MODULES)
    return ".".join(parts[: end + 1])


def is_finetune_start(model, state_dict) -> bool:
    """Whether this load starts a training run from the file --finetune-from-model names.

    The option alone does not say so: a checkpoint saved by such a run keeps it in its saved
    options, which evaluation and generation load the model with, while they load another
    file (the run's own checkpoint). fairseq's trainer loads exactly the file the option
    names, and checkpoint_safety's loader notes the file on the state dict it returns. In a
    multi-worker run, fairseq broadcasts the loaded state from rank 0 as rebuilt dicts that
    lose the note, on every rank: there the process is a training worker, whose options are
    the command line's, and a training run with the option set loads either that file (its
    first launch) or its own checkpoint_last.pt (which has every module). Any other state
    dict without the note (a loader of one's own) is not a fine-tuning start: refusing is
    the safe side.
    """
    source = getattr(model.args, "finetune_from_model", None)
    if not source:
        return False
    loaded = getattr(state_dict, "checkpoint_file", None)
    if loaded is None:
        return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1
    return os.path.realpath(str(loaded)) == os.path.realpath(str(source))


def check_missing_latent_modules(model, state_dict, own, prefix: str):
    """A VAE checkpoint that lacks some latent modules' parameters would leave those modules
    random, and generation or evaluation would report numbers from random heads: refused
    naming the keys, unless a --finetune-from-model run starts from it (a warning). A
    checkpoint with no latent parameters at all is a plain BART: its latent modules are all
    new by design."""
    theirs = [key[len(prefix) :] for key in state_dict if key.startswith(prefix)]
    if not any(is_latent_parameter(key) for key in theirs):
        return
    missing = [key for key in own if is_latent_parameter(key) and prefix + key not in state_dict]
    if not missing:
        return
    modules = sorted({latent_module(key) for key in missing})
    options = sorted({LATENT_MODULE_OPTIONS[module.split(".")[-1]] for module in modules})
    if is_finetune_start(model, state_dict):
        logger.warning(
            f"the checkpoint has no {', '.join(modules)} ({', '.join(options)}): "
            "fine-tuning starts them from a fresh initialisation"
        )
        return
    checkpoint = getattr(state_dict, "checkpoint_file", "the checkpoint")
    raise CheckpointMismatchError(
        f"{checkpoint} is a VAE without {', '.join(modules)}, which this model has "
        f"({', '.join(options)}): {len(missing)} parameters missing: {', '.join(missing)}. "
        "Loaded like this they would be random. Load it with the options it was trained with "
        "(drop the --model-overrides that adds them), or train them first: fairseq-train "
        "--finetune-from-model with the new option"
    )


def check_model_kind(model, state_dict, prefix: str):
    """A sentence VAE's checkpoint given to bart_cvae, or a conditional one to bart_vae, is
    refused by name before any shape is compared: the posterior heads read one mean (bart_vae)
    or a source's and a target's side by side (bart_cvae), so their widths tell them apart."""
    theirs = state_dict.get(prefix + "encoder.mlp_mu.0.weight")
    if theirs is None:
        return  # a plain BART: every latent module starts afresh
    conditional = theirs.size(1) == 2 * model.encoder.embed_tokens.embedding_dim
    if conditional == getattr(model.encoder, "conditional", False):
        return
    checkpoint = getattr(state_dict, "checkpoint_file", "the checkpoint")
    raise CheckpointMismatchError(
        f"{checkpoint} is a bart_cvae (a conditional VAE): load it with --arch bart_cvae and "
        "paired data (--source-lang, --target-lang)"
        if conditional
        else f"{checkpoint} is a bart_vae (a sentence VAE): bart_cvae's posterior reads a "
        "source and a target; fine-tune bart_cvae from a plain BART checkpoint"
    )


def upgrade_vae_state_dict(model, state_dict, prefix: str):
    """Fits ``state_dict`` (keys under ``prefix``) to ``model`` or raises a
    CheckpointMismatchError (a ValueError).

    Encoder and decoder weights come from the checkpoint. A checkpoint with no parameter of
    the LATENT_MODULES (a plain BART) gets them all from the fresh initialisation, and a log
    line lists them; a VAE checkpoint lacking some of them is refused with the keys named,
    unless a --finetune-from-model run starts from it, which warns and initialises them
    afresh (check_missing_latent_modules). Any other parameter missing from the checkpoint,
    or a checkpoint parameter the model does not have (another number of layers, say), is
    an error naming the keys; checkpoints of other dimensions or dictionary size are refused
    with both sizes named.
    """
    own = model.state_dict()
    try:
        check_model_kind(model, state_dict, prefix)
        check_shapes(state_dict, own, prefix, len(model.encoder.dictionary))
        check_dictionary(model, state_dict.get(prefix + DICTIONARY_CHECKSUM), state_dict)
        if model.args.reset_decoder:
            reset_decoder_weights(model, state_dict, prefix)
        elif prefix + DECODER_RESET_MARKER in state_dict:
            del state_dict[prefix + DECODER_RESET_MARKER]  # fine-tuning such a checkpoint on
        check_keys(state_dict, own, prefix)
        check_missing_latent_modules(model, state_dict, own, prefix)
    except CheckpointMismatchError as error:
        # logged as well as raised: fairseq's trainer replaces it with a generic
        # "architectures must match" message (checkpoint_safety re-raises ours there), and
        # the log is where a training run's other messages are
        logger.error(str(error))
        raise
    fresh = [key for key in own if prefix + key not in state_dict]
    for key in fresh:
        state_dict[prefix + key] = own[key]
    if fresh:
        logger.info(
            f"{len(fresh)} parameters not in the checkpoint keep their fresh "
            f"initialisation: {', '.join(fresh)}"
        )
