"""Benchmarks behind ``ctxproto bench``: one module each, printing JSON."""
