"""The text-VAE estimators: pure functions of tensors that fairseq-vae-eval, the benchmarks and
the tests share.

Every number follows the definitions of the reference implementation, jxhe/vae-lagging-encoder
(He et al. 2019), so that it can be compared with published tables:

* IW-NLL: K samples z_k ~ q(z|x), log w_k = log p(x|z_k) + log p(z_k) - log q(z_k|x),
  log p(x) ~= logsumexp_k log w_k - log K.
* MI: I(x;z) = E_x E_q[log q(z|x)] - E_q(z)[log q(z)], the first term analytic, the aggregate
  posterior q(z) from one z per sentence scored against every q(.|x_j) of a pool.
* AU: latent dimensions whose posterior mean has a variance (over the evaluation set, unbiased)
  of at least a threshold (0.01).
* Probes: how well a logistic regression reads a labelled factor from the posterior mean.

Log-densities and logsumexps are computed in fp32 whatever the model's dtype.
"""

import csv
import math
from collections import Counter
from typing import Dict, List, Optional, Tuple

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


def decoder_log_likelihood(model, mu, logvar, z, prev_output_tokens, target) -> Tensor:
    """log p(x|z) for N (sentence, z) rows: one decoder call on a batch of N.

    Args:
        mu, logvar, z: N x latent (mu and logvar only travel in the encoder-out dict)
        prev_output_tokens, target: N x T, the sentence shifted right (eos first) and as is
    Returns:
        N log-likelihoods in fp32
    """
    encoder_out = model.encoder.latent_encoder_out(mu, logvar, z)
    features, _ = model.decoder(prev_output_tokens, encoder_out=encoder_out, features_only=True)
    return sequence_log_likelihood(
        features, target, model.decoder.dictionary.pad(), model.decoder.output_layer
    )


def log_importance_weights(model, mu, logvar, prev_output_tokens, target, eps):
    """log w = log p(x|z) + log p(z) - log q(z|x) for n posterior samples of B sentences.

    The B * n samples are decoded as one batch (sentence b's samples are rows b*n .. b*n+n-1,
    hence repeat_interleave); the encoder is not run again.

    Args:
        mu, logvar: B x D posterior of each sentence
        prev_output_tokens, target: B x T
        eps: B x n x D standard normal draws; z = mu + exp(logvar / 2) * eps
    Returns:
        (log_w, log_px_z, z): B x n, B x n (both fp32) and B x n x D
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
    ).view(bsz, n)
    log_qz_x = gaussian_log_density(z, mu[:, None, :], logvar[:, None, :])  # B x n
    log_w = log_px_z + standard_normal_log_density(z) - log_qz_x
    return log_w, log_px_z, z


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
    """The importance-weighted estimate of log p(x) with K = ``num_samples`` samples.

    Samples are drawn and decoded ``chunk`` per sentence at a time, so a pass holds the logits
    of B * chunk sentences whatever K is.

    Args:
        mu, logvar: B x D posterior, computed once per sentence
        prev_output_tokens, target: B x T
        generator: the source of the standard normal draws (ignored when ``eps`` is given)
        eps: optionally the B x K x D draws themselves (tests replay them)
    Returns:
        (log_px, z1, log_px_z1): B estimates of log p(x) in fp32; the first sample z_1 (B x D)
        and its log p(x|z_1) (B), a one-sample draw for the -ELBO and the MI
    """
    if num_samples < 1 or chunk < 1:
        raise ValueError(f"need at least one sample and chunk, got K={num_samples} chunk={chunk}")
    bsz, dim = mu.shape
    log_ws, first = [], None
    for start in range(0, num_samples, chunk):
        n = min(chunk, num_samples - start)
        if eps is not None:
            draws = eps[:, start : start + n].to(mu)
        else:
            draws = torch.randn(bsz, n, dim, generator=generator, device=mu.device)
        log_w, log_px_z, z = log_importance_weights(
            model, mu, logvar, prev_output_tokens, target, draws
        )
        if first is None:
            first = (z[:, 0], log_px_z[:, 0])
        log_ws.append(log_w)
    log_px = torch.logsumexp(torch.cat(log_ws, dim=1), dim=1) - math.log(num_samples)
    return log_px, first[0], first[1]


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


def probe_factors(features, labels: Dict[str, List[str]]) -> Dict[str, dict]:
    """How well each factor can be read from the posterior mean.

    A standardised logistic regression is trained on the first half of the sentences and
    scored on the second half; the majority class of the first half, scored on the second,
    is the baseline a probe has to beat.

    Args:
        features: N x D array (posterior means in corpus order)
        labels: factor name -> N labels
    """
    import numpy as np
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    features = np.asarray(features, dtype=np.float64)
    half = len(features) // 2
    results = {}
    for name, values in labels.items():
        y = np.asarray(values)
        if len(y) != len(features):
            raise ValueError(f"{len(y)} labels for factor {name!r} but {len(features)} sentences")
        majority = Counter(y[:half].tolist()).most_common(1)[0][0]
        baseline = float(np.mean(y[half:] == majority))
        if len(set(y[:half].tolist())) < 2:
            accuracy = baseline  # one class to learn from: the probe is the baseline
        else:
            probe = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000))
            probe.fit(features[:half], y[:half])
            accuracy = float(probe.score(features[half:], y[half:]))
        results[name] = {
            "accuracy": accuracy,
            "majority_baseline": baseline,
            "classes": len(set(y.tolist())),
            "train": half,
            "test": len(y) - half,
        }
    return results


def read_labels(path: str) -> Dict[str, List[str]]:
    """A TSV of factor labels: a header of factor names, then one line per sentence."""
    with open(path, encoding="utf-8", newline="") as f:
        rows = list(csv.reader(f, delimiter="\t"))
    if not rows:
        raise ValueError(f"{path} is empty")
    header, body = rows[0], [row for row in rows[1:] if row]
    for i, row in enumerate(body):
        if len(row) != len(header):
            raise ValueError(f"{path}:{i + 2}: {len(row)} fields, header has {len(header)}")
    return {name: [row[col] for row in body] for col, name in enumerate(header)}
