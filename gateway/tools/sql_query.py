# The sql_query tool, run by the gateway in the sandbox: one read-only
# query on an uploaded SQLite file. Its arguments are in
# bulkhead-args.json: {"database": <name in /work>, "query": ...,
# "max_rows": N, "timeout_s": S}. The database is opened read-only and
# immutable, writes and ATTACH are refused by an authorizer, and a progress
# handler stops the query at its time limit. Prints JSON: columns, rows,
# and whether the rows were cut.
import json
import sqlite3
import sys
import time

args = json.load(open("bulkhead-args.json"))
max_rows, timeout = int(args.get("max_rows") or 200), float(args.get("timeout_s") or 5)
READS = {sqlite3.SQLITE_SELECT, sqlite3.SQLITE_READ, sqlite3.SQLITE_FUNCTION,
         sqlite3.SQLITE_PRAGMA, getattr(sqlite3, "SQLITE_RECURSIVE", 33)}
WRITING_PRAGMAS = {"journal_mode", "wal_checkpoint", "writable_schema", "optimize",
                   "incremental_vacuum", "shrink_memory"}


def authorize(action, arg1, arg2, db, trigger):
    if action == sqlite3.SQLITE_PRAGMA and (arg1 or "").lower() in WRITING_PRAGMAS:
        return sqlite3.SQLITE_DENY
    return sqlite3.SQLITE_OK if action in READS else sqlite3.SQLITE_DENY


try:
    con = sqlite3.connect("file:%s?mode=ro&immutable=1" % args["database"], uri=True)
    con.execute("SELECT count(*) FROM sqlite_master").fetchone()
except sqlite3.DatabaseError as e:
    sys.exit("%s is not an SQLite database: %s" % (args["database"], e))
con.set_authorizer(authorize)
deadline = time.monotonic() + timeout
con.set_progress_handler(lambda: 1 if time.monotonic() > deadline else 0, 10000)
try:
    cur = con.execute(args["query"])
    rows = cur.fetchmany(max_rows + 1)
except sqlite3.OperationalError as e:
    if time.monotonic() > deadline:
        sys.exit("the query ran past its %g s limit" % timeout)
    sys.exit("the query failed: %s" % e)
except (sqlite3.DatabaseError, sqlite3.Warning) as e:
    sys.exit("the query failed: %s" % e)
columns = [d[0] for d in cur.description or []]
print(json.dumps({"columns": columns, "rows": [list(r) for r in rows[:max_rows]],
                  "truncated": len(rows) > max_rows}, default=str, ensure_ascii=False))
