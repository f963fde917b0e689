"""Text plumbing: segmentation, detokenising, input checks, the Hugging Face tokenizer."""
