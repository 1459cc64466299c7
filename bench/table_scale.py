"""What a big table costs the driver, without Ray or rendering: planning the rows, the metadata records and their
flushes, and the resume check of a second run. A million-row table must not stall the dispatcher loop.

    python bench/table_scale.py OUT.json [--rows 10000,100000,1000000]

For each size, in a scratch folder: a real Parquet table of text rows; `check_rows` (read and validate);
`request_record` + `MetadataStore.add` for every row as a run makes them, with the store's own flush spacing
(flush time is inside `records_s`); the final ordered flush; then, as a second run would, a new store reading that
file and `carry` for every row with half of the videos in place. `flush_s` is one flush with 1% of the rows new
(the steady state); `rewrite_s` what that flush costs when every record is converted again, the way a store
holding records as dicts must. `run_peak_mb` is the process's peak memory after the first run's part. Prints a
table and writes JSON; each size is measured in its own process.
"""
import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from renderer.metadata import FIELDS, MetadataStore, request_record, schema  # noqa: E402
from renderer.run import check_rows  # noqa: E402


def timed(work):
    start = time.perf_counter()
    result = work()
    return time.perf_counter() - start, result


def measure(rows: int, scratch: Path) -> dict:
    table = scratch / "rows.parquet"
    pq.write_table(pa.Table.from_pylist([dict(id=f"row{i:07d}", model="tiny-animatediff", prompt=f"scene {i}, a cat",
                                              num_frames=16) for i in range(rows)]), table)
    plan_s, plan = timed(lambda: check_rows([str(table)], None))
    out = scratch / "out"
    (out / "videos").mkdir(parents=True)
    for request in plan.requests[::2]:
        (out / request.video_path).touch()
    info = {"seconds": 4.2, "gpu": "stand-in", "actor": "host:1"}
    store = MetadataStore(out)
    records_s, _ = timed(lambda: [store.add(request_record(r, "ok", None, 1, info)) for r in plan.requests])
    final_s, _ = timed(lambda: store.flush(order=plan.ids))
    run_peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # what a run's driver holds, at most

    new = max(1, rows // 100)  # a steady-state flush: 1% of the rows new since the last one
    (scratch / "steady").mkdir()
    steady = MetadataStore(scratch / "steady", resume=False, flush_every=float("inf"))
    for request in plan.requests[new:]:
        steady.add(request_record(request, "ok", None, 1, info))
    steady.flush()
    for request in plan.requests[:new]:
        steady.add(request_record(request, "ok", None, 1, info))
    flush_s, _ = timed(steady.flush)
    every = [request_record(request, "ok", None, 1, info) for request in plan.requests]
    rewrite_s, _ = timed(lambda: pq.write_table(pa.Table.from_pylist(
        [{name: r.get(name) for name in FIELDS} for r in every], schema=schema()), scratch / "rewrite.parquet"))

    again = check_rows([str(table)], None)  # a second run: fresh requests, nothing cached
    read_s, resumed = timed(lambda: MetadataStore(out))
    carry_s, carried = timed(lambda: sum(resumed.carry(request) for request in again.requests))
    return {"rows": rows, "plan_s": plan_s, "records_s": records_s, "record_us": 1e6 * records_s / rows,
            "final_flush_s": final_s, "flush_s": flush_s, "rewrite_s": rewrite_s, "read_previous_s": read_s,
            "carry_s": carry_s, "carried": carried, "run_peak_mb": run_peak_mb}


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out", type=Path)
    parser.add_argument("--rows", default="10000,100000,1000000")
    parser.add_argument("--one", type=int, help=argparse.SUPPRESS)  # the child process measuring one size
    args = parser.parse_args()
    if args.one:
        with tempfile.TemporaryDirectory() as scratch:
            print(json.dumps(measure(args.one, Path(scratch))))
        return
    results = [json.loads(subprocess.run([sys.executable, __file__, os.devnull, "--one", n], check=True,
                                         capture_output=True, text=True).stdout) for n in args.rows.split(",")]
    report = {"measures": "the driver's own per-row work: no Ray, no rendering",
              "command": " ".join([os.path.basename(sys.executable), *sys.argv]), "cpu_cores": os.cpu_count(),
              "results": results}
    print(f"{'rows':>8} {'plan s':>7} {'records s':>9} {'us/row':>6} {'flush s':>7} {'rewrite s':>9} "
          f"{'final s':>7} {'read s':>6} {'carry s':>7} {'carried':>8} {'run peak MB':>11}")
    for r in results:
        print(f"{r['rows']:>8} {r['plan_s']:>7.2f} {r['records_s']:>9.2f} {r['record_us']:>6.1f} {r['flush_s']:>7.2f} "
              f"{r['rewrite_s']:>9.2f} {r['final_flush_s']:>7.2f} {r['read_previous_s']:>6.2f} {r['carry_s']:>7.2f} "
              f"{r['carried']:>8} {r['run_peak_mb']:>11.0f}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
