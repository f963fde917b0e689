"""Priors over the latent z: N(0, I), and densities fitted to the aggregate posterior.

A VAE's KL pays, averaged over the data, I(x; z) + KL(q(z) || p(z)) (Hoffman & Johnson 2016):
the aggregate posterior q(z) = E_x q(z|x) need not be N(0, I), and prior samples then fall
where no training sentence's posterior put mass. A density p'(z) fitted after training to
samples z ~ q(z|x) of the training split (several per sentence, not only the means) gives
another generative model p'(z) p(x|z) with the same decoder; its importance weights use the
same proposal q(z|x) and only swap log p(z) for log p'(z) (``prior_log_density``), and
KL(q(z|x) || p') has no closed form, so it is estimated from the same samples
(``monte_carlo_kl``).

Two fitted priors:

* ``GaussianMixturePrior``: a full-covariance Gaussian mixture fitted by scikit-learn's EM,
  its number of components chosen on the valid split's posterior samples (``fit_gmm``). Its
  log-density and sampling are reimplemented here in torch (float64) from the weights, means
  and Cholesky factors, so a saved prior holds tensors and no scikit-learn object, and it runs
  on the model's device.
* ``FlowPrior``: a normalizing flow (neural spline or masked autoregressive) from zuko, trained
  by maximum likelihood with early stopping on valid (``fit_flow``). zuko because it is
  maintained (releases through 2026), pure torch (no other dependency than numpy), small, and
  gives MAF and NSF with exact ``log_prob`` and ``sample``; a flow is an ``nn.Module`` whose
  ``state_dict`` and a few plain numbers rebuild it, which is what a weights_only file needs.
  The flow sees z standardised by the training samples' mean and spread (NSF's splines act
  on [-5, 5]); the affine map's log-determinant is part of ``log_prob``.

Saving and loading, and which model a prior belongs to: ``fairseq_vae.latent_space.prior_file``.
"""

import copy
import logging
import math
from dataclasses import dataclass, field
from typing import Optional, Sequence, Tuple

import torch
from torch import Tensor, nn

logger = logging.getLogger(__name__)

LOG_2PI = math.log(2.0 * math.pi)

# fit defaults, the command's too (fairseq-vae-fit-prior)
SAMPLES_PER_SENTENCE = 4
GMM_COMPONENTS = (1, 2, 4, 8, 16)
GMM_MAX_ITER = 200
GMM_REG_COVAR = 1e-6  # scikit-learn's default, added to each covariance's diagonal
# EM's cost grows with the points, and a few tens of thousands pin a 16-component,
# full-covariance mixture in 32 dimensions (9k parameters) down: on the shipped corpus's 80,000
# draws a seeded random 40,000 gave a valid log-likelihood 0.07 nats below the fit to all of
# them (-29.52 against -29.45; N(0, I): -43.78) in 44% of the time (docs/design.md)
GMM_MAX_POINTS = 50_000
# rows of z scored at once, bounding the N x K x D float64 tensor of a mixture's log_prob
LOG_PROB_BLOCK_FLOATS = 1 << 22


def result_dtype(z: Tensor) -> torch.dtype:
    """Log-densities are returned in fp32, or in float64 for a float64 z (reference loops)."""
    return torch.float64 if z.dtype == torch.float64 else torch.float32


def standard_normal_log_prob(z: Tensor) -> Tensor:
    """log N(z; 0, I), summed over the last dimension."""
    return -0.5 * (z.to(result_dtype(z)).pow(2) + LOG_2PI).sum(dim=-1)


class Prior(nn.Module):
    """A density over R^latent_dim: ``log_prob`` (... x D -> ...) and ``sample``.

    ``config()`` returns the JSON-able values that, with the ``state_dict``, rebuild it
    (``build_prior``); ``meta`` holds what ``load_prior`` read beside it (the checkpoint and
    the fit's statistics), {} for a prior that was not loaded.
    """

    kind = ""

    def __init__(self, latent_dim: int):
        super().__init__()
        self.latent_dim = int(latent_dim)
        self.meta: dict = {}

    def config(self) -> dict:
        return {"latent_dim": self.latent_dim}

    def device(self) -> torch.device:
        tensors = list(self.buffers()) + list(self.parameters())
        return tensors[0].device if tensors else torch.device("cpu")

    def check_dim(self, z: Tensor):
        if z.size(-1) != self.latent_dim:
            raise ValueError(
                f"z has {z.size(-1)} dimensions but this {self.kind} prior has {self.latent_dim}"
            )


