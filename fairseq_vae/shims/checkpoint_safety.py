"""Load fairseq checkpoints with torch's ``weights_only=True`` safety on; write them atomically.

``weights_only=True`` unpickles only globals on an allow-list; fairseq checkpoints store their
options as an ``argparse.Namespace``, so without this they cannot be loaded at all. We add
exactly the globals fairseq's own checkpoints contain, never switch the safety off, and so a
checkpoint whose pickle names anything else (code to run on load, say) is refused, with an
error that names the file. fairseq's loader calls ``torch.load`` without ``weights_only``,
which leaves the choice to torch's default, and ``TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD=1`` in the
environment turns that default off; torch lets the switch override only the default, so the
loader is given a ``torch.load`` that passes ``weights_only=True`` explicitly.

A checkpoint's options are an omegaconf config once loaded, and omegaconf evaluates
interpolations when an option is read: ``${oc.env:NAME}`` reads the environment, and any
registered resolver runs. fairseq's own checkpoints only refer to other options
(``${optimization.max_update}``); a checkpoint that calls a resolver is refused at load.

fairseq writes a checkpoint once (to a temporary file, then renamed: atomic) and copies it to
its other names, checkpoint_last.pt among them, with a plain copy that truncates the target
first: a process killed during that copy leaves no readable checkpoint_last.pt to resume from.
Local copies here go through a temporary file, flushed to disk, and an atomic rename instead.

What is replaced, and why it has to be for the whole process: fairseq offers no hook for any
of these, and its trainer, hub and command-line tools reach them by name at call time.

- ``checkpoint_utils.torch``: only the name ``torch`` inside fairseq's checkpoint_utils module,
  whose only ``torch.load`` calls read checkpoints; everything else is torch's own attribute.
  A wrapper around load_checkpoint_to_cpu could not do it: the function's body looks ``torch``
  up in its module. ``torch.load`` itself, everywhere else, is left alone.
- ``checkpoint_utils.load_checkpoint_to_cpu``: returns fairseq's state unchanged (with the
  file's name noted on the model's state dict); only its refusal message is ours.
- ``PathManager.copy``: local targets only; remote ones (iopath's handlers) go to fairseq's.
- ``Trainer.load_checkpoint``: unchanged, except that when its generic "please ensure that the
  architectures match" error hides our CheckpointMismatchError, ours is raised instead.
- torch's allow-list is one list for the process: the globals added are plain data (an
  options namespace, omegaconf containers, numpy arrays), so a ``torch.load`` of a fairseq
  checkpoint elsewhere (a script reading ``["model"]``) works as well, and no code can run.
"""

import argparse
import collections
import functools
import importlib
import logging
import os
import pickle
import shutil
import types
import typing

import torch
from fairseq import checkpoint_utils
from fairseq.file_io import PathManager
from fairseq.trainer import Trainer
from omegaconf import OmegaConf, grammar_parser
from omegaconf.errors import GrammarParseError
from omegaconf.grammar.gen.OmegaConfGrammarParser import OmegaConfGrammarParser

from ..atomic_files import write_atomically

logger = logging.getLogger(__name__)


def numpy_multiarray():
    """numpy's multiarray module: ``numpy._core.multiarray`` on numpy 2 (numpy 1.26 has it
    too, as an alias), ``numpy.core.multiarray`` on older numpy 1. numpy 2 keeps ``numpy.core``
    only as a deprecated alias that warns on every read, so it is the fallback, not the first
    try; a numpy with neither is an error, not an allow-list silently without numpy."""
    try:
        return importlib.import_module("numpy._core.multiarray")
    except ImportError:
        return importlib.import_module("numpy.core.multiarray")


# a pickle names these under the module of the numpy that wrote it
NUMPY_MULTIARRAY_MODULES = ("numpy._core.multiarray", "numpy.core.multiarray")


