"""What importing the plugin replaces in fairseq, and how narrowly: the checkpoint loader's
torch.load, PathManager.copy, parse_args_and_arch, and torch's allow-list (numpy 1 and 2)."""

import argparse
import collections
import fractions
import io
import os
import pickle
import stat
import sys
import types
import warnings

import numpy as np
import pytest
import torch
from conftest import USER_DIR
from fairseq import checkpoint_utils, options
from fairseq.file_io import PathManager

from fairseq_vae.shims import checkpoint_safety, full_help

# --- PathManager.copy -----------------------------------------------------------------------


def test_copy_without_overwrite_leaves_an_existing_target_untouched(tmp_path):
    src, dst = tmp_path / "checkpoint1.pt", tmp_path / "checkpoint_last.pt"
    src.write_bytes(b"new")
    dst.write_bytes(b"old")
    # iopath's answer, which fairseq's PathManager gives with iopath installed: False, no copy
    assert PathManager.copy(str(src), str(dst), overwrite=False) is False
    assert dst.read_bytes() == b"old"
    assert sorted(os.listdir(tmp_path)) == ["checkpoint1.pt", "checkpoint_last.pt"]
    assert PathManager.copy(str(src), str(dst), overwrite=True) is True
    assert dst.read_bytes() == b"new"
    fresh = tmp_path / "checkpoint_best.pt"
    assert PathManager.copy(str(src), str(fresh), overwrite=False) is True
    assert fresh.read_bytes() == b"new"


def test_copy_flushes_the_file_to_disk_before_the_rename_and_the_folder_after(
    tmp_path, monkeypatch
):
    src, dst = tmp_path / "checkpoint1.pt", tmp_path / "checkpoint_last.pt"
    src.write_bytes(b"weights" * 1000)
    dst.write_bytes(b"old")
    events = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd):
        info = os.fstat(fd)
        kind = "folder" if stat.S_ISDIR(info.st_mode) else "file"
        events.append(("fsync", kind, info.st_ino, info.st_size))
        real_fsync(fd)

    def replace(a, b):
        events.append(("replace", os.stat(a).st_ino, str(b)))
        real_replace(a, b)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", replace)
    assert PathManager.copy(str(src), str(dst), overwrite=True)
    assert dst.read_bytes() == src.read_bytes()
    kinds = [e[0] if e[0] == "replace" else e[:2] for e in events]
    assert kinds == [("fsync", "file"), "replace", ("fsync", "folder")], events
    # the file flushed is the whole temporary file that then became the target
    assert events[0][2] == events[1][1] == os.stat(dst).st_ino
    assert events[0][3] == len(b"weights" * 1000) and events[1][2] == str(dst)
    assert events[2][2] == os.stat(tmp_path).st_ino
    assert sorted(os.listdir(tmp_path)) == ["checkpoint1.pt", "checkpoint_last.pt"]


def test_copy_leaves_remote_targets_to_fairseq(tmp_path, monkeypatch):
    calls = []

    def fairseq_copy(src_path, dst_path, overwrite=False):
        calls.append((src_path, dst_path, overwrite))
        return True

    monkeypatch.setattr(
        PathManager, "path_requires_pathmanager", staticmethod(lambda p: "://" in p)
    )
    copy = checkpoint_safety.atomic_copy(fairseq_copy)
    assert copy("local/a.pt", "s3://bucket/b.pt", overwrite=True)
    assert calls == [("local/a.pt", "s3://bucket/b.pt", True)]
    (tmp_path / "a.pt").write_bytes(b"x")
    assert copy(str(tmp_path / "a.pt"), str(tmp_path / "b.pt"))  # local: ours, not fairseq's
    assert len(calls) == 1 and (tmp_path / "b.pt").read_bytes() == b"x"


def test_a_failed_copy_leaves_the_target_and_no_temporary_file(tmp_path, monkeypatch):
    src, dst = tmp_path / "checkpoint1.pt", tmp_path / "checkpoint_last.pt"
    src.write_bytes(b"new")
    dst.write_bytes(b"old")

    def disk_full(fd):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", disk_full)
    with pytest.raises(OSError, match="No space left"):
        PathManager.copy(str(src), str(dst), overwrite=True)
    assert dst.read_bytes() == b"old"
    assert sorted(os.listdir(tmp_path)) == ["checkpoint1.pt", "checkpoint_last.pt"]


# --- the allow-list on numpy 1 and numpy 2 ---------------------------------------------------


def allowed_names(entries):
    """{the name a pickle uses: the object it loads as}, as torch reads its allow-list."""
    names = {}
    for entry in entries:
        obj, name = entry if isinstance(entry, tuple) else (entry, None)
        names[name or f"{obj.__module__}.{obj.__qualname__}"] = obj
    return names


