"""The text-VAE estimators: pure functions of tensors that fairseq-vae-eval, the benchmarks and
the tests share.

Every number follows the definitions of the reference implementation, jxhe/vae-lagging-encoder
(He et al. 2019), so that it can be compared with published tables:

* IW-NLL: K samples z_k ~ q(z|x), log w_k = log p(x|z_k) + log p(z_k) - log q(z_k|x),
  log p(x) ~= logsumexp_k log w_k - log K; with a fitted prior p'(z) beside N(0, I), the same
  samples with log p'(z_k) in the weights, and KL(q(z|x) || p') by Monte Carlo.
* MI: I(x;z) = E_x E_q[log q(z|x)] - E_q(z)[log q(z)], the first term analytic, the aggregate
  posterior q(z) from one z per sentence scored against every q(.|x_j) of a pool.
* AU: latent dimensions whose posterior mean has a variance (over the evaluation set, unbiased)
  of at least a threshold (0.01).
* Probes: how well a logistic regression reads a labelled factor from the posterior mean,
  trained on one half of the sentences (a seeded, stratified shuffle) and scored on the other.

Log-densities and logsumexps are computed in fp32 whatever the model's dtype.
"""

import math
from collections import Counter
from dataclasses import dataclass
from typing import Callable, Dict, List, Optional, Tuple

import torch
from torch import Tensor

LOG_2PI = math.log(2.0 * math.pi)

# Defaults; the reference (He et al. 2019) uses 500 samples drawn 100 at a time.
IW_SAMPLES = 500
IW_CHUNK = 100
AU_THRESHOLD = 0.01
# output projections of this many positions at a time (about 10 MB of fp32 logits at V = 10k)
LOGIT_BLOCK_ROWS = 256
# the MI's pool is scored in blocks of at most this many (z_i, q(.|x_j), dimension) floats
MI_BLOCK_FLOATS = 1 << 24


def gaussian_log_density(z: Tensor, mu: Tensor, logvar: Tensor) -> Tensor:
    """log N(z; mu, diag(exp(logvar))), summed over the last dimension, in fp32.

    The arguments broadcast: z of ``... x D`` against mu, logvar of ``... x D``.
    """
    z, mu, logvar = z.float(), mu.float(), logvar.float()
    return -0.5 * ((z - mu).pow(2) * torch.exp(-logvar) + logvar + LOG_2PI).sum(dim=-1)


def standard_normal_log_density(z: Tensor) -> Tensor:
    """log N(z; 0, I) of the prior, summed over the last dimension, in fp32."""
    return -0.5 * (z.float().pow(2) + LOG_2PI).sum(dim=-1)


def sequence_log_likelihood(
    features: Tensor, target: Tensor, padding_idx: int, output_layer
) -> Tensor:
    """sum_t log p(target_t | target_<t, z) over the non-pad positions.

    Only the non-pad positions go through the output projection, ``LOGIT_BLOCK_ROWS`` at a
    time: the logits of a block (block x V) stay in the CPU's cache between the projection and the
    normalisation, which on PTB (V = 10k) halves the cost of the IW estimator against
    normalising one N x T x V tensor.

    Args:
        features: N x T x C decoder states before the output projection
        target: N x T token indices, right-padded with ``padding_idx``
        output_layer: maps ... x C states to ... x V logits (the decoder's ``output_layer``)
    Returns:
        N log-likelihoods in fp32
    """
    block = LOGIT_BLOCK_ROWS  # read at call time, so tests can vary it
    keep = target.ne(padding_idx)
    rows = keep.nonzero(as_tuple=True)[0]  # sentence of each kept position
    states, symbols = features[keep], target[keep]
    token_ll = features.new_empty(symbols.shape, dtype=torch.float32)
    for start in range(0, symbols.numel(), block):
        logits = output_layer(states[start : start + block]).float()
        lprobs = torch.log_softmax(logits, dim=-1)
        token_ll[start : start + block] = lprobs.gather(
            -1, symbols[start : start + block, None]
        ).squeeze(-1)
    return token_ll.new_zeros(target.size(0)).index_add_(0, rows, token_ll)


def decoder_log_likelihood(
    model, mu, logvar, z, prev_output_tokens, target, encoder_out_of=None
) -> Tensor:
    """log p(x|z) for N (sentence, z) rows: one decoder call on a batch of N.

    Args:
        mu, logvar, z: N x latent (mu and logvar only travel in the encoder-out dict)
        prev_output_tokens, target: N x T, the sentence shifted right (eos first) and as is
        encoder_out_of: (mu, logvar, z) -> the decoder's encoder-out dict, when the memory
            holds more than z (bart_cvae's source states); default the sentence VAE's
    Returns:
        N log-likelihoods in fp32
    """
    encoder_out_of = encoder_out_of or model.encoder.latent_encoder_out
    encoder_out = encoder_out_of(mu, logvar, z)
    features, _ = model.decoder(prev_output_tokens, encoder_out=encoder_out, features_only=True)
    return sequence_log_likelihood(
        features, target, model.decoder.dictionary.pad(), model.decoder.output_layer
    )


