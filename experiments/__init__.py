"""Hydra entry points: simulate, score, report, intrinsic, perplexity, train."""
