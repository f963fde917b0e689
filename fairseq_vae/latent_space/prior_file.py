"""The prior file: a fitted prior saved as tensors and plain values, and the model it fits.

``save_prior`` writes the prior's kind, its ``config()`` and ``state_dict`` and a ``meta`` dict;
the file holds tensors, str, int, float, list and dict only, so ``torch.load(weights_only=True)``
reads it and no scikit-learn or zuko object is pickled. ``prior_meta`` names the checkpoint,
a SHA-256 of the model's weights (``model_sha256``) and of its dictionary, and the latent size:
``load_prior`` refuses a prior of another latent size or another model with both named.

A file is read as untrusted: anything but plain values (torch's allow-list also admits the
omegaconf containers of fairseq checkpoints, whose ``${...}`` would run a resolver when read)
or a string with ``${`` is refused, a missing key or a value of the wrong type is a ValueError
naming the file, and the model and sizes are checked before a prior is built from the sizes
the file gives, which must be those of its tensors (``config_size_problem``).
"""

import hashlib
import json
import logging
import os
from typing import Optional, Union

import torch
from torch import nn

from fairseq_vae.atomic_files import write_atomically
from fairseq_vae.latent_space.prior import Prior, build_prior

logger = logging.getLogger(__name__)

PRIOR_FORMAT = "fairseq_vae.prior"  # a file format's name, not a module path
PRIOR_FORMAT_VERSION = 1


UNHASHED_KEYS = (".version", "_float_tensor")  # fairseq's bookkeeping buffers, not weights


def model_sha256(model: nn.Module) -> str:
    """The SHA-256 of a model's state dict (names, shapes, values), hex.

    Floating tensors are hashed as fp16, so a model and its ``.half()`` copy (fairseq's
    --fp16) agree; a bf16 copy does not.
    """
    digest = hashlib.sha256()
    for key, tensor in sorted(model.state_dict().items()):
        if key.endswith(UNHASHED_KEYS):
            continue
        tensor = tensor.detach().cpu()
        if tensor.is_floating_point():
            tensor = tensor.to(torch.float16)
        digest.update(f"{key}:{tuple(tensor.shape)}:{tensor.dtype};".encode())
        digest.update(tensor.contiguous().numpy().tobytes())
    return digest.hexdigest()


def dictionary_checksum(model: nn.Module) -> Optional[str]:
    """The hex SHA-256 of the model's dictionary (its ``dictionary_sha256`` buffer), if any."""
    buffer = getattr(model, "dictionary_sha256", None)
    return None if buffer is None else bytes(buffer.cpu().tolist()).hex()


def prior_meta(model: nn.Module, checkpoint: str, **extra) -> dict:
    """What a prior file says about the model it was fitted to, plus ``extra`` (JSON-able)."""
    return {
        "checkpoint": os.path.abspath(checkpoint),
        "model_sha256": model_sha256(model),
        "dictionary_sha256": dictionary_checksum(model),
        "dictionary": getattr(model, "dictionary_file", None),
        "latent_dim": int(model.encoder.latent_dim),
        **extra,
    }


def json_plain(value, what: str):
    """``value`` as JSON would give it back (tuples become lists): a weights_only file may hold
    no object of another class."""
    try:
        return json.loads(json.dumps(value, allow_nan=True))
    except (TypeError, ValueError) as error:
        raise ValueError(f"the prior's {what} must be JSON-able (plain values): {error}") from None


def save_prior(path: str, prior: Prior, meta: Optional[dict] = None):
    """Writes ``prior`` (its kind, config and tensors) and ``meta`` to ``path``, atomically.

    The file holds tensors, str, int, float, list and dict only: ``torch.load(path,
    weights_only=True)`` reads it. A flow's meta also records the zuko version that built it
    (``zuko_version``; ``load_prior`` refuses it under another).
    """
    meta = dict(meta or {})
    if prior.kind == "flow":
        meta["zuko_version"] = installed_zuko_version()
    payload = {
        "format": PRIOR_FORMAT,
        "version": PRIOR_FORMAT_VERSION,
        "kind": prior.kind,
        "config": json_plain(prior.config(), "config"),
        "state": {key: t.detach().cpu().clone() for key, t in prior.state_dict().items()},
        "meta": json_plain(meta, "meta"),
    }
    write_payload(path, payload, "the prior")


def installed_zuko_version() -> str:
    import zuko

    return zuko.__version__


def zuko_version_problem(path: str, meta: dict) -> Optional[str]:
    """Why a flow saved at ``path`` cannot be rebuilt by the installed zuko, or None.

    Refused rather than warned about: a flow's state dict is zuko's own layout, and another
    zuko can load the same names into transforms that compute another density (feature orders,
    spline parametrisation), which would silently change every number reported with the prior.
    A file that records no version (written before it was recorded) is let through with a
    warning."""
    recorded, installed = meta.get("zuko_version"), installed_zuko_version()
    if recorded is None:
        logger.warning(
            f"flow prior {path} does not record the zuko version that built it: it cannot be "
            f"checked against the installed zuko {installed}"
        )
        return None
    if recorded != installed:
        return (
            f"flow prior {path} was built with zuko {recorded} but zuko {installed} is "
            "installed: fit it again (fairseq-vae-fit-prior --prior-model flow) or install "
            f"zuko=={recorded}"
        )
    return None


