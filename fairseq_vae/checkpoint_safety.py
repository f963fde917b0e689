"""Let fairseq checkpoints load with torch's ``weights_only=True`` safety left on.

torch >= 2.6 unpickles checkpoints with ``weights_only=True`` by default, which refuses any
global not on an allow-list; fairseq checkpoints store their options as an
``argparse.Namespace``, so without this they cannot be loaded at all. We add exactly the
globals fairseq's own checkpoints contain, never switch the safety off, and so a checkpoint
whose pickle names anything else (code to run on load, say) is still refused.
"""

import argparse

import torch


def fairseq_checkpoint_globals():
    """The classes and functions that checkpoints written by fairseq-train may reference."""
    allowed = [argparse.Namespace]
    try:  # saved metrics (--eval-bleu, --best-checkpoint-metric) can hold numpy scalars
        import numpy as np
        from numpy._core import multiarray  # numpy 2 pickles these under numpy._core

        allowed += [np.ndarray, np.dtype, multiarray._reconstruct, multiarray.scalar]
        allowed += [type(np.dtype(name)) for name in ("float64", "float32", "int64", "int32")]
    except ImportError:
        pass
    return allowed


torch.serialization.add_safe_globals(fairseq_checkpoint_globals())
