"""gmmsession: Gaussian-mixture-model refinement of cryo-EM single-particle data."""

__version__ = "0.1.0"
