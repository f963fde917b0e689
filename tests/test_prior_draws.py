"""The z a seed promises: every prior draws its randomness from a CPU generator, so
fairseq-vae-eval's prior samples, the hub's ``sample`` and fairseq-generate decode the same z
for one ``--seed`` wherever the prior lives (a CUDA generator's stream is another one).

No GPU here: the checks are that the draws are the CPU stream's (against torch.randn and
torch.multinomial called by hand), and that neither draw_latents nor the hub asks the prior
where it lives before seeding."""

import pytest
import torch

from fairseq_vae.latent_space.prior import (
    FlowPrior,
    GaussianMixturePrior,
    StandardNormalPrior,
    cpu_normal,
)
from fairseq_vae.metrics import prior_samples


def mixture():
    weights = torch.tensor([0.6, 0.4], dtype=torch.float64)
    means = torch.tensor([[1.0, -1.0], [-2.0, 3.0]], dtype=torch.float64)
    scale_tril = torch.tensor([[[1.0, 0.0], [0.5, 2.0]], [[0.3, 0.0], [0.0, 0.7]]])
    return GaussianMixturePrior(weights, means, scale_tril.double())


def test_the_standard_prior_draws_the_cpu_stream_of_the_seed():
    z = StandardNormalPrior(3).sample(5, generator=torch.Generator().manual_seed(7))
    expected = torch.randn(5, 3, generator=torch.Generator().manual_seed(7))
    torch.testing.assert_close(z, expected, rtol=0, atol=0)


def test_the_mixture_draws_components_then_noise_from_the_cpu_stream():
    prior = mixture()
    z = prior.sample(6, generator=torch.Generator().manual_seed(3))
    g = torch.Generator().manual_seed(3)
    component = torch.multinomial(prior.weights, 6, replacement=True, generator=g)
    eps = torch.randn(6, 2, generator=g, dtype=torch.float64)
    by_hand = prior.means[component] + (prior.scale_tril[component] @ eps[:, :, None])[..., 0]
    torch.testing.assert_close(z, by_hand.float(), rtol=0, atol=0)


def test_a_generator_on_another_device_is_refused_with_the_reason():
    class Elsewhere:  # what a CUDA generator looks like to cpu_normal
        device = torch.device("cuda")

    with pytest.raises(ValueError, match="priors draw on the CPU"):
        cpu_normal(2, 2, Elsewhere())


@pytest.mark.parametrize("make", [lambda: StandardNormalPrior(2), mixture, lambda: FlowPrior(2)])
def test_draw_latents_and_the_hub_seed_a_cpu_generator_whatever_the_prior_says(make, monkeypatch):
    """Both callers are given a prior that reports living on a GPU (its tensors stay here): the
    old code built torch.Generator(device=prior.device()), a CUDA generator, which has another
    stream (and fails on a machine without CUDA)."""
    prior = make()
    expected = prior.sample(4, generator=torch.Generator().manual_seed(11))
    monkeypatch.setattr(prior, "device", lambda: torch.device("cuda"))
    original = prior.sample.__func__
    seen = []

    def sample(self, n, generator=None):
        seen.append(generator.device.type)
        monkeypatch.setattr(prior, "device", lambda: torch.device("cpu"))  # the tensors' place
        return original(self, n, generator)

    monkeypatch.setattr(prior, "sample", sample.__get__(prior))
    torch.testing.assert_close(prior_samples.draw_latents(prior, 4, 11), expected)
    assert seen == ["cpu"]


def test_the_hub_samples_the_same_z_as_draw_latents(monkeypatch):
    """hub.sample(n, seed, prior) decodes prior_samples.draw_latents(prior, n, seed)."""
    from fairseq_vae.models.hub_interface import BARTVAEHubInterface

    prior = mixture()
    decoded = []

    class Hub(BARTVAEHubInterface):
        def __init__(self):  # no model: only sample's own steps run
            pass

        latent_dim = 2

        def check_prior(self, prior):
            pass

        def decode(self, z, seed=None, **options):
            decoded.append(z)
            return ["x"] * len(z)

    monkeypatch.setattr(prior, "device", lambda: torch.device("cuda"))
    monkeypatch.setattr(
        prior,
        "sample",
        lambda n, generator=None: (
            GaussianMixturePrior.sample(prior, n, generator)
            if generator.device.type == "cpu"
            else pytest.fail("the hub seeded a generator on the prior's device")
        ),
    )
    Hub().sample(5, seed=2, prior=prior)
    monkeypatch.undo()
    torch.testing.assert_close(decoded[0], prior_samples.draw_latents(prior, 5, 2))
