"""checkpoint-consumer: a Kafka consumer that resumes from its last checkpoint.

What others build on: :mod:`consumer.message` (what a handler receives), :mod:`consumer.testing`
(in-memory stand-ins), the ``consumer`` command (:mod:`consumer.cli`) and the logger names.
The layers under them, top to bottom, are the import-linter contract in ``pyproject.toml``.
This module holds ``__version__`` only: importing the package imports nothing else.
"""

__version__ = "0.1.0"