def importance_terms(model, mu, logvar, prev_output_tokens, target, eps, encoder_out_of=None):
    """log p(x|z), log q(z|x) and z for n posterior samples of B sentences: the parts of the
    importance weights that do not depend on the prior.

    The B * n samples are decoded as one batch (sentence b's samples are rows b*n .. b*n+n-1,
    hence repeat_interleave); the encoder is not run again.

    Args:
        mu, logvar: B x D posterior of each sentence
        prev_output_tokens, target: B x T
        eps: B x n x D standard normal draws; z = mu + exp(logvar / 2) * eps
    Returns:
        (log_px_z, log_qz_x, z): B x n, B x n (both fp32) and B x n x D
    """
    bsz, n, dim = eps.shape
    z = mu[:, None, :] + torch.exp(0.5 * logvar)[:, None, :] * eps  # B x n x D
    log_px_z = decoder_log_likelihood(
        model,
        mu.repeat_interleave(n, dim=0),
        logvar.repeat_interleave(n, dim=0),
        z.reshape(bsz * n, dim),
        prev_output_tokens.repeat_interleave(n, dim=0),
        target.repeat_interleave(n, dim=0),
        encoder_out_of,
    ).view(bsz, n)
    log_qz_x = gaussian_log_density(z, mu[:, None, :], logvar[:, None, :])  # B x n
    return log_px_z, log_qz_x, z


@dataclass
class IWEstimates:
    """What one run of the IW estimator gives for B sentences (``iw_estimates``).

    ``log_px``: the estimate of log p(x) under N(0, I) (B, fp32); ``z1`` and ``log_px_z1``: the
    first sample (B x D) and its log p(x|z_1) (B), a one-sample draw for the -ELBO and the MI.
    With a second prior p': ``prior_log_px``, the estimate of log p'(z) p(x|z) marginalised
    (B, fp32), and ``prior_kl``, KL(q(z|x) || p') by Monte Carlo (B, float64); else None.
    """

    log_px: Tensor
    z1: Tensor
    log_px_z1: Tensor
    prior_log_px: Optional[Tensor] = None
    prior_kl: Optional[Tensor] = None


def iw_estimates(
    model,
    mu: Tensor,
    logvar: Tensor,
    prev_output_tokens: Tensor,
    target: Tensor,
    num_samples: int,
    chunk: int = IW_CHUNK,
    generator: Optional[torch.Generator] = None,
    eps: Optional[Tensor] = None,
    log_prior: Optional[Callable[[Tensor], Tensor]] = None,
    prior: Optional[Tuple[Tensor, Tensor]] = None,
    encoder_out_of=None,
) -> IWEstimates:
    """The importance-weighted estimate of log p(x) with K = ``num_samples`` samples, under
    N(0, I) and, given ``log_prior``, under a second prior p' from the same samples.

    log w_k = log p(x|z_k) + log p(z_k) - log q(z_k|x) with the same z_k ~ q(z|x) and the same
    decoder pass for both priors: only the prior term differs, so the two estimates are a
    paired comparison (a fitted prior p'(z) with the decoder p(x|z) is a generative model of
    its own, and its weights give a valid bound on its log-likelihood). KL(q(z|x) || p') has no
    closed form: it is the mean over the K samples of log q(z_k|x) - log p'(z_k).

    Samples are drawn and decoded ``chunk`` per sentence at a time, so a pass holds the logits
    of B * chunk sentences whatever K is.

    Args:
        mu, logvar: B x D posterior, computed once per sentence
        prev_output_tokens, target: B x T
        generator: the source of the standard normal draws (ignored when ``eps`` is given)
        eps: optionally the B x K x D draws themselves (tests replay them)
        log_prior: log p'(z) of ... x D latents (a fitted prior's ``log_prob``, or a
            function of z), B x n results for B x n x D
        prior: (mu, logvar), each B x D: the model's own prior is this diagonal Gaussian per
            sentence (bart_cvae's p(z|c)) instead of N(0, I); log_px is then log p(x|c)
        encoder_out_of: the decoder's memory of a (mu, logvar, z) batch of B * n rows, where
            it holds more than z (decoder_log_likelihood)
    """
    if num_samples < 1 or chunk < 1:
        raise ValueError(f"need at least one sample and chunk, got K={num_samples} chunk={chunk}")
    bsz, dim = mu.shape
    log_ws, prior_log_ws, first = [], [], None
    kl_sum = torch.zeros(bsz, dtype=torch.float64, device=mu.device)
    for start in range(0, num_samples, chunk):
        n = min(chunk, num_samples - start)
        if eps is not None:
            draws = eps[:, start : start + n].to(mu)
        else:
            draws = torch.randn(bsz, n, dim, generator=generator, device=mu.device)
        log_px_z, log_qz_x, z = importance_terms(
            model, mu, logvar, prev_output_tokens, target, draws, encoder_out_of
        )
        if first is None:
            first = (z[:, 0], log_px_z[:, 0])
        if prior is None:
            log_pz = standard_normal_log_density(z)
        else:
            log_pz = gaussian_log_density(z, prior[0][:, None, :], prior[1][:, None, :])
        log_ws.append(log_px_z + log_pz - log_qz_x)
        if log_prior is not None:
            log_pz = log_prior(z.float()).float().to(log_px_z.device)  # B x n
            prior_log_ws.append(log_px_z + log_pz - log_qz_x)
            kl_sum += (log_qz_x.double() - log_pz.double()).sum(dim=1)
    result = IWEstimates(
        torch.logsumexp(torch.cat(log_ws, dim=1), dim=1) - math.log(num_samples), *first
    )
    if log_prior is not None:
        result.prior_log_px = torch.logsumexp(torch.cat(prior_log_ws, dim=1), dim=1) - math.log(
            num_samples
        )
        result.prior_kl = kl_sum / num_samples
    return result


