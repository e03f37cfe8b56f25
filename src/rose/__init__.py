"""rose: preference-guided training data selection (ROSE, Wu et al. 2025) for causal LMs."""

__version__ = "0.1.0"
