"""Tests of the user simulators and their guardrails."""