def fairseq_checkpoint_globals():
    """The classes and functions that checkpoints written by fairseq-train may reference:
    objects, or (object, the name a pickle gives it) where a name differs from the object's."""
    import numpy as np

    allowed = [argparse.Namespace]
    # saved metrics (--eval-bleu, --best-checkpoint-metric) can hold numpy arrays and scalars;
    # a checkpoint written under numpy 1 names numpy.core.multiarray, under numpy 2
    # numpy._core.multiarray: both names load, each as the running numpy's function (what
    # numpy's own aliases do for pickle)
    multiarray = numpy_multiarray()
    for name in ("_reconstruct", "scalar"):
        function = getattr(multiarray, name)
        allowed += [(function, f"{module}.{name}") for module in NUMPY_MULTIARRAY_MODULES]
    allowed += [np.ndarray, np.dtype]
    allowed += [type(np.dtype(name)) for name in ("float64", "float32", "int64", "int32")]
    # a state re-saved after fairseq's own loader (load_checkpoint_to_cpu turns "cfg" into
    # an omegaconf DictConfig) pickles the config containers, their metadata and the types
    # that metadata names; all are plain data, restored by setting attributes
    from omegaconf import DictConfig, ListConfig
    from omegaconf.base import ContainerMetadata, Metadata
    from omegaconf.nodes import AnyNode

    allowed += [DictConfig, ListConfig, ContainerMetadata, Metadata, AnyNode]
    allowed += [typing.Any, collections.defaultdict, dict, list, int]
    # several workers: rank 0 reads the checkpoint and broadcasts it as a pickle whose tensors
    # are these index placeholders, which the other ranks' torch.load must accept
    from fairseq.distributed.utils import _TensorPlaceholder

    allowed.append(_TensorPlaceholder)
    return allowed


torch.serialization.add_safe_globals(fairseq_checkpoint_globals())


def calls_a_resolver(value: str) -> bool:
    """Whether omegaconf would call a resolver (``${name:...}``) to read this string."""
    if "${" not in value:
        return False
    try:
        tree = grammar_parser.parse(value)
    except GrammarParseError:
        return False  # omegaconf cannot read it either: an error, nothing runs
    nodes = [tree]
    while nodes:
        node = nodes.pop()
        if isinstance(node, OmegaConfGrammarParser.InterpolationResolverContext):
            return True
        nodes.extend(node.getChildren() if hasattr(node, "getChildren") else [])
    return False


def resolver_interpolations(options, key=""):
    """(key, value) of every string among the options that calls an omegaconf resolver."""
    if OmegaConf.is_config(options):
        options = OmegaConf.to_container(options, resolve=False)  # reading must not resolve
    if isinstance(options, argparse.Namespace):
        options = vars(options)
    if isinstance(options, dict):
        items = options.items()
    elif isinstance(options, (list, tuple)):
        items = enumerate(options)
    else:
        return [(key, options)] if isinstance(options, str) and calls_a_resolver(options) else []
    found = []
    for name, value in items:
        found += resolver_interpolations(value, f"{key}.{name}" if key else str(name))
    return found


def load_checkpoint_state(f, *args, **kwargs):
    """``torch.load`` for fairseq's checkpoint loader: weights_only=True passed explicitly (so
    TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD cannot switch it off), and options that call an omegaconf
    resolver refused before omegaconf can read them."""
    kwargs["weights_only"] = True
    state = torch.load(f, *args, **kwargs)
    if isinstance(state, dict):
        found = resolver_interpolations({k: state.get(k) for k in ("args", "cfg")})
        if found:
            key, value = found[0]
            raise ValueError(
                f"refusing to load checkpoint {getattr(f, 'name', f)}: its option {key} = "
                f"{value!r} calls an omegaconf resolver, which would run when the option is "
                "read (fairseq's checkpoints only refer to other options, like "
                "${optimization.max_update})"
            )
    return state