def iw_log_likelihood(
    model,
    mu: Tensor,
    logvar: Tensor,
    prev_output_tokens: Tensor,
    target: Tensor,
    num_samples: int,
    chunk: int = IW_CHUNK,
    generator: Optional[torch.Generator] = None,
    eps: Optional[Tensor] = None,
):
    """``iw_estimates`` under N(0, I) alone: (log_px, z1, log_px_z1), B estimates of log p(x)
    in fp32, the first sample z_1 (B x D) and its log p(x|z_1) (B)."""
    result = iw_estimates(
        model, mu, logvar, prev_output_tokens, target, num_samples, chunk, generator, eps
    )
    return result.log_px, result.z1, result.log_px_z1


def mutual_information(mu: Tensor, logvar: Tensor, z: Tensor) -> float:
    """I(x; z) over a pool of N sentences, as the reference's ``calc_mi`` estimates it.

    E_x E_q[log q(z|x)] is the analytic negative entropy; log q(z_i) =
    logsumexp_j log q(z_i | x_j) - log N with one sample z_i ~ q(z|x_i) per sentence. The
    estimate cannot much exceed log N (each z_i is scored against its own posterior too).

    Args:
        mu, logvar, z: N x D
    """
    mu, logvar, z = mu.float(), logvar.float(), z.float()
    pool, dim = mu.shape
    neg_entropy = (-0.5 * dim * LOG_2PI - 0.5 * (1.0 + logvar).sum(dim=-1)).mean()
    # the N x N x D differences are built a block of z rows at a time to bound memory
    rows = max(1, MI_BLOCK_FLOATS // max(1, pool * dim))
    log_qz = []
    for start in range(0, pool, rows):
        block = gaussian_log_density(z[start : start + rows, None, :], mu[None], logvar[None])
        log_qz.append(torch.logsumexp(block, dim=1) - math.log(pool))  # rows
    return (neg_entropy - torch.cat(log_qz).mean()).item()


def active_units(mu: Tensor, threshold: float = AU_THRESHOLD) -> Tuple[int, Tensor]:
    """Dimensions whose posterior mean varies across sentences: Var_x[mu_d(x)] >= threshold.

    Args:
        mu: N x D posterior means of the evaluation set
    Returns:
        (count, variances): the number of active units and the D unbiased variances
    """
    if mu.size(0) < 2:
        raise ValueError("active units need at least two sentences")
    variances = mu.float().var(dim=0, unbiased=True)  # the reference divides by N - 1
    return int((variances >= threshold).sum().item()), variances


def probe_split(y, seed: int) -> tuple:
    """(train, scored, stratified): sorted indices of two halves of the labels ``y``, drawn with
    ``seed`` wherever the sentences lie in the file (a file sorted by class must not put one
    class in each half).

    The split is stratified (each class halved) where scikit-learn can stratify: every class
    has two sentences and each half has room for every class; otherwise it is a plain
    shuffle. Needs at least two sentences.
    """
    import numpy as np
    from sklearn.model_selection import train_test_split

    n = len(y)
    half = n // 2
    counts = Counter(y.tolist())
    stratified = min(counts.values()) >= 2 and len(counts) <= half
    train, scored = train_test_split(
        np.arange(n),
        train_size=half,
        test_size=n - half,
        random_state=seed,
        shuffle=True,
        stratify=y if stratified else None,
    )
    return np.sort(train), np.sort(scored), stratified


def probe_factors(features, labels: Dict[str, List[str]], seed: int = 1) -> Dict[str, dict]:
    """How well each factor can be read from the posterior mean.

    A standardised logistic regression is trained on one half of the sentences and scored on
    the other (``probe_split``: a seeded, stratified shuffle); the baseline a probe has to
    beat is the share of the scored half's most common class (the best a constant guess can
    score there). With fewer than two sentences there is nothing to score: accuracy and
    baseline are None.

    Args:
        features: N x D array (posterior means in corpus order)
        labels: factor name -> N labels
        seed: the split's random state
    """
    import numpy as np
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    features = np.asarray(features, dtype=np.float64)
    results = {}
    for name, values in labels.items():
        y = np.asarray(values)
        if len(y) != len(features):
            raise ValueError(f"{len(y)} labels for factor {name!r} but {len(features)} sentences")
        result = {"classes": len(set(y.tolist()))}
        if len(y) < 2:
            results[name] = dict(
                result, accuracy=None, majority_baseline=None, train=0, test=len(y), split=None
            )
            continue
        train, scored, stratified = probe_split(y, seed)
        baseline = Counter(y[scored].tolist()).most_common(1)[0][1] / len(scored)
        if len(set(y[train].tolist())) < 2:
            # one class to learn from: the probe can only guess that class
            accuracy = float(np.mean(y[scored] == y[train][0]))
        else:
            probe = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000))
            probe.fit(features[train], y[train])
            accuracy = float(probe.score(features[scored], y[scored]))
        results[name] = dict(
            result,
            accuracy=accuracy,
            majority_baseline=baseline,
            train=len(train),
            test=len(scored),
            split="stratified" if stratified else "shuffled",
        )
    return results


