"""How well the orchestration scales: the driver's dispatcher, the actor pool and the encode tasks, over 1 to 64
actors spread on several simulated Ray nodes. It measures orchestration only, NOT rendering.

    python bench/scaling.py OUT.json [--actors 1,2,4,8,16,32,64] [--step-seconds 2] [--rows-per-actor 8]
                                     [--nodes 4] [--cpus-per-gpu 4] [--model tiny-animatediff] [--keep DIR]

A `ray.cluster_utils.Cluster` of a head that runs no actor (0 CPUs, 0 GPUs) and `--nodes` worker nodes, each
declaring logical GPUs (no real GPU is used), so the run places its actors exactly as on a GPU cluster: one
actor per GPU, spread over the nodes. Every row goes through `renderer.run.run` as in a real run: a real
Parquet table, real RenderRequests, the real Dispatcher over the real ReplicaPool, real encode tasks writing real
(tiny) mp4 files, a metadata record per row and the progress line. Only the actor is a stand-in: instead of
loading a pipeline its render sleeps `--step-seconds` (the fixed, known "GPU" time) and returns the row's
frames as a flat array; it imports neither torch nor diffusers, so 64 of them fit in memory.

Rows are 2 frames of 16x16, `--rows-per-actor` per actor. Each actor count gets its own run; actors start and
load before the clock starts, which runs from the first render's start to the run's return (the last record
written). Ideal throughput is actors / step; efficiency = throughput(N) / (N x throughput(1)), so N=1 is 1.0
by definition and its own overhead is shown as `vs_ideal`. Also recorded: the driver's CPU seconds in that
window (its own process, all threads), the whole machine's CPU use, how busy the actors were and where their
idle time went (ramp-up, gaps between renders, tail: see lost_time), their memory.
Prints a table and writes JSON. On a small machine every process of every simulated node shares its cores:
read `machine_cpu` before blaming the driver.
"""
import argparse
import importlib
import json
import math
import os
import resource
import socket
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import psutil
import pyarrow as pa
import pyarrow.parquet as pq
import ray

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from renderer.run import RunConfig, run  # noqa: E402
from renderer.testing.ports import node_ports  # noqa: E402

FRAMES, SIZE = 2, 16  # per row: tiny, so encoding stays a small share of the machine


