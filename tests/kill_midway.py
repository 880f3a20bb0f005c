"""Run a preprocess script and SIGKILL it half-way through writing its N-th Parquet file (kill-and-rerun tests).

    python tests/kill_midway.py N preprocess/text_pass.py --config ... --key value ...

Every output file of the passes (sidecars, embeddings files) is written with ``pyarrow.parquet.write_table``
into a temporary sibling; the N-th call writes half of its bytes, flushes them to disk and kills the
process with SIGKILL, as a crash or an OOM kill would, leaving a partial temporary file behind.
"""

from __future__ import annotations

import io
import os
import runpy
import signal
import sys

import pyarrow.parquet as pq


def main() -> None:
    """Patch ``pq.write_table`` to die on its N-th call, then run the script as ``__main__``."""
    target, script, args = int(sys.argv[1]), sys.argv[2], sys.argv[3:]
    real_write, calls = pq.write_table, [0]

    def write_then_die(table, where, *a, **kw):
        calls[0] += 1
        if calls[0] < target or not hasattr(where, "write"):
            return real_write(table, where, *a, **kw)
        buffer = io.BytesIO()
        real_write(table, buffer, *a, **kw)
        data = buffer.getvalue()
        where.write(data[: len(data) // 2])
        where.flush()
        os.fsync(where.fileno())
        os.kill(os.getpid(), signal.SIGKILL)

    pq.write_table = write_then_die
    sys.argv = [script, *args]
    runpy.run_path(script, run_name="__main__")


if __name__ == "__main__":
    main()
