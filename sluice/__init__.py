"""Composition root: the `sluice` CLI wires schemas, broker, workers and ingress together.

This is the only package allowed to import both `ingress` and `workers`; keep it thin.
"""
