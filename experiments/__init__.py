"""Hydra entry points: simulate, score, report, intrinsic, perplexity, train."""

import experiments.sweep_names  # noqa: F401  (registers the sweep_name resolver)
