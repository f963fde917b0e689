"""Load fairseq checkpoints with torch's ``weights_only=True`` safety on; write them atomically.

torch >= 2.6 unpickles checkpoints with ``weights_only=True`` by default, which refuses any
global not on an allow-list; fairseq checkpoints store their options as an
``argparse.Namespace``, so without this they cannot be loaded at all. We add exactly the
globals fairseq's own checkpoints contain, never switch the safety off, and so a checkpoint
whose pickle names anything else (code to run on load, say) is still refused, with an error
that names the file.

fairseq writes a checkpoint once (to a temporary file, then renamed: atomic) and copies it to
its other names, checkpoint_last.pt among them, with a plain copy that truncates the target
first: a process killed during that copy leaves no readable checkpoint_last.pt to resume from.
Local copies here go through a temporary file and an atomic rename instead.
"""

import argparse
import collections
import functools
import os
import pickle
import shutil
import typing

import torch
from fairseq import checkpoint_utils
from fairseq.file_io import PathManager


def fairseq_checkpoint_globals():
    """The classes and functions that checkpoints written by fairseq-train may reference."""
    allowed = [argparse.Namespace]
    try:  # saved metrics (--eval-bleu, --best-checkpoint-metric) can hold numpy scalars
        import numpy as np
        from numpy._core import multiarray  # numpy 2 pickles these under numpy._core

        allowed += [np.ndarray, np.dtype, multiarray._reconstruct, multiarray.scalar]
        allowed += [type(np.dtype(name)) for name in ("float64", "float32", "int64", "int32")]
    except ImportError:
        pass
    # a state re-saved after fairseq's own loader (load_checkpoint_to_cpu turns "cfg" into
    # an omegaconf DictConfig) pickles the config containers, their metadata and the types
    # that metadata names; all are plain data, restored by setting attributes
    from omegaconf import DictConfig, ListConfig
    from omegaconf.base import ContainerMetadata, Metadata
    from omegaconf.nodes import AnyNode

    allowed += [DictConfig, ListConfig, ContainerMetadata, Metadata, AnyNode]
    allowed += [typing.Any, collections.defaultdict, dict, list, int]
    return allowed


torch.serialization.add_safe_globals(fairseq_checkpoint_globals())


def refuse_unsafe_checkpoints(load):
    """Wraps fairseq's checkpoint loader so that a refused pickle is reported with its file."""

    @functools.wraps(load)
    def load_checkpoint_to_cpu(path, *args, **kwargs):
        try:
            return load(path, *args, **kwargs)
        except pickle.UnpicklingError as error:
            refused = [line.strip() for line in str(error).splitlines() if "GLOBAL" in line]
            if not refused:  # a damaged file, say: torch's own message fits
                raise
            # torch's message suggests weights_only=False, which would run whatever the
            # pickle asks for: say what was refused and why instead
            raise pickle.UnpicklingError(
                f"refusing to load checkpoint {path}: its pickle references a global that "
                "fairseq checkpoints do not contain, and loading it could run arbitrary code "
                f"({'; '.join(refused)}). The allow-list is in fairseq_vae/checkpoint_safety.py."
            ) from None

    return load_checkpoint_to_cpu


def atomic_copy(copy):
    """Wraps PathManager.copy: local targets are written to a temporary file, then renamed."""

    @functools.wraps(copy)
    def copy_atomically(src_path: str, dst_path: str, overwrite: bool = False) -> bool:
        if PathManager.path_requires_pathmanager(dst_path):
            return copy(src_path, dst_path, overwrite=overwrite)  # remote: no rename there
        tmp_path = dst_path + ".tmp"  # same folder, so the rename cannot cross filesystems
        shutil.copyfile(src_path, tmp_path)
        os.replace(tmp_path, dst_path)
        return True

    return copy_atomically


if not hasattr(checkpoint_utils.load_checkpoint_to_cpu, "__wrapped__"):  # import once only
    checkpoint_utils.load_checkpoint_to_cpu = refuse_unsafe_checkpoints(
        checkpoint_utils.load_checkpoint_to_cpu
    )
if not hasattr(PathManager.copy, "__wrapped__"):
    PathManager.copy = staticmethod(atomic_copy(PathManager.copy))
