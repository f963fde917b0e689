from .bart_cvae import BARTCVAEModel  # noqa: F401
from .bart_vae import BARTVAEModel  # noqa: F401
