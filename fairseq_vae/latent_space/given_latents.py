"""The z that fairseq-generate and fairseq-interactive decode when it is not the encoder's own
choice (the text_vae task's inference step passes it to the encoder, which then decodes it):

* ``PriorDraws`` (--latent-source prior --prior-file F): draws from a fitted prior (for
  bart_cvae, the draws of the standardised latent, by source and sample as --latent-samples
  draws them: the task's ``several_latents_step``);
* ``SteeredMeans`` (--direction-file F --direction-to VALUE): each source sentence's posterior
  mean moved to the factor's value VALUE along saved steering directions
  (fairseq_vae.latent_space.steering), by --direction-strength or, with --direction-confidence, the
  classifier-guided move.

Each loads and checks its file against the model at the first batch (the task is set up before
fairseq loads the model).
"""

import logging
from typing import Optional, Sequence

import torch

from fairseq_vae.latent_space.prior_file import load_prior
from fairseq_vae.latent_space.steering import load_directions, move_latents

logger = logging.getLogger(__name__)


def single_model(models, option: str, path: str):
    if len(models) != 1:
        raise ValueError(
            f"{option} {path} was fitted to one model: generate with one --path, not an "
            f"ensemble of {len(models)}"
        )
    return models[0]


class PriorDraws:
    """z for each sentence of a batch from a fitted prior (B x latent).

    Sentence i decodes row i of the draws ``prior.sample(N, torch.Generator().manual_seed(
    seed))``, N the --prior-samples or the split's sentences: z depends on the seed and the
    sentence alone, not on the batching, and is the hub's ``sample(N, seed, prior)`` draw.
    fairseq-interactive passes no sentence ids: each batch takes the next rows. More rows are
    drawn from the same generator as needed.
    """

    def __init__(self, path: str, seed: int):
        self.path, self.seed = path, seed
        self.prior = self.draws = self.generator = None
        self.rows_used = 0

    def fitted(self, models):
        """The prior, read and checked against the model at the first call."""
        if self.prior is None:
            model = single_model(models, "--prior-file", self.path)
            self.prior = load_prior(self.path, expected_model=model)
            self.generator = torch.Generator().manual_seed(int(self.seed))
            self.draws = torch.empty(0, self.prior.latent_dim)
            what = "(z - mu_p(c)) / sigma_p(c)" if getattr(model.encoder, "conditional", 0) else "z"
            logger.info(f"sampling {what} from the {self.prior.kind} prior {self.path}")
        return self.prior

    def latents(self, models, sample, known_counts: Sequence[int]) -> torch.Tensor:
        """``known_counts``: the sentence counts known so far (--prior-samples, the loaded
        splits): the first draw covers the largest, so row i never depends on the batching."""
        self.fitted(models)
        if "id" in sample:
            rows = sample["id"].cpu()
        else:
            bsz = sample["net_input"]["src_tokens"].size(0)
            rows = torch.arange(self.rows_used, self.rows_used + bsz)
        self.rows_used = max(self.rows_used, int(rows.max()) + 1)
        if self.rows_used > len(self.draws):
            more = max(self.rows_used, *known_counts) - len(self.draws)
            drawn = self.prior.sample(more, generator=self.generator).float()
            self.draws = torch.cat([self.draws, drawn])
        return self.draws[rows].to(sample["net_input"]["src_tokens"].device)


class SteeredMeans:
    """Each source sentence's posterior mean moved to ``to`` (B x latent)."""

    def __init__(
        self,
        path: str,
        to: Optional[str],
        strength: float,
        method: str,
        confidence: Optional[float],
    ):
        if not to:
            raise ValueError(
                f"--direction-file {path}: say which value to move to (--direction-to)"
            )
        self.path, self.to, self.strength = path, to, strength
        self.method, self.confidence = method, confidence
        # read and checked at start-up, before fairseq-interactive's first prompt: a missing
        # file or a value the factor never takes (--direction-to is case-sensitive) is refused
        # now; whether they were fitted to the model is checked when the model is known
        self.directions = load_directions(path)
        try:
            self.directions.index(to)
        except ValueError as e:
            raise ValueError(f"--direction-to {to!r} ({path}): {e}") from None
        self.model_checked = False

    @torch.no_grad()
    def latents(self, models, sample) -> torch.Tensor:
        model = single_model(models, "--direction-file", self.path)
        if not self.model_checked:
            self.directions = load_directions(self.path, model)
            self.model_checked = True
            how = (
                f"until the classifier is {self.confidence} sure"
                if self.confidence is not None
                else f"{self.method} direction x {self.strength}"
            )
            logger.info(f"moving z to {self.directions.factor}={self.to} ({how}), {self.path}")
        net = sample["net_input"]
        mu, _ = model.encoder.posterior(net["src_tokens"], net["src_lengths"])
        return move_latents(
            mu, self.directions, self.to, self.strength, self.method, self.confidence
        )
