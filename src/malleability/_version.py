"""The package version (one place: ``malleability.__version__`` and the run records)."""

__version__ = "0.1.0"