def write_payload(path: str, payload: dict, what: str):
    """torch.save of a dict of tensors and plain values, atomically (write_atomically, as
    checkpoint copies are written): a failed save leaves ``path`` as it was."""
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        raise ValueError(f"cannot write {what} {path}: folder {folder} does not exist")
    write_atomically(path, lambda f: torch.save(payload, f))


PLAIN_VALUES = (str, int, float, bool, type(None), torch.Tensor)


def payload_problem(value, key: str = "") -> Optional[str]:
    """What in ``value`` is more than the plain values ``write_payload`` writes, or None: an
    object of another class (an omegaconf DictConfig, which the checkpoint allow-list lets
    torch load and which evaluates ``${...}`` interpolations, resolvers included, when read),
    or a string holding an interpolation ``${``."""
    where = key or "the top level"
    if isinstance(value, dict):
        for k, v in value.items():
            if not isinstance(k, str):
                return f"a key {k!r} that is not a string at {where}"
            found = payload_problem(v, f"{key}.{k}" if key else k)
            if found:
                return found
        return None
    if isinstance(value, list):
        for i, v in enumerate(value):
            found = payload_problem(v, f"{key}[{i}]")
            if found:
                return found
        return None
    if isinstance(value, str):
        return f"the interpolation {value!r} at {where}" if "${" in value else None
    if isinstance(value, PLAIN_VALUES):
        return None
    return f"a {type(value).__module__}.{type(value).__name__} at {where}"


def payload_fields(payload: dict, path: str, what: str, fields: dict) -> list:
    """The payload's values of ``fields`` ({key: type}), in order; a missing key or a value of
    another type is a ValueError naming the file."""
    values = []
    for key, kind in fields.items():
        if key not in payload:
            raise ValueError(f"{what} file {path} is malformed: it has no {key!r}")
        if not isinstance(payload[key], kind):
            raise ValueError(
                f"{what} file {path} is malformed: its {key!r} is a "
                f"{type(payload[key]).__name__}, not a {kind.__name__}"
            )
        values.append(payload[key])
    return values


def read_payload(path: str, file_format: str, version: int, what: str, made_by: str) -> dict:
    """The dict ``write_payload`` wrote, read with weights_only on; a missing or unreadable
    file, another format or another version is a ValueError naming the file."""
    if not os.path.isfile(path):
        raise ValueError(f"{what} file {path} does not exist ({made_by} writes one)")
    not_ours = f"{path} is not a {what} file fairseq_vae wrote ({made_by} writes one)"
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except OSError as error:
        raise ValueError(f"cannot read {what} file {path}: {error}") from None
    except Exception:
        # a damaged file, or a pickle naming a global off the allow-list: torch's message
        # advises weights_only=False, which would run what the pickle asks for, and reporting
        # the file to torch; neither helps with a file this tool did not write
        raise ValueError(not_ours) from None
    if not isinstance(payload, dict) or payload.get("format") != file_format:
        raise ValueError(not_ours)
    problem = payload_problem(payload)
    if problem:
        raise ValueError(
            f"{what} file {path} holds {problem}, not only the plain values fairseq_vae "
            "writes: refusing to read it"
        )
    if payload.get("version") != version:
        raise ValueError(
            f"{what} file {path} has format version {payload.get('version')}; this fairseq_vae "
            f"reads version {version}: fit it again"
        )
    return payload


def load_prior(
    path: str,
    expected_latent_dim: Optional[int] = None,
    expected_model: Union[nn.Module, str, None] = None,
    expected_checkpoint: Optional[str] = None,
) -> Prior:
    """The prior saved at ``path`` (on the CPU, in eval mode), its file's meta in ``.meta``.

    Args:
        expected_latent_dim: refuse a prior of another latent size
        expected_model: the bart_vae model (or its hub interface, or its ``model_sha256``) it
            will be used with: refuse a prior fitted to another model; a model also sets the
            expected latent size
        expected_checkpoint: the model's checkpoint file, named in the error
    Raises:
        ValueError naming the file and both sizes, or both checkpoints, on a mismatch
    """
    payload = read_payload(
        path, PRIOR_FORMAT, PRIOR_FORMAT_VERSION, "prior", "fairseq-vae-fit-prior"
    )
    kind, config, state, meta = payload_fields(payload, path, "prior", PRIOR_FIELDS)

    # which model it fits, before anything is built from the sizes the file gives
    if expected_model is not None and not hasattr(expected_model, "encoder"):
        expected_model = getattr(expected_model, "model", expected_model)  # a hub interface
    fitted_to = meta.get("checkpoint", "an unnamed checkpoint")
    if isinstance(expected_model, nn.Module) and expected_latent_dim is None:
        expected_latent_dim = int(expected_model.encoder.latent_dim)
    latent_dim = config.get("latent_dim")
    if expected_latent_dim is not None and latent_dim != int(expected_latent_dim):
        model = expected_checkpoint or "the model"
        raise ValueError(
            f"prior {path} has latent size {latent_dim} (fitted to {fitted_to}) but "
            f"{model} has latent size {expected_latent_dim}: fit a prior to this model "
            "(fairseq-vae-fit-prior)"
        )
    if expected_model is not None:
        check_model(path, meta, expected_model, expected_checkpoint)

    problem = config_size_problem(kind, config, state)
    if problem:
        raise ValueError(f"prior file {path} does not rebuild its prior: {problem}")
    if kind == "flow" and (problem := zuko_version_problem(path, meta)):
        raise ValueError(problem)
    try:
        prior = build_prior(kind, config)
        prior.load_state_dict(state)
    except (KeyError, TypeError, AttributeError, RuntimeError, ValueError) as error:
        raise ValueError(f"prior file {path} does not rebuild its prior: {error}") from None
    prior.meta = meta
    prior.eval()
    return prior


