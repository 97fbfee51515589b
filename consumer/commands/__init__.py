"""Subcommands of the ``consumer`` CLI other than ``run``: lag, replay, dlq redrive."""
