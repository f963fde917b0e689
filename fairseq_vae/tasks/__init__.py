from .text_vae import TextVAETask  # noqa: F401
