"""``python -m consumer``: the ``consumer`` command (:func:`consumer.cli.main`), exiting
with its code. Nothing else belongs here."""

import sys

from consumer.cli import main

sys.exit(main())
