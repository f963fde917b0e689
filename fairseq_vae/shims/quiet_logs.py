"""Silence the start-up noise that fairseq's own imports print in every command.

fairseq 0.12 composes its configs through hydra's deprecated ``experimental`` API, which warns
on every command (``initialize() is no longer experimental``, ``version_base``, the package
header and schema-matching notes) and logs hydra's job bookkeeping at DEBUG level. None of it
is actionable by a user of the plugin; only those hydra messages are filtered, nothing else.
"""

import logging
import warnings

warnings.filterwarnings("ignore", category=UserWarning, module=r"hydra(\.|$)")
warnings.filterwarnings("ignore", message=r"(?s).*is validated against ConfigStore schema")
logging.getLogger("hydra").setLevel(logging.WARNING)