def test_allow_list_on_a_numpy_1_layout_names_numpy_core(monkeypatch):
    # numpy < 1.26: no numpy._core; the pickles it writes name numpy.core.multiarray
    def _reconstruct(*args):
        pass

    def scalar(*args):
        pass

    multiarray = types.ModuleType("numpy.core.multiarray")
    for function in (_reconstruct, scalar):
        function.__module__ = "numpy.core.multiarray"
        setattr(multiarray, function.__name__, function)
    monkeypatch.setitem(sys.modules, "numpy._core", None)  # "import numpy._core" fails
    monkeypatch.setitem(sys.modules, "numpy._core.multiarray", None)
    monkeypatch.setitem(sys.modules, "numpy.core.multiarray", multiarray)
    names = allowed_names(checkpoint_safety.fairseq_checkpoint_globals())
    assert names["numpy.core.multiarray._reconstruct"] is _reconstruct
    assert names["numpy.core.multiarray.scalar"] is scalar
    # a checkpoint written under numpy 2 loads there too, as numpy 1.26's alias would
    assert names["numpy._core.multiarray._reconstruct"] is _reconstruct
    assert names["numpy.ndarray"] is np.ndarray and names["argparse.Namespace"]


def test_allow_list_on_numpy_2_does_not_touch_the_deprecated_numpy_core():
    if not hasattr(np, "_core"):
        pytest.skip("numpy 1")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # numpy 2 warns on every read of numpy.core
        names = allowed_names(checkpoint_safety.fairseq_checkpoint_globals())
    from numpy._core import multiarray

    assert names["numpy._core.multiarray._reconstruct"] is multiarray._reconstruct
    assert names["numpy.core.multiarray._reconstruct"] is multiarray._reconstruct


def numpy_1_checkpoint(path):
    """A checkpoint whose pickle names numpy.core.multiarray, as numpy 1 writes it."""
    state = {
        "args": argparse.Namespace(arch="bart_vae_small"),
        "model": collections.OrderedDict(w=torch.arange(3.0)),
        "extra_state": {"best": np.array([1.5, 2.5]), "score": np.float64(0.25)},
    }
    buffer = io.BytesIO()
    torch.save(state, buffer, _use_new_zipfile_serialization=False)  # the pickle in clear
    data = buffer.getvalue()
    assert b"numpy._core.multiarray" in data or b"numpy.core.multiarray" in data
    path.write_bytes(data.replace(b"numpy._core.multiarray", b"numpy.core.multiarray"))


def test_a_checkpoint_written_under_numpy_1_loads(tmp_path):
    path = tmp_path / "numpy1.pt"
    numpy_1_checkpoint(path)
    with open(path, "rb") as f:  # what fairseq's load_checkpoint_to_cpu calls
        state = checkpoint_utils.torch.load(f, map_location="cpu")
    np.testing.assert_array_equal(state["extra_state"]["best"], [1.5, 2.5])
    assert state["extra_state"]["score"] == 0.25
    assert torch.equal(state["model"]["w"], torch.arange(3.0))


# --- the loader's torch.load, and torch.load everywhere else ---------------------------------


def test_only_the_checkpoint_loader_gets_the_weights_only_torch_load(tmp_path, monkeypatch):
    # a pickle of a global on no allow-list: torch's own rules decide, outside fairseq's loader
    path = tmp_path / "fraction.pt"
    torch.save({"x": fractions.Fraction(1, 3)}, path)
    assert torch.load is torch.serialization.load  # the plugin is imported: torch's own
    assert torch.load(path, weights_only=False)["x"] == fractions.Fraction(1, 3)
    with pytest.raises(pickle.UnpicklingError, match="fractions.Fraction"):
        torch.load(path, weights_only=True)
    # the loader passes weights_only=True itself, so torch's switch cannot turn it off
    monkeypatch.setenv("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "1")
    with pytest.raises(pickle.UnpicklingError, match="fractions.Fraction"):
        with open(path, "rb") as f:
            checkpoint_utils.torch.load(f, map_location="cpu")
    assert torch.load(path)["x"] == fractions.Fraction(1, 3)  # torch's default, switched off
    # every other torch attribute fairseq's checkpoint_utils reads is torch's
    for name in ("save", "device", "serialization", "distributed", "HalfTensor"):
        assert getattr(checkpoint_utils.torch, name) is getattr(torch, name)


# --- parse_args_and_arch -------------------------------------------------------------------


def train_argv(data):
    return [data, "--user-dir", USER_DIR, "--task", "text_vae", "--criterion", "elbo"] + [
        "--arch",
        "bart_vae_small",
        "--latent-dim",
        "12",
        "--max-update",
        "5",
    ]


def test_parse_without_help_returns_exactly_fairseqs_result(dict_dir):
    fairseq_parse = full_help._parse_args_and_arch  # fairseq's, as the plugin found it
    assert options.parse_args_and_arch is full_help.parse_args_and_arch
    argv = train_argv(dict_dir)
    ours = options.parse_args_and_arch(options.get_training_parser(), argv)
    theirs = fairseq_parse(options.get_training_parser(), argv)
    assert vars(ours) == vars(theirs) and ours.latent_dim == 12
    # a -h after "--" is no option for argparse, nor for the wrapper: fairseq's extras
    argv += ["--", "-h"]
    ours, extra = options.parse_args_and_arch(options.get_training_parser(), argv, True)
    theirs, extra_theirs = fairseq_parse(options.get_training_parser(), argv, True)
    assert vars(ours) == vars(theirs) and extra == extra_theirs == ["--", "-h"]
