from .bart_vae import BARTVAEModel  # noqa: F401
