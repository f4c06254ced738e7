"""Runnable examples of compartments; ``python -m examples.<name>`` from the repo root."""
