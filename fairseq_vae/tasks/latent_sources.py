"""What generation decodes from: the values of --latent-source, the encoders' mode for one
step, and the checks of --latent-samples."""

import contextlib

# --latent-source -> the encoder's latent_source
LATENT_SOURCES = {
    "posterior-mean": "mean",
    "posterior-sample": "sample",
    "prior": "prior",
    "prior-mean": "prior-mean",
}


def latent_samples_problem(cfg):
    """--latent-samples is for the conditional model, and only with a latent source that draws."""
    n = cfg.latent_samples
    if n < 1:
        raise ValueError(f"--latent-samples must be at least 1, got {n}")
    if n > 1 and not cfg.source_lang:
        raise ValueError(
            f"--latent-samples {n} decodes several latents per source of bart_cvae's paired "
            "data (--source-lang, --target-lang); bart_vae samples with --prior-samples N"
        )
    if n > 1 and str(cfg.latent_source) in ("posterior-mean", "prior-mean"):
        raise ValueError(
            f"--latent-samples {n} with --latent-source {cfg.latent_source} would decode one z "
            f"{n} times: draw them with --latent-source prior (or posterior-sample)"
        )


@contextlib.contextmanager
def latent_source(models, source: str):
    """Temporarily make every model's encoder take z from ``source`` (mean, sample, prior)."""
    encoders = [model.encoder for model in models if hasattr(model.encoder, "latent_source")]
    previous = [encoder.latent_source for encoder in encoders]
    for encoder in encoders:
        encoder.latent_source = source
    try:
        yield
    finally:
        for encoder, source_before in zip(encoders, previous):
            encoder.latent_source = source_before
