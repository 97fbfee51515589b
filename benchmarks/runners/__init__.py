"""What runs inside a contender's child process: one module per contender family.

These modules import only the standard library at the top, so every benchmark environment (the
project's venv and each peer's) can load them; each runner imports its own client inside
``run``.
"""
