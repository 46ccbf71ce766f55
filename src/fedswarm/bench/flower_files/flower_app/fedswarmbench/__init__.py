"""Flower app mirroring the fedswarm benchmark workload."""
