from .elbo import ELBOCriterion  # noqa: F401
