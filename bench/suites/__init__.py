"""Suites: YAML specs, their checks, the run matrix, and the executors that run it."""
