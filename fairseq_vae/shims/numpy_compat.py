"""numpy 2 removed ``np.compat``; fairseq 0.12 still reads ``np.compat.long`` in its
TokenBlockDataset (the ``denoising`` and ``language_modeling`` tasks with
--sample-break-mode eos) and in LanguagePairDataset's length buckets. ``long`` there meant
numpy's 64-bit integer, so restore exactly that name and nothing else.
"""

import types

import numpy as np

if not hasattr(np, "compat"):
    np.compat = types.SimpleNamespace(long=np.int64)