class TorchLoadingWeightsOnly(types.ModuleType):
    """torch as fairseq's checkpoint_utils sees it: every attribute is torch's, but ``load``
    is :func:`load_checkpoint_state` (the module's only torch.load calls load checkpoints)."""

    load = staticmethod(load_checkpoint_state)

    def __getattr__(self, name):
        return getattr(torch, name)


def refuse_unsafe_checkpoints(load):
    """Wraps fairseq's checkpoint loader so that a refused pickle is reported with its file."""

    @functools.wraps(load)
    def load_checkpoint_to_cpu(path, *args, **kwargs):
        try:
            state = load(path, *args, **kwargs)
        except pickle.UnpicklingError as error:
            refused = [line.strip() for line in str(error).splitlines() if "GLOBAL" in line]
            if not refused:  # a damaged file, say: torch's own message fits
                raise
            # torch's message suggests weights_only=False, which would run whatever the
            # pickle asks for: say what was refused and why instead
            raise pickle.UnpicklingError(
                f"refusing to load checkpoint {path}: its pickle references a global that "
                "fairseq checkpoints do not contain, and loading it could run arbitrary code "
                f"({'; '.join(refused)}). The allow-list is in "
                "fairseq_vae/shims/checkpoint_safety.py."
            ) from None
        if isinstance(state.get("model"), collections.OrderedDict):
            # the model's upgrade_state_dict_named sees only this dict (torch keeps its own
            # _metadata on it the same way): its errors can then name the file
            state["model"].checkpoint_file = path
        return state

    return load_checkpoint_to_cpu


def atomic_copy(copy):
    """Wraps PathManager.copy: a local target is written to a temporary file in its folder,
    flushed to disk, then renamed over the target, so the target is always a whole file."""

    @functools.wraps(copy)
    def copy_atomically(src_path: str, dst_path: str, overwrite: bool = False) -> bool:
        if PathManager.path_requires_pathmanager(dst_path):
            return copy(src_path, dst_path, overwrite=overwrite)  # remote: no rename there
        if not overwrite and os.path.exists(dst_path):
            # iopath's answer (fairseq's PathManager with iopath installed): no copy, False
            logger.error(f"Destination file {dst_path} already exists.")
            return False
        with open(src_path, "rb") as src:
            write_atomically(dst_path, lambda tmp: shutil.copyfileobj(src, tmp), suffix=".tmp")
        return True

    return copy_atomically


def report_checkpoint_mismatch(load_checkpoint):
    """Wraps Trainer.load_checkpoint so that a checkpoint that does not fit the model (another
    --latent-dim, other dimensions: fairseq_vae.models.checkpoint_compat) fails with our message
    naming the parameters as the traceback's last line."""

    @functools.wraps(load_checkpoint)
    def load_checkpoint_reporting_mismatch(self, *args, **kwargs):
        # at call time: fairseq_vae/__init__ imports this module before the models package
        from ..models.checkpoint_compat import CheckpointMismatchError

        try:
            return load_checkpoint(self, *args, **kwargs)
        except Exception as error:
            # fairseq's `except Exception:` around the model's load raises a generic "please
            # ensure that the architectures match" instead, with ours only as its context
            ours = error.__cause__ or error.__context__
            if type(error) is Exception and isinstance(ours, CheckpointMismatchError):
                raise ours from None
            raise

    return load_checkpoint_reporting_mismatch


checkpoint_utils.torch = TorchLoadingWeightsOnly("torch")
if not hasattr(checkpoint_utils.load_checkpoint_to_cpu, "__wrapped__"):  # import once only
    checkpoint_utils.load_checkpoint_to_cpu = refuse_unsafe_checkpoints(
        checkpoint_utils.load_checkpoint_to_cpu
    )
if not hasattr(PathManager.copy, "__wrapped__"):
    PathManager.copy = staticmethod(atomic_copy(PathManager.copy))
if not hasattr(Trainer.load_checkpoint, "__wrapped__"):
    Trainer.load_checkpoint = report_checkpoint_mismatch(Trainer.load_checkpoint)
