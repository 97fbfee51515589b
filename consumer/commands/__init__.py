"""Subcommands of the ``consumer`` CLI other than ``run``: lag, replay, dlq redrive.

Each runs once in the CLI's process and returns an exit code (0 ok, 1 failed, 2 invalid
configuration), printing what went wrong for the operator instead of raising. They use Kafka
through :mod:`consumer.kafka` and open the store themselves; they never build a loop.
"""
