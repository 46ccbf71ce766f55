"""fedswarm: a peer-to-peer marketplace for federated training."""

__version__ = "0.1.0"
__all__ = ["__version__"]
