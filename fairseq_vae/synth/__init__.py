"""The shipped corpus's grammar and its recogniser."""
