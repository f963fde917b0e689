"""Process-wide changes to fairseq at import: safe loading, --help, numpy 2, quiet logs."""