def fixed_time_actor(step_seconds: float, log_path: str):
    """The stand-in for RenderActor (same constructor, ready() and render()): render sleeps `step_seconds`
    and appends one line to `log_path` (when it ran, and what the process holds in memory)."""

    @ray.remote
    class FixedTimeActor:
        def __init__(self, model: str, device: str, threads: int, load_options):
            # a RenderActor has imported it loading its model, so its first request unpickles at once
            importlib.import_module("renderer.request")
            self.name = f"{socket.gethostname()}:{os.getpid()}"

        def ready(self) -> str:
            return ray.get_runtime_context().get_node_id()

        @ray.method(num_returns=2)
        def render(self, request):
            start = time.time()
            time.sleep(step_seconds)
            frames = np.full((request.num_frames, request.height, request.width, 3), 128, np.uint8)
            end = time.time()
            with open(log_path, "a") as log:  # one short append per render: atomic across processes
                log.write(json.dumps({"start": start, "end": end, "actor": self.name, "torch": "torch" in sys.modules,
                                      "rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}) + "\n")
            return frames, {"seconds": end - start, "gpu": "stand-in", "actor": self.name, "recoveries": []}

    return FixedTimeActor


class Sampler:
    """(time, this process's CPU seconds, the machine's busy and total CPU seconds) every `every` seconds, so
    the CPU spent inside the timed window is known once the window is."""

    def __init__(self, every: float = 0.1):
        self.every, self.samples, self._stop = every, [], threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self._sample()

    def _loop(self):
        while not self._stop.is_set():
            self._sample()
            self._stop.wait(self.every)

    def _sample(self):
        cpu = psutil.cpu_times()
        self.samples.append((time.time(), time.process_time(), sum(cpu) - cpu.idle - cpu.iowait, sum(cpu)))

    def spent(self, start: float, end: float) -> tuple[float, float]:
        """(driver CPU seconds, the machine's busy share of all its cores) between `start` and `end`."""
        first = max((s for s in self.samples if s[0] <= start), default=self.samples[0])
        last = min((s for s in self.samples if s[0] >= end), default=self.samples[-1])
        return last[1] - first[1], (last[2] - first[2]) / max(last[3] - first[3], 1e-9)


def start_cluster(nodes: int, slots: int, cpus_per_gpu: int):
    """A head with nothing to offer actors and `nodes` nodes of `slots` logical GPUs and `cpus_per_gpu` logical
    CPUs per GPU; the driver (this process) joins it. Each actor takes one CPU. Declare the CPUs a GPU node has:
    Ray keeps idle workers only up to a node's CPUs not taken, so on a node declaring one CPU per GPU every
    encode worker is killed once idle for a second and the next encode starts a new Python process."""
    from ray.cluster_utils import Cluster

    cluster = Cluster(initialize_head=True, head_node_args=dict(num_cpus=0, num_gpus=0, include_dashboard=False,
                                                                **node_ports()))
    for _ in range(nodes):
        cluster.add_node(num_cpus=slots * cpus_per_gpu, num_gpus=slots, **node_ports())
    cluster.wait_for_nodes()
    ray.init(address=cluster.address, logging_level="WARNING")
    return cluster


def write_rows(path: Path, count: int, model: str) -> Path:
    pq.write_table(pa.Table.from_pylist([dict(id=f"row{i:05d}", model=model, prompt=f"scene {i}", num_frames=FRAMES,
                                              height=SIZE, width=SIZE) for i in range(count)]), path)
    return path


def measure(actors: int, args, scratch: Path) -> dict:
    """One run of `actors` x `--rows-per-actor` rows on `actors` stand-in actors, and what it cost."""
    rows = actors * args.rows_per_actor
    table = write_rows(scratch / f"rows-{actors}.parquet", rows, args.model)
    out, log = scratch / f"out-{actors}", scratch / f"renders-{actors}.jsonl"
    config = RunConfig(tables=(str(table),), out=out, actors=actors, resume=False)
    with Sampler() as sampler:
        summary = run(config, actor_class=fixed_time_actor(args.step_seconds, str(log)))
        ended = time.time()
    renders = [json.loads(line) for line in log.read_text().splitlines()]
    started = min(r["start"] for r in renders)
    wall = ended - started
    driver_cpu, machine_cpu = sampler.spent(started, ended)
    records = pq.read_table(out / "metadata.parquet", columns=["status"]).column("status").to_pylist()
    return {"actors": actors, "rows": rows, "renders": len(renders), "ok": records.count("ok"),
            "videos": len(list((out / "videos").glob("*.mp4"))), "exit_code": summary.exit_code,
            "actors_used": len({r["actor"] for r in renders}), "wall_s": wall,
            "throughput_rows_s": rows / wall, "ideal_rows_s": actors / args.step_seconds,
            "vs_ideal": rows / wall / (actors / args.step_seconds),
            "actor_busy": sum(r["end"] - r["start"] for r in renders) / (actors * wall), **lost_time(renders, ended),
            "driver_cpu_s": driver_cpu, "driver_cpu_ms_per_row": 1000 * driver_cpu / rows, "machine_cpu": machine_cpu,
            "actor_rss_mb": max(r["rss_mb"] for r in renders), "torch_in_actors": any(r["torch"] for r in renders)}


def lost_time(renders: list[dict], ended: float) -> dict:
    """Where the wall time beyond the renders went: `ramp_s` until the last actor began its first render (the
    first tasks' submission), `gap_ms` idle between two renders of one actor on average (the steady state),
    `tail_s` from the last render's end to the run's return (its encode, the last record, the metadata)."""
    by_actor: dict[str, list[dict]] = {}
    for render in sorted(renders, key=lambda r: r["start"]):
        by_actor.setdefault(render["actor"], []).append(render)
    gaps = [b["start"] - a["end"] for runs in by_actor.values() for a, b in zip(runs, runs[1:], strict=False)]
    return {"ramp_s": max(runs[0]["start"] for runs in by_actor.values()) - min(r["start"] for r in renders),
            "gap_ms": 1000 * sum(gaps) / max(len(gaps), 1), "tail_s": ended - max(r["end"] for r in renders)}


def warm_up(args, scratch: Path, actors: int) -> None:
    """One untimed run of `actors` actors, a row each, so every node has as many encode workers started and
    their modules imported as the largest run asks for at once: a long run has them after its first rows."""
    table = write_rows(scratch / "warm.parquet", actors, args.model)
    run(RunConfig(tables=(str(table),), out=scratch / "warm", actors=actors),
        actor_class=fixed_time_actor(0.0, str(scratch / "warm.jsonl")))


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out", type=Path)
    parser.add_argument("--actors", default="1,2,4,8,16,32,64")
    parser.add_argument("--step-seconds", type=float, default=2.0)
    parser.add_argument("--rows-per-actor", type=int, default=8)
    parser.add_argument("--nodes", type=int, default=4)
    parser.add_argument("--cpus-per-gpu", type=int, default=4, help="logical CPUs each simulated node declares per "
                        "GPU (GPU servers have 8-24; the GPU machine of ../shared/GPU.md has 16)")
    parser.add_argument("--model", default="tiny-animatediff", help="a preset name for the requests; never loaded")
    parser.add_argument("--keep", type=Path, help="write the tables, videos and metadata here (default: a temporary "
                                                  "folder, removed at the end)")
    args = parser.parse_args()
    counts = [int(n) for n in args.actors.split(",")]

    load_before = os.getloadavg()
    cluster = start_cluster(args.nodes, math.ceil(max(counts) / args.nodes), args.cpus_per_gpu)
    try:
        with tempfile.TemporaryDirectory() as temporary:
            scratch = args.keep or Path(temporary)
            scratch.mkdir(parents=True, exist_ok=True)
            warm_up(args, scratch, max(counts))
            results = [measure(n, args, scratch) for n in counts]
    finally:
        ray.shutdown()
        cluster.shutdown()
    for r in results:
        r["efficiency"] = r["throughput_rows_s"] / (r["actors"] * results[0]["throughput_rows_s"]
                                                    / results[0]["actors"])
    report = {"measures": "orchestration only (dispatcher, actor pool, encode tasks, metadata), not rendering: "
                          "each render is a fixed sleep in a stand-in actor",
              "command": " ".join([os.path.basename(sys.executable), *sys.argv]),
              "step_seconds": args.step_seconds, "rows_per_actor": args.rows_per_actor, "nodes": args.nodes,
              "cpus_per_gpu": args.cpus_per_gpu,
              "frames_per_row": FRAMES, "frame_size": SIZE, "cpu_cores": os.cpu_count(),
              "load_average_before": load_before, "load_average_after": os.getloadavg(), "results": results}
    print_table(report)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2))


def print_table(report: dict) -> None:
    print(f"orchestration only, not rendering: each render sleeps {report['step_seconds']} s in a stand-in actor; "
          f"{report['rows_per_actor']} rows per actor, {report['nodes']} nodes, {report['cpu_cores']} CPU cores, "
          f"load average before {report['load_average_before'][0]:.1f}")
    print(f"{'actors':>6} {'rows':>5} {'ok':>5} {'wall s':>7} {'rows/s':>7} {'ideal':>6} {'effic.':>6} "
          f"{'vs ideal':>8} {'busy':>5} {'ramp s':>6} {'gap ms':>6} {'tail s':>6} {'driver cpu s':>12} {'ms/row':>6} "
          f"{'machine cpu':>11} {'actor MB':>8}")
    for r in report["results"]:
        print(f"{r['actors']:>6} {r['rows']:>5} {r['ok']:>5} {r['wall_s']:>7.2f} {r['throughput_rows_s']:>7.2f} "
              f"{r['ideal_rows_s']:>6.1f} {r['efficiency']:>6.3f} {r['vs_ideal']:>8.3f} {r['actor_busy']:>5.2f} "
              f"{r['ramp_s']:>6.2f} {r['gap_ms']:>6.0f} {r['tail_s']:>6.2f} {r['driver_cpu_s']:>12.2f} "
              f"{r['driver_cpu_ms_per_row']:>6.1f} {r['machine_cpu']:>10.0%} "
              f"{r['actor_rss_mb']:>8.0f}")


if __name__ == "__main__":
    main()