def read_labels(path: str, sentences: Optional[int] = None) -> Dict[str, List[str]]:
    """A TSV of factor labels: a header of factor names, then one line per sentence.

    Lines are split at tabs and nothing else (no quoting), so line k + 2 of the file is
    sentence k's row. Blank lines at the end are ignored. A header with an empty or repeated
    name, a line with too few or too many fields or an empty one, and (given ``sentences``)
    another number of rows than the split's sentences are errors naming the file and line.
    """
    with open(path, encoding="utf-8", newline="") as f:
        lines = [line.rstrip("\r\n") for line in f]
    while lines and not lines[-1].strip():
        lines.pop()
    if not lines:
        raise ValueError(
            f"{path} is empty: it needs a header of factor names, then one line per sentence"
        )
    header = lines[0].split("\t")
    for col, name in enumerate(header, 1):
        if not name.strip():
            raise ValueError(f"{path}:1: column {col} of the header has no factor name")
        if header.index(name) != col - 1:
            raise ValueError(
                f"{path}:1: factor {name!r} is named twice "
                f"(columns {header.index(name) + 1} and {col})"
            )
    names = ", ".join(header)
    body = []
    for lineno, line in enumerate(lines[1:], 2):
        if not line.strip():
            raise ValueError(
                f"{path}:{lineno}: blank line; every sentence needs a line of its labels ({names})"
            )
        row = line.split("\t")
        if len(row) < len(header):
            missing = ", ".join(header[len(row) :])
            raise ValueError(
                f"{path}:{lineno}: {len(row)} fields, the header has {len(header)} ({names}): "
                f"no value for {missing}"
            )
        if len(row) > len(header):
            raise ValueError(
                f"{path}:{lineno}: {len(row)} fields, the header names {len(header)} ({names}): "
                f"column {len(header) + 1} has no factor"
            )
        for col, value in enumerate(row):
            if not value.strip():
                raise ValueError(f"{path}:{lineno}: column {col + 1} ({header[col]}) is empty")
        body.append(row)
    if sentences is not None and len(body) != sentences:
        message = (
            f"{path} has {len(body)} lines of labels after its header, "
            f"the split {sentences} sentences"
        )
        if len(body) == sentences - 1:
            message += (
                f": is the header missing? its first line ({lines[0]!r}) is read as the "
                "factor names"
            )
        raise ValueError(message)
    return {name: [row[col] for row in body] for col, name in enumerate(header)}