def cpu_normal(
    n: int, dim: int, generator: Optional[torch.Generator], dtype=torch.float32
) -> Tensor:
    """n x dim standard normal draws made on the CPU: a seeded CPU generator gives the same
    stream wherever the prior lives, so fairseq-generate, the hub and fairseq-vae-eval decode
    the same z for one --seed on a GPU as on the CPU (a CUDA generator's stream differs)."""
    if generator is not None and generator.device.type != "cpu":
        raise ValueError("priors draw on the CPU: pass torch.Generator() (a CPU generator)")
    return torch.randn(n, dim, generator=generator, dtype=dtype)


class StandardNormalPrior(Prior):
    """N(0, I), the prior the VAE was trained with."""

    kind = "standard"

    def log_prob(self, z: Tensor) -> Tensor:
        self.check_dim(z)
        return standard_normal_log_prob(z)

    @torch.no_grad()
    def sample(self, n: int, generator: Optional[torch.Generator] = None) -> Tensor:
        return cpu_normal(n, self.latent_dim, generator).to(self.device())


class GaussianMixturePrior(Prior):
    """sum_k w_k N(z; m_k, L_k L_k^T), evaluated and sampled in float64.

    Buffers: ``weights`` (K), ``means`` (K x D), ``scale_tril`` (K x D x D, the lower Cholesky
    factor of each covariance).
    """

    kind = "gmm"

    def __init__(self, weights: Tensor, means: Tensor, scale_tril: Tensor):
        components, latent_dim = means.shape
        super().__init__(latent_dim)
        if weights.shape != (components,) or scale_tril.shape != (
            components,
            latent_dim,
            latent_dim,
        ):
            raise ValueError(
                f"mixture parameters do not fit: weights {tuple(weights.shape)}, means "
                f"{tuple(means.shape)}, scale_tril {tuple(scale_tril.shape)}"
            )
        self.register_buffer("weights", weights.to(torch.float64))
        self.register_buffer("means", means.to(torch.float64))
        self.register_buffer("scale_tril", torch.tril(scale_tril.to(torch.float64)))

    @classmethod
    def from_config(cls, config: dict) -> "GaussianMixturePrior":
        k, d = int(config["components"]), int(config["latent_dim"])
        return cls(torch.ones(k) / k, torch.zeros(k, d), torch.eye(d).expand(k, d, d))

    @classmethod
    def from_sklearn(cls, mixture) -> "GaussianMixturePrior":
        """From a fitted ``sklearn.mixture.GaussianMixture`` with covariance_type="full"."""
        import numpy as np

        if mixture.covariance_type != "full":
            raise ValueError(f"need a full-covariance mixture, got {mixture.covariance_type!r}")
        scale_tril = np.linalg.cholesky(mixture.covariances_)  # K x D x D, lower
        return cls(
            torch.from_numpy(mixture.weights_),
            torch.from_numpy(mixture.means_),
            torch.from_numpy(scale_tril),
        )

    @property
    def components(self) -> int:
        return self.weights.numel()

    def config(self) -> dict:
        return {"latent_dim": self.latent_dim, "components": self.components}

    def log_prob(self, z: Tensor) -> Tensor:
        self.check_dim(z)
        shape, dtype = z.shape[:-1], result_dtype(z)
        rows = z.reshape(-1, self.latent_dim).to(self.means)
        d, k = self.latent_dim, self.components
        # log N(z; m_k, L L^T) = -0.5 |L^-1 (z - m_k)|^2 - sum log diag L - D/2 log 2 pi
        log_norm = (
            torch.log(self.weights)
            - torch.diagonal(self.scale_tril, dim1=-2, dim2=-1).log().sum(-1)
            - 0.5 * d * LOG_2PI
        )  # K
        block = max(1, LOG_PROB_BLOCK_FLOATS // (k * d))
        out = []
        for start in range(0, rows.size(0), block):
            diff = rows[start : start + block, None, :] - self.means  # n x K x D
            # one triangular solve per component: K x D x n
            y = torch.linalg.solve_triangular(self.scale_tril, diff.permute(1, 2, 0), upper=False)
            log_comp = log_norm[:, None] - 0.5 * y.pow(2).sum(dim=1)  # K x n
            out.append(torch.logsumexp(log_comp, dim=0))
        log_p = torch.cat(out) if out else rows.new_zeros(0)
        return log_p.to(z.device, dtype).reshape(shape)

    @torch.no_grad()
    def sample(self, n: int, generator: Optional[torch.Generator] = None) -> Tensor:
        device = self.means.device
        if n == 0:  # torch.multinomial refuses to draw none; N(0, I) returns 0 x D
            return torch.zeros(0, self.latent_dim, device=device)
        weights = self.weights.cpu()  # drawn on the CPU, whatever the device (cpu_normal)
        component = torch.multinomial(weights, n, replacement=True, generator=generator)
        eps = cpu_normal(n, self.latent_dim, generator, torch.float64).to(device)
        component = component.to(device)
        z = self.means[component] + (self.scale_tril[component] @ eps[:, :, None]).squeeze(-1)
        return z.float()


@dataclass
class FlowConfig:
    """The flow's architecture (saved in the prior file) and its training (``fit_flow``)."""

    transform: str = field(
        default="maf",
        metadata={
            "help": "maf (affine) or nsf (rational-quadratic spline, more flexible, slower) "
            "autoregressive transformations"
        },
    )
    transforms: int = field(default=3, metadata={"help": "number of transformations"})
    hidden_features: Tuple[int, ...] = field(
        default=(128, 128), metadata={"help": "hidden layer sizes of each transformation's MADE"}
    )
    bins: int = field(default=8, metadata={"help": "spline bins (nsf only)"})
    lr: float = field(default=1e-3, metadata={"help": "Adam's learning rate"})
    batch_size: int = field(default=512, metadata={"help": "samples per update"})
    max_steps: int = field(default=20000, metadata={"help": "updates at most"})
    eval_interval: int = field(
        default=200, metadata={"help": "updates between two valid log-likelihoods"}
    )
    patience: int = field(
        default=5,
        metadata={"help": "stop after this many evaluations without a better valid likelihood"},
    )

    def architecture(self) -> dict:
        return {
            "transform": self.transform,
            "transforms": int(self.transforms),
            "hidden_features": [int(h) for h in self.hidden_features],
            "bins": int(self.bins),
        }


FLOW_TRANSFORMS = ("maf", "nsf")


def build_flow(latent_dim: int, transform: str, transforms: int, hidden_features, bins: int):
    """The zuko flow of a FlowPrior (fixed feature orders, so the config rebuilds it exactly)."""
    import zuko

    if transform not in FLOW_TRANSFORMS:
        raise ValueError(f"flow transform must be one of {FLOW_TRANSFORMS}, got {transform!r}")
    hidden = [int(h) for h in hidden_features]
    if transform == "nsf":
        return zuko.flows.NSF(latent_dim, transforms=transforms, hidden_features=hidden, bins=bins)
    return zuko.flows.MAF(latent_dim, transforms=transforms, hidden_features=hidden)


class FlowPrior(Prior):
    """A zuko normalizing flow over (z - loc) / scale (buffers, D each)."""

    kind = "flow"

    def __init__(
        self, latent_dim: int, transform="maf", transforms=3, hidden_features=(128, 128), bins=8
    ):
        super().__init__(latent_dim)
        self.architecture = {
            "transform": transform,
            "transforms": int(transforms),
            "hidden_features": [int(h) for h in hidden_features],
            "bins": int(bins),
        }
        self.flow = build_flow(latent_dim, **self.architecture)
        self.register_buffer("loc", torch.zeros(latent_dim))
        self.register_buffer("scale", torch.ones(latent_dim))

    @classmethod
    def from_config(cls, config: dict) -> "FlowPrior":
        return cls(
            int(config["latent_dim"]),
            config["transform"],
            config["transforms"],
            config["hidden_features"],
            config["bins"],
        )

    def config(self) -> dict:
        return {"latent_dim": self.latent_dim, **self.architecture}

    def log_prob(self, z: Tensor) -> Tensor:
        self.check_dim(z)
        dtype = result_dtype(z)
        x = (z.to(self.loc) - self.loc) / self.scale
        return (self.flow().log_prob(x) - self.scale.log().sum()).to(z.device, dtype)

    @torch.no_grad()
    def sample(self, n: int, generator: Optional[torch.Generator] = None) -> Tensor:
        dist = self.flow()
        eps = cpu_normal(n, self.latent_dim, generator).to(self.loc.device)
        x = dist.transform.inv(dist.base.mean + dist.base.stddev * eps)
        return self.loc + self.scale * x


PRIOR_CLASSES = {"standard": StandardNormalPrior, "gmm": GaussianMixturePrior, "flow": FlowPrior}


def build_prior(kind: str, config: dict) -> Prior:
    """An unfitted prior of ``kind`` from its ``config()``; load the state dict into it."""
    if kind not in PRIOR_CLASSES:
        raise ValueError(f"unknown prior kind {kind!r}: one of {', '.join(PRIOR_CLASSES)}")
    if kind == "standard":
        return StandardNormalPrior(int(config["latent_dim"]))
    return PRIOR_CLASSES[kind].from_config(config)


# ----------------------------------------------------------------------------------------------
# What the importance weights and the KL need


def prior_log_density(z: Tensor, prior: Optional[Prior] = None) -> Tensor:
    """log p(z), the prior term of the importance weights log p(x|z) + log p(z) - log q(z|x).

    ``prior`` None is N(0, I). z is ... x D (B x n x D for n samples of B sentences); the
    result has z's leading shape, in fp32 (float64 for a float64 z).
    """
    return standard_normal_log_prob(z) if prior is None else prior.log_prob(z)


def monte_carlo_kl(log_qz_x: Tensor, log_pz: Tensor) -> Tensor:
    """KL(q(z|x) || p) ~= mean_k [log q(z_k|x) - log p(z_k)] over samples z_k ~ q(z|x).

    Args:
        log_qz_x, log_pz: B x n, the posterior's and the prior's log-densities of each
            sentence's n samples (those of the importance weights serve)
    Returns:
        B estimates, in float64
    """
    return (log_qz_x.double() - log_pz.double()).mean(dim=-1)


def posterior_kl(mu: Tensor, logvar: Tensor, z: Tensor, prior: Optional[Prior] = None) -> Tensor:
    """KL(q(z|x) || prior) by Monte Carlo from samples z (B x n x D) of q = N(mu, exp(logvar))
    (B x D each); B values in float64."""
    mu, logvar, z = mu.double(), logvar.double(), z.double()
    log_q = -0.5 * ((z - mu[:, None]).pow(2) * torch.exp(-logvar[:, None]) + logvar[:, None])
    log_q = log_q.sum(dim=-1) - 0.5 * mu.size(-1) * LOG_2PI
    return monte_carlo_kl(log_q, prior_log_density(z, prior))


def posterior_samples(
    mu: Tensor, logvar: Tensor, n: int, generator: Optional[torch.Generator] = None
) -> Tensor:
    """n draws z ~ N(mu, exp(logvar)) per sentence: (N * n) x D in fp32, sentence i's draws in
    rows i*n .. i*n + n - 1."""
    if n < 1:
        raise ValueError(f"need at least one posterior sample per sentence, got {n}")
    mu, logvar = mu.float(), logvar.float()
    eps = torch.randn(mu.size(0), n, mu.size(1), generator=generator, device=mu.device)
    return (mu[:, None] + torch.exp(0.5 * logvar)[:, None] * eps).reshape(-1, mu.size(1))


@torch.no_grad()
def mean_log_likelihood(z: Tensor, prior: Optional[Prior] = None, block: int = 65536) -> float:
    """The mean over rows of log p(z) (nats per sample), scored ``block`` rows at a time."""
    total = sum(
        prior_log_density(z[i : i + block], prior).double().sum().item()
        for i in range(0, z.size(0), block)
    )
    return total / z.size(0)


# ----------------------------------------------------------------------------------------------
# Fitting


def fit_gmm(
    train_z: Tensor,
    valid_z: Tensor,
    components: Sequence[int] = GMM_COMPONENTS,
    seed: int = 1,
    max_iter: int = GMM_MAX_ITER,
    reg_covar: float = GMM_REG_COVAR,
    max_points: Optional[int] = GMM_MAX_POINTS,
) -> Tuple[GaussianMixturePrior, dict]:
    """A full-covariance Gaussian mixture fitted to ``train_z`` (scikit-learn's EM, k-means
    initialisation), one per candidate number of components; the one with the highest mean
    log-likelihood of ``valid_z`` is returned with ``{"components": k, "candidates": [...],
    "fit_points": n}``. EM sees at most ``max_points`` rows of ``train_z``, a random subset
    drawn with ``seed`` (None: all of them).
    """
    from sklearn.mixture import GaussianMixture

    if max_points is not None and max_points < len(train_z):
        if max_points < 1:
            raise ValueError(f"--gmm-max-points must be at least 1, got {max_points}")
        chosen = torch.randperm(len(train_z), generator=torch.Generator().manual_seed(seed))
        train_z = train_z[chosen[:max_points]]
    train = train_z.detach().cpu().double().numpy()
    valid = valid_z.detach().cpu().double().numpy()
    usable = [int(k) for k in components if 1 <= int(k) <= len(train)]
    if not usable:
        raise ValueError(
            f"--components {','.join(map(str, components))}: need at least one number of "
            f"components between 1 and the {len(train)} training samples"
        )
    candidates, best = [], None
    for k in usable:
        mixture = GaussianMixture(
            n_components=k,
            covariance_type="full",
            max_iter=max_iter,
            reg_covar=reg_covar,
            random_state=seed,
        ).fit(train)
        row = {
            "components": k,
            "train_ll": float(mixture.score(train)),
            "valid_ll": float(mixture.score(valid)),
            "converged": bool(mixture.converged_),
            "iterations": int(mixture.n_iter_),
        }
        logger.info(
            f"mixture of {k}: mean log-likelihood train {row['train_ll']:.3f}, valid "
            f"{row['valid_ll']:.3f} ({row['iterations']} EM iterations"
            + ("" if row["converged"] else ", not converged")
            + ")"
        )
        candidates.append(row)
        if best is None or row["valid_ll"] > best[0]["valid_ll"]:
            best = (row, mixture)
    return GaussianMixturePrior.from_sklearn(best[1]), {
        "components": best[0]["components"],
        "candidates": candidates,
        "fit_points": len(train),
    }


def check_flow_rows(train_z: Tensor, valid_z: Tensor):
    """A ValueError unless the flow's standardisation is defined (2 training rows or more,
    each dimension with a spread: one row's is NaN) and a valid row can choose its weights."""
    if train_z.dim() != 2 or train_z.size(0) < 2:
        raise ValueError(f"a flow needs at least 2 training samples of z, got {len(train_z)}")
    flat = (train_z.detach().float().std(dim=0) == 0).nonzero().flatten().tolist()
    if flat:
        raise ValueError(f"the training z have no spread in dimension(s) {flat[:10]} to scale")
    if valid_z.size(0) < 1:
        raise ValueError("a flow needs at least 1 valid sample of z to choose its weights on")


def fit_flow(
    train_z: Tensor, valid_z: Tensor, config: Optional[FlowConfig] = None, seed: int = 1
) -> Tuple[FlowPrior, dict]:
    """A FlowPrior trained by maximum likelihood on ``train_z`` (Adam, minibatches drawn with
    replacement), the valid mean log-likelihood measured every ``eval_interval`` updates; it
    stops after ``patience`` measurements without improvement and returns the best one's
    weights, with ``{"steps", "best_step", "valid_ll", "history"}``. Runs on train_z's device.
    """
    config = config or FlowConfig()
    if config.eval_interval < 1 or config.max_steps < 1 or config.batch_size < 1:
        raise ValueError(f"flow training needs positive step counts and batch size: {config}")
    check_flow_rows(train_z, valid_z)
    device = train_z.device
    train, valid = train_z.detach().float(), valid_z.detach().float().to(device)
    with torch.random.fork_rng(devices=[]):  # the flow's initialisation, not the caller's stream
        torch.manual_seed(seed)
        prior = FlowPrior(train.size(1), **config.architecture()).to(device)
    prior.loc.copy_(train.mean(dim=0))
    prior.scale.copy_(train.std(dim=0).clamp_min(1e-6))
    draws = torch.Generator(device=device)
    draws.manual_seed(seed)
    optimizer = torch.optim.Adam(prior.flow.parameters(), lr=config.lr)
    best_ll, best_state, best_step, bad, history = -math.inf, None, 0, 0, []
    step = 0
    while step < config.max_steps:
        prior.train()
        rows = torch.randint(len(train), (config.batch_size,), generator=draws, device=device)
        batch = train[rows]
        loss = -prior.log_prob(batch).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        step += 1
        if step % config.eval_interval and step < config.max_steps:
            continue
        prior.eval()
        valid_ll = mean_log_likelihood(valid, prior)
        history.append({"step": step, "train_loss": float(loss.item()), "valid_ll": valid_ll})
        logger.info(f"flow update {step}: batch NLL {loss.item():.3f}, valid ll {valid_ll:.3f}")
        if valid_ll > best_ll:
            best_ll, best_step, bad = valid_ll, step, 0
            best_state = copy.deepcopy(prior.state_dict())
        else:
            bad += 1
            if bad >= config.patience:
                break
    if best_state is None:
        raise ValueError("the flow's valid log-likelihood was never finite: lower --flow-lr")
    prior.load_state_dict(best_state)
    prior.eval()
    return prior, {"steps": step, "best_step": best_step, "valid_ll": best_ll, "history": history}
