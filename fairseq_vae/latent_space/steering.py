"""Steering with the latent: attribute directions fitted to labelled sentences' posterior means,
z moved along them (attribute transfer, as in Optimus' latent arithmetic), a classifier-guided
move, and analogies.

A factor's ``Directions`` hold, per value of the factor, the mean of its sentences' posterior
means and the weights of a multinomial logistic regression (scikit-learn) fitted on them. A
sentence is moved from the value the classifier reads in its z (``source``) to the target:

* ``method="mean"``: z + s (m_to - m_source), the difference of the two class means;
* ``method="linear"``: z + s u (u . (m_to - m_source)), u the unit normal of the classifier's
  boundary between the two values (w_to - w_source): the same move projected on the direction
  the classifier reads, so strength 1 is comparable across methods;
* ``guided_latents``: the smallest move that makes the classifier give the target value a
  chosen probability: in closed form for a factor of two values (the point on the line
  z + t u where the logit reaches log(c / (1 - c))), by gradient steps on log p(to | z)
  otherwise, stopping as soon as the probability is reached or after ``GUIDED_STEPS`` steps
  (a warning then names the probability reached).

A sentence the classifier already reads as the target value does not move. The directions save
to a file of tensors and plain values (``torch.load(weights_only=True)`` reads it) that names
the model it was fitted to, as a prior file does, so transfer does not refit and a file of
another model is refused.
"""

import logging
import math
from typing import List, Optional, Sequence

import torch
from torch import Tensor, nn

from fairseq_vae.latent_space.prior_file import (
    check_model,
    json_plain,
    payload_fields,
    prior_meta,
    read_payload,
    write_payload,
)

logger = logging.getLogger(__name__)

DIRECTIONS_FORMAT = "fairseq_vae.directions"
DIRECTIONS_FORMAT_VERSION = 1
METHODS = ("mean", "linear")
GUIDED_STEPS = 200


class Directions:
    """One factor's class means and linear classifier in z space (see the module docstring)."""

    def __init__(
        self,
        factor: str,
        values: List[str],
        means: Tensor,
        counts: Tensor,
        weight: Tensor,
        bias: Tensor,
        meta: Optional[dict] = None,
    ):
        self.factor, self.values = factor, list(values)
        self.means = means.double()  # C x D
        self.counts = counts.long()  # C
        self.weight, self.bias = weight.double(), bias.double()  # C x D, C
        self.meta = meta or {}

    @property
    def latent_dim(self) -> int:
        return self.means.size(1)

    def index(self, value: str) -> int:
        if value not in self.values:
            raise ValueError(
                f"factor {self.factor!r} never takes the value {value!r} in the labels the "
                f"directions were fitted to; its values: {self.values}"
            )
        return self.values.index(value)

    def logits(self, z: Tensor) -> Tensor:
        """The classifier's logits, B x C."""
        return z.double() @ self.weight.T + self.bias

    def read(self, z: Tensor) -> List[str]:
        """The value the classifier reads in each z."""
        return [self.values[i] for i in self.logits(z).argmax(-1).tolist()]


def fit_directions(mu: Tensor, labels: Sequence[str], factor: str, seed: int = 1) -> Directions:
    """Class means and a multinomial logistic regression on the posterior means ``mu`` (N x D)
    of sentences labelled ``labels`` (one value each) for ``factor``."""
    from sklearn.linear_model import LogisticRegression

    if len(labels) != mu.size(0):
        raise ValueError(
            f"factor {factor!r}: {len(labels)} labels for {mu.size(0)} sentences; the labels "
            "file needs one row per sentence"
        )
    values = sorted(set(labels))
    if len(values) < 2:
        raise ValueError(
            f"factor {factor!r} takes one value ({values}) in the labels: a direction needs "
            "sentences of at least two values"
        )
    y = torch.tensor([values.index(v) for v in labels])
    x = mu.double()
    counts = torch.bincount(y, minlength=len(values))
    means = torch.stack([x[y == c].mean(0) for c in range(len(values))])
    classifier = LogisticRegression(max_iter=5000, random_state=seed)
    classifier.fit(x.numpy(), y.numpy())
    weight = torch.from_numpy(classifier.coef_).double()
    bias = torch.from_numpy(classifier.intercept_).double()
    if len(values) == 2:  # scikit-learn's one row for the second class: as two logits
        weight, bias = torch.cat([-weight / 2, weight / 2]), torch.cat([-bias / 2, bias / 2])
    return Directions(factor, values, means, counts, weight, bias)


def shift_latents(
    z: Tensor, directions: Directions, to: str, strength: float = 1.0, method: str = "mean"
) -> Tensor:
    """z (B x D) moved from the value the classifier reads in each row to ``to``."""
    if method not in METHODS:
        raise ValueError(f"unknown direction method {method!r}: choose from {list(METHODS)}")
    target = directions.index(to)
    source = directions.logits(z).argmax(-1)  # B
    delta = directions.means[target] - directions.means[source]  # B x D
    if method == "linear":
        normal = directions.weight[target] - directions.weight[source]  # B x D
        norm = normal.norm(dim=-1, keepdim=True)
        unit = torch.where(norm > 0, normal / norm.clamp_min(1e-300), torch.zeros_like(normal))
        delta = unit * (unit * delta).sum(-1, keepdim=True)
    return (z.double() + strength * delta).to(z.dtype)


