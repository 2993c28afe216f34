"""Tests of :mod:`userlm_env.metrics`."""
