from setuptools import find_packages, setup

setup(
    name="fairseq_vae",
    version="0.1.0",
    description="A fairseq --user-dir plugin that turns BART into a sentence-level text VAE",
    packages=find_packages(include=["fairseq_vae", "fairseq_vae.*"]),
    python_requires=">=3.9",
    # torch 2.6: torch.load's weights_only and add_safe_globals as
    # fairseq_vae/shims/checkpoint_safety.py uses them (weights_only passed explicitly always
    # wins over TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD)
    install_requires=[
        "fairseq-fixed",
        "torch>=2.6",
        "sentencepiece",
        "sacrebleu",
        "scikit-learn",
        "matplotlib",
        "safetensors",
        "zuko",
    ],
    extras_require={"test": ["pytest", "transformers", "tokenizers"]},
    entry_points={
        "console_scripts": [
            "fairseq-vae-eval = fairseq_vae.cli.evaluate:cli_main",
            "fairseq-vae-import-hf = fairseq_vae.cli.import_hf:cli_main",
            "fairseq-vae-fit-prior = fairseq_vae.cli.fit_prior:cli_main",
        ]
    },
)