def guided_latents(z: Tensor, directions: Directions, to: str, confidence: float = 0.9) -> Tensor:
    """Each z moved as little as it takes for the classifier to give ``to`` the probability
    ``confidence`` (rows already there stay)."""
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be between 0 and 1, got {confidence}")
    target = directions.index(to)
    x = z.double()
    if len(directions.values) == 2:
        other = 1 - target
        normal = directions.weight[target] - directions.weight[other]  # D
        margin = x @ normal + (directions.bias[target] - directions.bias[other])  # B
        needed = (math.log(confidence / (1 - confidence)) - margin).clamp_min(0)
        return (x + needed[:, None] * normal / normal.dot(normal)).to(z.dtype)
    # gradient steps on log p(to | z), each of a fixed length, until the probability is reached
    log_target = math.log(confidence)
    step = 0.05 * directions.means.std(0).norm().item()
    with torch.enable_grad():  # also under a caller's no_grad (generation)
        for _ in range(GUIDED_STEPS):
            x = x.detach().requires_grad_(True)
            log_p = torch.log_softmax(directions.logits(x), -1)[:, target]
            todo = log_p < log_target
            if not todo.any():
                break
            (grad,) = torch.autograd.grad(log_p.sum(), x)
            unit = grad / grad.norm(dim=-1, keepdim=True).clamp_min(1e-300)
            x = x + step * unit * todo[:, None]
    x = x.detach()
    reached = torch.softmax(directions.logits(x), -1)[:, target]
    short = reached < confidence
    if short.any():
        logger.warning(
            f"guided move to {directions.factor}={to}: {int(short.sum())} of {len(x)} latents "
            f"stopped after {GUIDED_STEPS} steps at p({to}) {reached.min().item():.3f} (the "
            f"lowest), short of the asked confidence {confidence}"
        )
    return x.to(z.dtype)


def move_latents(
    z: Tensor,
    directions: Directions,
    to: str,
    strength: float = 1.0,
    method: str = "mean",
    confidence: Optional[float] = None,
) -> Tensor:
    """z moved to ``to``: along the directions (``shift_latents``) or, given ``confidence``, by
    the classifier-guided move (``guided_latents``); on z's device."""
    if directions.latent_dim != z.size(-1):
        raise ValueError(
            f"the {directions.factor!r} directions have latent size {directions.latent_dim}, "
            f"z has {z.size(-1)}"
        )
    if confidence is not None:
        moved = guided_latents(z.cpu(), directions, to, confidence)
    else:
        moved = shift_latents(z.cpu(), directions, to, strength, method)
    return moved.to(z.device)


def analogy_latents(z_a: Tensor, z_b: Tensor, z_c: Tensor, strength: float = 1.0) -> Tensor:
    """a : b :: c : d, d's latent z_c + strength * (z_b - z_a) (Optimus' arithmetic at 1)."""
    return z_c + strength * (z_b - z_a)


def save_directions(path: str, directions: Directions, model: nn.Module, checkpoint: str, **extra):
    """Writes the directions and the model they were fitted to (``prior_meta``), atomically."""
    payload = {
        "format": DIRECTIONS_FORMAT,
        "version": DIRECTIONS_FORMAT_VERSION,
        "factor": directions.factor,
        "values": list(directions.values),
        "means": directions.means.clone(),
        "counts": directions.counts.clone(),
        "weight": directions.weight.clone(),
        "bias": directions.bias.clone(),
        "meta": json_plain(prior_meta(model, checkpoint, **extra), "meta"),
    }
    write_payload(path, payload, "the directions")


def load_directions(path: str, model=None, checkpoint: Optional[str] = None) -> Directions:
    """The directions saved at ``path``; given ``model`` (or a hub interface), refused unless
    they were fitted to it, the error naming both checkpoints."""
    payload = read_payload(
        path,
        DIRECTIONS_FORMAT,
        DIRECTIONS_FORMAT_VERSION,
        "directions",
        "scripts/transfer.py --fit",
    )
    fields = payload_fields(payload, path, "directions", DIRECTIONS_FIELDS)
    factor, values, means, counts, weight, bias, meta = fields
    problem = directions_shape_problem(values, means, counts, weight, bias)
    if problem:
        raise ValueError(f"directions file {path} is malformed: {problem}")
    if model is not None:
        model = model if hasattr(model, "encoder") else model.model  # a hub interface
        if int(model.encoder.latent_dim) != means.size(1):
            raise ValueError(
                f"directions {path} have latent size {means.size(1)} (fitted to "
                f"{meta.get('checkpoint')}) but {checkpoint or 'the model'} has "
                f"latent size {model.encoder.latent_dim}"
            )
        check_model(
            path,
            meta,
            model,
            checkpoint,
            what="directions",
            remedy="fit them to this checkpoint: scripts/transfer.py --fit",
        )
    return Directions(*fields)


DIRECTIONS_FIELDS = {
    "factor": str,
    "values": list,
    "means": Tensor,
    "counts": Tensor,
    "weight": Tensor,
    "bias": Tensor,
    "meta": dict,
}


def directions_shape_problem(values, means, counts, weight, bias) -> Optional[str]:
    """Why the tensors are not C values' means, counts and classifier in z (None if they are)."""
    if len(values) < 2 or not all(isinstance(v, str) for v in values):
        return f"its values {values!r} are not two or more strings"
    if means.dim() != 2 or means.size(0) != len(values):
        return f"its means have shape {tuple(means.shape)} for {len(values)} values"
    c, d = means.shape
    for name, tensor, shape in (
        ("counts", counts, (c,)),
        ("weight", weight, (c, d)),
        ("bias", bias, (c,)),
    ):
        if tuple(tensor.shape) != shape:
            return f"its {name} has shape {tuple(tensor.shape)} where its means make {shape}"
    return None
