"""Shared fixtures: one real local Ray for the session, table writers, mp4 readers."""
from __future__ import annotations

import functools
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import psutil
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from renderer.testing.ports import listen_port

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "example.parquet"
# the bucket of the S3 test server (fixture `s3`)
BUCKET = "renders"


@pytest.fixture(scope="session")
def ray_session():
    """A real local Ray shared by the tests (4 logical CPUs so 3 CPU actors and encode tasks fit)."""
    import ray

    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    ray.init(address="local", num_cpus=4, include_dashboard=False, logging_level="WARNING")  # never another's Ray
    yield ray
    ray.shutdown()


@pytest.fixture
def inject(tmp_path, monkeypatch):
    """Set the faults of this test (see renderer/testing/faults.py): for the driver and, through runtime_env, its actors
    and encode tasks. The firings are logged to tmp_path/faults.jsonl."""
    def set_faults(*specs):
        monkeypatch.setenv("RENDER_FAULTS", json.dumps(list(specs)))
        monkeypatch.setenv("RENDER_FAULTS_LOG", str(tmp_path / "faults.jsonl"))
    return set_faults


@pytest.fixture
def image_file(tmp_path) -> Path:
    path = tmp_path / "cond.png"
    ramp = np.linspace(0, 255, 64, dtype=np.uint8)
    pixels = np.stack([np.tile(ramp, (64, 1)), np.tile(ramp[:, None], (1, 64)), np.full((64, 64), 90, np.uint8)], -1)
    Image.fromarray(pixels).save(path)
    return path


def write_table(path: Path, rows: list[dict], types: dict | None = None) -> Path:
    """Write rows as Parquet; columns are the union of keys, typed from `types` or inferred."""
    columns: list[str] = []
    for row in rows:
        columns += [k for k in row if k not in columns]
    types = types or {}
    arrays = {c: pa.array([r.get(c) for r in rows], type=types.get(c)) for c in columns}
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.table(arrays), path)
    return path


@pytest.fixture(scope="module")
def one_thread():
    """Torch on one thread for a module of tiny pipelines (`pytestmark = pytest.mark.usefixtures("one_thread")`):
    tiny models gain nothing from intra-op threads, and lose a lot to them on a busy shared CPU."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    """PSNR (dB) of uint8 frames `a` against `b`; infinite where they are equal."""
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return float("inf") if mse == 0 else float(10 * np.log10(255.0 ** 2 / mse))


def recorded_calls(monkeypatch, pipeline) -> list[dict]:
    """The keyword arguments of every call of the pipeline's class from now on (the calls still run)."""
    calls, pipeline_call = [], type(pipeline).__call__

    # wraps: the prompt encoders read the call's defaults from its signature
    @functools.wraps(pipeline_call)
    def recorded(self, **kwargs):
        calls.append(kwargs)
        return pipeline_call(self, **kwargs)
    monkeypatch.setattr(type(pipeline), "__call__", recorded)
    return calls


def plain_uint8(frames) -> np.ndarray:
    """A plain diffusers call's float frames as uint8, by diffusers' own numpy_to_pil conversion."""
    return (np.asarray(frames) * 255).round().astype(np.uint8)


def count(module) -> int:
    """Parameters of a module (meta-device modules too)."""
    return sum(p.numel() for p in module.parameters())


def read_metadata(out: Path) -> dict[str, dict]:
    return {r["id"]: r for r in pq.read_table(out / "metadata.parquet").to_pylist()}


def copy_example(tmp_path: Path) -> Path:
    """The bundled example table with its images, in a scratch folder."""
    folder = tmp_path / "example"
    shutil.copytree(EXAMPLE.parent, folder, ignore=shutil.ignore_patterns("*.py"))
    return folder / EXAMPLE.name


def own_ray_workers(title: str) -> list[int]:
    """The pids of this test session's own Ray workers whose title starts with `title` (Ray titles a busy worker
    after the method it executes, e.g. "ray::RenderActor.render"): they descend from this process, the workers of
    another Ray on the machine do not."""
    pids = []
    for process in psutil.Process().children(recursive=True):
        try:
            line = " ".join(process.cmdline())
        # gone meanwhile
        except psutil.Error:
            continue
        if line.startswith(title):
            pids.append(process.pid)
    return pids


# ---------------------------------------------------------------- an S3 test server

@pytest.fixture(scope="module")
def s3():
    """An S3 endpoint, the environment that points pyarrow at it (the standard AWS variables), and a boto3
    client to set up and inspect the bucket independently of the code under test."""
    import boto3
    from moto.server import ThreadedMotoServer

    from renderer import storage

    port = listen_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    env = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1",
           "AWS_REGION": "us-east-1", "AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}"}
    client = boto3.client("s3", endpoint_url=env["AWS_ENDPOINT_URL"], region_name="us-east-1",
                          aws_access_key_id="testing", aws_secret_access_key="testing")
    client.create_bucket(Bucket=BUCKET)
    yield SimpleNamespace(env=env, client=client)
    # filesystems of this process pointing at the server that goes away
    storage._filesystem.cache_clear()
    server.stop()


def upload(client, folder: Path, prefix: str) -> None:
    for path in folder.rglob("*"):
        if path.is_file():
            client.upload_file(str(path), BUCKET, f"{prefix}/{path.relative_to(folder).as_posix()}")


def objects(client, prefix: str) -> dict[str, dict]:
    pages = client.get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix=prefix)
    return {item["Key"]: item for page in pages for item in page.get("Contents", [])}


def render_cli(s3, *args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "jobs.cli", "run", *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=600, env={**os.environ, **s3.env})
