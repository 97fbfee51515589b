"""Benchmarks: the framework side by side with a raw client loop and peer frameworks.

``python -m benchmarks`` (``make bench``) preloads a topic, runs every contender over it in its
own child process, draws the commit-interval curve and writes ``benchmarks/results/``.
See ``benchmarks/README.md``.
"""
