"""The machine's yardsticks, each in a fresh process: ``python -m bench.reference SPEC_JSON``.

- ``read``: pandas reads the export in the sync's chunks and does nothing else. A night's wall
  divided by this is what a user pays over reading the export at all, and holds from machine
  to machine where absolute rows/s do not.
- ``cpu``: a fixed pure-Python loop, so absolute figures from two machines can be compared.

Prints one ``BENCH-RESULT`` JSON line, as ``bench.worker`` does.
"""

from __future__ import annotations

import json
import sqlite3
import sys
import time
from typing import Any

import pandas as pd

#: Iterations of the calibration loop: about a second on the published machine.
CPU_LOOP = 20_000_000


def read(export: str, chunk_size: int) -> dict[str, Any]:
    """Read every chunk of the export's table into frames; wall seconds and rows."""
    connection = sqlite3.connect(export)
    started = time.perf_counter()
    rows = 0
    for frame in pd.read_sql("SELECT * FROM crm_contacts", connection, chunksize=chunk_size):
        rows += len(frame)
    wall = time.perf_counter() - started
    connection.close()
    return {"wall_s": wall, "rows": rows}


def cpu() -> dict[str, Any]:
    """Seconds of a fixed integer loop: the machine's single-core speed for Python."""
    started = time.perf_counter()
    total = 0
    for i in range(CPU_LOOP):
        total += i & 7
    return {"wall_s": time.perf_counter() - started, "iterations": CPU_LOOP, "check": total}


def main() -> None:
    spec = json.loads(sys.argv[1])
    result = cpu() if spec["kind"] == "cpu" else read(spec["export"], int(spec.get("chunk_size", 20_000)))
    sys.stdout.write("BENCH-RESULT " + json.dumps(result) + "\n")


if __name__ == "__main__":
    main()
