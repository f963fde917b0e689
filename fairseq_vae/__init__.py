"""fairseq_vae: BART as a sentence-level variational autoencoder, as a fairseq --user-dir plugin.

fairseq's --user-dir imports only models/ and tasks/ by itself; the criterion is imported here.
"""

from .shims import checkpoint_safety  # noqa: F401  (allow-lists what fairseq checkpoints hold)
from .shims import full_help  # noqa: F401  (--help shows our model, task and criterion options)
from .shims import numpy_compat  # noqa: F401  (fairseq 0.12 on numpy 2)
from .shims import quiet_logs  # noqa: F401  (hydra's deprecation notes on every command)
from .shims import user_errors  # noqa: F401  (a user's slip in one line, fairseq's commands too)
from . import criterions, models, tasks  # noqa: F401
