"""Tests of the verifiable rewards (math, code) and the sandbox."""
