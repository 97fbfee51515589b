"""One contender run in its own process: ``python -m benchmarks.child SPEC_JSON RESULT_FILE``.

Runs ``spec["runner"]`` (``module:function``) with a :class:`~benchmarks.runners.tally.Tally`,
then writes one JSON object to RESULT_FILE: the phases the tally timed, what the runner reported
about itself, and ``error`` when it failed. Standard library only at the top: this module runs
inside the peers' environments too.
"""

from __future__ import annotations

import importlib
import json
import sys
import time
import traceback
from pathlib import Path
from typing import Any

from benchmarks.runners.tally import RunSpec, Tally


def main(argv: list[str]) -> int:
    spec_data: dict[str, Any] = json.loads(argv[0])
    result_file = Path(argv[1])
    spec = RunSpec(
        bootstrap=spec_data["bootstrap"],
        topic=spec_data["topic"],
        group=spec_data["group"],
        messages=int(spec_data["messages"]),
        options=dict(spec_data.get("options", {})),
        cap_seconds=spec_data.get("cap_seconds"),
    )
    tally = Tally(spec.messages, spec.cap_seconds)
    result: dict[str, Any] = {"runner": spec_data["runner"]}
    try:
        module_name, _, function = spec_data["runner"].partition(":")
        runner = getattr(importlib.import_module(module_name), function)
        result.update(runner(spec, tally) or {})
    except BaseException as error:  # reported to the parent, which marks the run failed
        result["error"] = f"{type(error).__name__}: {error}"
        result["traceback"] = traceback.format_exc(limit=8)
    finished = time.perf_counter()
    result.update(tally.phases())
    result["handled"] = tally.count
    result["timed"] = tally.timed
    result["capped"] = tally.capped
    result["close_s"] = None if tally.last_at is None else finished - tally.last_at
    if "error" not in result and not tally.done:
        result["error"] = f"stopped after {tally.count} of {spec.messages} messages"
    result_file.write_text(json.dumps(result))
    return 0 if "error" not in result else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
