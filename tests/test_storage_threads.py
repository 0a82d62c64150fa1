"""Thread safety of the Tiled servers this package runs: concurrent writers and readers of the DuckDB table store.

Tiled shares one DuckDB connection between its worker threads (see ``espt_bluesky.storage.duckdb_guard``); without
the guard, a few threads appending and reading tables at once make requests fail (``No active transaction``,
appended rows lost) and the process crash in DuckDB.  The load runs in a child process so that a crash fails this
test instead of killing the test session.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

LOAD = textwrap.dedent("""
    import json, sys, threading
    import numpy as np, pyarrow as pa
    from espt_bluesky.storage import LocalCatalog

    cat = LocalCatalog.in_process(sys.argv[1])
    n_threads, n_tables, n_parts = 4, 3, 2
    errors, checked = [], []

    def work(i):
        client = cat.client()
        for k in range(n_tables):
            try:
                parts = [pa.table({"x": np.arange(5.0) + 100 * p + 1000 * k, "t": np.full(5, i)})
                         for p in range(n_parts)]
                node = client.create_appendable_table(parts[0].schema, key=f"w{i}_{k}")
                for p in parts:
                    node.append_partition(0, p)
                back = node.read()
                want = pa.concat_tables(parts).to_pandas()
                checked.append(bool(np.array_equal(back["x"].to_numpy(), want["x"].to_numpy())
                                    and np.array_equal(back["t"].to_numpy(), want["t"].to_numpy())))
            except Exception as exc:
                errors.append(f"{type(exc).__name__}: {exc}"[:300])

    threads = [threading.Thread(target=work, args=(i,)) for i in range(n_threads)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    cat.stop()
    print(json.dumps({"errors": errors, "checked": checked, "expected": n_threads * n_tables}))
""")


def test_concurrent_table_writers_and_readers_lose_nothing(tmp_path):
    proc = subprocess.run([sys.executable, "-X", "faulthandler", "-c", LOAD, str(tmp_path / "data")],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, (proc.returncode, proc.stderr[-3000:])  # -11: the server crashed in DuckDB
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["errors"] == [], out["errors"][:3]
    assert len(out["checked"]) == out["expected"] and all(out["checked"]), out