PRIOR_FIELDS = {"kind": str, "config": dict, "state": dict, "meta": dict}


def is_size(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 1


def flow_parameters(
    latent_dim: int, transform: str, transforms: int, hidden_features, bins: int
) -> int:
    """The weights and biases of ``prior.build_flow``'s flow, from its sizes alone: per
    transformation, zuko's MADE maps D through the hidden layers to D x (2 for maf's shift and
    scale, 3 bins - 1 for nsf's spline)."""
    per_dim = 3 * bins - 1 if transform == "nsf" else 2
    sizes = [latent_dim, *hidden_features, latent_dim * per_dim]
    return transforms * sum(a * b + b for a, b in zip(sizes, sizes[1:]))


def config_size_problem(kind: str, config: dict, state: dict) -> Optional[str]:
    """Why ``config`` does not describe the prior whose tensors are ``state``, or None: a prior
    is built from its config's sizes, so they must be those of the tensors the file holds (a
    crafted file must not make the build allocate more than the file itself)."""
    dim = config.get("latent_dim")
    if not is_size(dim):
        return f"its latent_dim {dim!r} is not a positive integer"
    shapes = {}
    if kind == "gmm":
        k = config.get("components")
        if not is_size(k):
            return f"its components {k!r} is not a positive integer"
        shapes = {"weights": (k,), "means": (k, dim), "scale_tril": (k, dim, dim)}
    elif kind == "flow":
        shapes = {"loc": (dim,), "scale": (dim,)}
        keys = ("hidden_features", "transforms", "bins")
        hidden, transforms, bins = (config.get(k) for k in keys)
        if not (isinstance(hidden, list) and all(is_size(h) for h in hidden)):
            return f"its hidden_features {hidden!r} is not a list of positive integers"
        if not (is_size(transforms) and is_size(bins)):
            return f"its transforms {transforms!r} and bins {bins!r} must be positive integers"
        built = flow_parameters(dim, config.get("transform"), transforms, hidden, bins)
        held = sum(t.numel() for t in state.values() if isinstance(t, torch.Tensor))
        if built > 2 * held:  # the state also holds each layer's mask: about twice the weights
            return f"its config makes a flow of {built} weights, the file holds {held} numbers"
    for name, shape in shapes.items():
        tensor = state.get(name)
        if not isinstance(tensor, torch.Tensor) or tuple(tensor.shape) != shape:
            found = tuple(tensor.shape) if isinstance(tensor, torch.Tensor) else tensor
            return f"its state's {name} is {found!r} where its config makes {shape}"
    return None


def check_model(
    path: str,
    meta: dict,
    model: Union[nn.Module, str],
    checkpoint: Optional[str],
    what: str = "prior",
    remedy: str = "a prior fits one model's aggregate posterior. Fit one to this checkpoint: "
    "fairseq-vae-fit-prior DATA --path CKPT",
):
    """Raises a ValueError naming both checkpoints unless ``model`` is the one the ``what`` (a
    prior, or steering directions) in ``path`` was fitted to (by ``model_sha256``)."""
    theirs = meta.get("model_sha256")
    fitted_to = meta.get("checkpoint", "an unnamed checkpoint")
    if not isinstance(theirs, str):
        raise ValueError(f"{what} {path} does not say which model it was fitted to: fit again")
    ours = model if isinstance(model, str) else model_sha256(model)
    if ours == theirs:
        return
    given = checkpoint or "the given model"
    note = ""
    if isinstance(model, nn.Module) and meta.get("dictionary_sha256"):
        same = dictionary_checksum(model) == meta["dictionary_sha256"]
        note = " (the same dictionary)" if same else " (and another dictionary)"
    raise ValueError(
        f"{what} {path} was fitted to {fitted_to} (weights SHA-256 {theirs[:16]}) but "
        f"{given} has other weights (SHA-256 {ours[:16]}){note}: {remedy}"
    )


def default_prior_path(checkpoint: str, kind: str) -> str:
    """<checkpoint's folder>/prior-<kind>.pt"""
    return os.path.join(os.path.dirname(os.path.abspath(checkpoint)), f"prior-{kind}.pt")
