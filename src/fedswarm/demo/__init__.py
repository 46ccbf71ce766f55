"""`fedswarm demo`: a whole paid training job on a local devnet (see :mod:`.run`)."""

from fedswarm.demo.run import DEFAULT_PRICE, FAULTS, DemoError, bundled_dataset, run_demo

__all__ = ["DEFAULT_PRICE", "FAULTS", "DemoError", "bundled_dataset", "run_demo"]
