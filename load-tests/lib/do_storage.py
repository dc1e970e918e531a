#!/usr/bin/env python3
"""Counts the Durable Objects a local run left behind and their storage (scripts/compare.sh,
after it stopped the gateway).

    do_storage.py PERSIST_DIR

PERSIST_DIR is the `--persist-to` directory `wrangler dev` ran with. Its
`v3/do/<script>-<Class>/` holds one SQLite file per object the run instantiated,
`<hex id>.sqlite`, whether the object wrote storage or not (the baseline's objects, which never
do, have one too): table `_cf_KV` is its key-value storage, `__miniflare_do_name` its name, any
table not named `_cf_*` / `__miniflare_*` its own SQL. `metadata.sqlite` beside them holds the
class's alarms (`_cf_ALARM`). Prints one JSON object:

    {"classes": {"<script>-<Class>": {"objects": N, "withStorage": N, "kvRows": N, "sqlRows": N,
                                        "rows": N, "alarms": N, "unreadable": N}}, "total": {...}}

`objects` counts object files, `withStorage` those holding at least one row, `rows` =
`kvRows` + `sqlRows`, `alarms` the alarms still set when the gateway stopped.
Files are opened read-only; one that cannot be read is counted in `unreadable`. Prints
`null` when there is no `v3/do` directory. Standard library only.
"""

from __future__ import annotations

import json
import sqlite3
import sys
from pathlib import Path

KEYS = ("objects", "withStorage", "kvRows", "sqlRows", "rows", "alarms", "unreadable")


def rows_of(path: Path) -> tuple[int, int]:
    """(key-value rows, rows of the object's own SQL tables) of one object file."""
    con = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        tables = [r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type = 'table'")]
        kv = sql = 0
        for t in tables:
            n = con.execute(f'SELECT count(*) FROM "{t}"').fetchone()[0]
            if t == "_cf_KV":
                kv += n
            elif not t.startswith(("_cf_", "__miniflare_", "sqlite_")):
                sql += n
        return kv, sql
    finally:
        con.close()


def alarms_of(path: Path) -> int:
    con = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        return con.execute("SELECT count(*) FROM _cf_ALARM").fetchone()[0]
    except sqlite3.Error:
        return 0
    finally:
        con.close()


def count(persist_dir: Path) -> dict | None:
    root = persist_dir / "v3" / "do"
    if not root.is_dir():
        return None
    classes: dict[str, dict[str, int]] = {}
    for cls in sorted(p for p in root.iterdir() if p.is_dir()):
        c = dict.fromkeys(KEYS, 0)
        for f in sorted(cls.glob("*.sqlite")):
            if f.name == "metadata.sqlite":
                c["alarms"] += alarms_of(f)
                continue
            c["objects"] += 1
            try:
                kv, sql = rows_of(f)
            except sqlite3.Error:
                c["unreadable"] += 1
                continue
            c["kvRows"] += kv
            c["sqlRows"] += sql
            c["rows"] += kv + sql
            c["withStorage"] += 1 if kv + sql else 0
        classes[cls.name] = c
    total = {k: sum(c[k] for c in classes.values()) for k in KEYS}
    return {"classes": classes, "total": total}


def main() -> int:
    if len(sys.argv) != 2:
        print(__doc__, file=sys.stderr)
        return 2
    print(json.dumps(count(Path(sys.argv[1]))))
    return 0


if __name__ == "__main__":
    sys.exit(main())
