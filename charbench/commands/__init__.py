"""Spine commands (env, report, runs, serve, compare): one module each, loaded lazily by ``charbench.cli``."""
