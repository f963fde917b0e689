"""The console commands: fairseq-vae-eval, -fit-prior, -import-hf."""
