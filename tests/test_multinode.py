"""Several Ray nodes on this machine (ray.cluster_utils.Cluster): actors spread over them, and a node
removed mid-run costs nothing but time."""
from __future__ import annotations

import subprocess
import sys
import time

import pytest

from conftest import ROOT, write_table
from invariants import check_invariants
from renderer.paths import video_relpath
from renderer.testing.ports import node_ports


@pytest.fixture
def cluster():
    """A head that renders nothing and three worker nodes of one CPU each: one actor slot per node, as a
    node with one GPU offers one."""
    from ray.cluster_utils import Cluster

    cluster = Cluster(initialize_head=True, head_node_args=dict(num_cpus=0, include_dashboard=False, **node_ports()))
    workers = [cluster.add_node(num_cpus=1, **node_ports()) for _ in range(3)]
    yield cluster, workers
    cluster.shutdown()


def test_a_node_removed_mid_run_has_its_rows_rendered_elsewhere(cluster, tmp_path):
    cluster, workers = cluster
    rows = [dict(id=f"r{i:02d}", prompt=f"scene {i}", num_frames=8, num_inference_steps=3) for i in range(30)]
    out = tmp_path / "out"
    driver = subprocess.Popen(
        [sys.executable, "-m", "jobs.cli", "run", str(write_table(tmp_path / "t.parquet", rows)), "--out", str(out),
         "--address", cluster.address, "--model", "tiny-animatediff", "--actors", "3"],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    # the pool hands the first rows out in turn, so r00, r01 and r02 are each actor's first: once their videos
    # are written, and their encodes have had a moment to report, every node has rendered a row
    first = [out / video_relpath(f"r{i:02d}") for i in range(3)]
    deadline = time.monotonic() + 240
    while not all(path.exists() for path in first):
        assert driver.poll() is None and time.monotonic() < deadline, driver.communicate()[0]
        time.sleep(0.1)
    time.sleep(0.3)
    cluster.remove_node(workers[0])  # takes its actor, its queued rows and its objects with it
    output, _ = driver.communicate(timeout=300)
    assert driver.returncode == 0, output
    records = check_invariants(out, [row["id"] for row in rows], driver.returncode)
    assert all(r["status"] == "ok" for r in records.values())
    assert len({r["actor"] for r in records.values()}) == 3  # the rows were spread over the three nodes' actors
    assert any(r["attempts"] == 2 for r in records.values()), output  # the row its actor was rendering, again
    assert "done: 30 ok" in output


def test_one_cpu_actor_on_a_cluster_of_small_nodes_asks_for_no_more_cpus_than_a_node_has(cluster, tmp_path):
    cluster, _ = cluster  # three CPUs in all, one per node: an actor asking for all three would never start
    rows = [dict(id=f"r{i}", prompt=f"scene {i}", num_frames=6, num_inference_steps=2) for i in range(2)]
    out = tmp_path / "out"
    result = subprocess.run(
        [sys.executable, "-m", "jobs.cli", "run", str(write_table(tmp_path / "t.parquet", rows)), "--out", str(out),
         "--address", cluster.address, "--model", "tiny-animatediff"],
        cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    check_invariants(out, [row["id"] for row in rows], result.returncode)
