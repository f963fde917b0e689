"""fairseq-train options that pretrain a BART for bart_vae to fine-tune: BART's text infilling
(Lewis et al. 2020) with fairseq's own `denoising` task, at the VAE's dimensions so that every
pretrained weight has a home in the VAE (`--finetune-from-model`). The demo and
benchmarks/pretrained.py both use it.
"""

from typing import List


def denoising_pretraining_args(
    dim: int, ffn: int, layers: int, heads: int, positions: int = 256
) -> List[str]:
    """`--task denoising --arch bart_base` at these dimensions (encoder and decoder alike), with
    BART's infilling noise for one sentence a line: spans of Poisson(3.5) length over 30% of the
    tokens, each span replaced by one <mask> (10% of them by a random word instead), no sentence
    permutation, rotation or insertion."""
    return [
        "--task",
        "denoising",
        "--arch",
        "bart_base",
        "--criterion",
        "cross_entropy",
        "--encoder-embed-dim",
        str(dim),
        "--decoder-embed-dim",
        str(dim),
        "--encoder-ffn-embed-dim",
        str(ffn),
        "--decoder-ffn-embed-dim",
        str(ffn),
        "--encoder-layers",
        str(layers),
        "--decoder-layers",
        str(layers),
        "--encoder-attention-heads",
        str(heads),
        "--decoder-attention-heads",
        str(heads),
        "--max-source-positions",
        str(positions),
        "--max-target-positions",
        str(positions),
        "--mask",
        "0.3",
        "--mask-random",
        "0.1",
        "--mask-length",
        "span-poisson",
        "--poisson-lambda",
        "3.5",
        "--replace-length",
        "1",
        "--permute-sentences",
        "0",
        "--rotate",
        "0",
        "--insert",
        "0",
        "--tokens-per-sample",
        str(positions),
        "--sample-break-mode",
        "eos",
    ]
