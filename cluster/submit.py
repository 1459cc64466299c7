"""A run as a Ray Job: a deterministic submission id, the runtime_env that carries the code, and the job verbs.

The job's entrypoint is the same `render run` (through `python -m jobs.cli`, from the shipped working
directory) with `--address auto`, so a submitted run behaves exactly like a local one, resume included.
"""
from __future__ import annotations

import fnmatch
import hashlib
import json
import os
import shlex
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlparse

PROJECT_ROOT = Path(__file__).resolve().parents[1]
# never shipped: version control, environments, caches, outputs, benchmark results and weights
WORKING_DIR_EXCLUDES = (
    ".git", ".venv", "venv", "*.egg-info", "__pycache__", "*.pyc", ".pytest_cache", ".gpu-wheels", ".whl", "tests",
    "bench/results", "out", "runs", "*.mp4", "*.safetensors", "*.bin", "*.ckpt", "*.pt", "*.pth", "*.onnx",
)
ACTIVE, DONE = ("PENDING", "RUNNING"), "SUCCEEDED"
# how long a submission waits for a freshly started cluster's job agent
AGENT_WAIT_S = 60


class SubmitError(Exception):
    """A submission refused before anything reached the cluster, or a job verb that cannot proceed."""


@dataclass(frozen=True)
class Submission:
    tables: tuple[str, ...]
    out: str
    # the dashboard's http://HOST:8265
    address: str
    # `render run` options passed through, e.g. ("--model", "x", "--actors", "4")
    run_args: tuple[str, ...] = ()
    # environment of the job (HF_HOME, HF_HUB_OFFLINE, ...)
    env: dict = field(default_factory=dict)
    # extra requirements installed for the job
    pip: tuple[str, ...] = ()
    working_dir: Path = PROJECT_ROOT

    def submission_id(self) -> str:
        """Derived from the tables, the output and the options: the same run always gets the same id."""
        key = json.dumps([self.tables, self.out, self.run_args, sorted(self.env), self.pip])
        return "render-" + hashlib.sha256(key.encode()).hexdigest()[:12]

    def entrypoint(self) -> str:
        words = ["python", "-m", "jobs.cli", "run", *self.tables, "--out", self.out, "--address", "auto",
                 *self.run_args]
        return shlex.join(words)

    def runtime_env(self) -> dict:
        env = {"working_dir": str(self.working_dir), "excludes": list(WORKING_DIR_EXCLUDES),
               "env_vars": {"PYTHONUNBUFFERED": "1", **self.env}}
        if self.pip:
            env["pip"] = list(self.pip)
        return env


def submit(submission: Submission, job_id: str | None = None) -> str:
    """Submit the run; refuse one already running or finished under the same id. A stopped or failed run is
    submitted again under the next free id (`ID-2`, `ID-3`, ...) and resumes from what it committed."""
    check_working_dir(submission.working_dir)
    client = _client(submission.address)
    base = job_id or submission.submission_id()
    jobs = {job.submission_id: job for job in client.list_jobs() if job.submission_id}
    candidate, attempt = base, 1
    while candidate in jobs:
        status = str(jobs[candidate].status.value)
        if status in ACTIVE or status == DONE:
            raise SubmitError(f"already submitted ({status.lower()}): follow it with `render logs {candidate}`")
        attempt += 1
        candidate = f"{base}-{attempt}"
    deadline = time.monotonic() + AGENT_WAIT_S
    while True:
        try:
            return client.submit_job(entrypoint=submission.entrypoint(), submission_id=candidate,
                                     runtime_env=submission.runtime_env(), metadata={"render_run": base})
        except RuntimeError as exc:
            # a cluster that has just started has no job agent for some seconds
            if "No available agent" not in str(exc) or time.monotonic() > deadline:
                raise SubmitError(f"the cluster refused the job: {exc}") from None
            time.sleep(2)


def status(address: str, job_id: str) -> dict:
    info = _client(address).get_job_info(job_id)
    return {"id": job_id, "status": str(info.status.value), "message": info.message,
            "entrypoint": info.entrypoint, "start_time": info.start_time, "end_time": info.end_time}


def logs(address: str, job_id: str, follow: bool, write=sys.stdout.write) -> None:
    """Write the job's log; with `follow`, keep writing until it ends."""
    client = _client(address)
    if not follow:
        write(client.get_job_logs(job_id))
        return
    import asyncio

    async def tail():
        async for lines in client.tail_job_logs(job_id):
            write(lines)

    asyncio.run(tail())


def stop(address: str, job_id: str) -> bool:
    """Ask the job to stop: Ray sends SIGTERM, then SIGKILL after its grace period; what the run
    committed stays, and submitting the same run again resumes it."""
    return _client(address).stop_job(job_id)


def check_working_dir(root: Path, limit: int | None = None) -> int:
    """The bytes the runtime_env would upload; refuse a working dir over Ray's package limit (weights in it?)."""
    limit = limit if limit is not None else _package_limit()
    files = sorted(_shipped_files(root), key=lambda item: -item[1])
    total = sum(size for _, size in files)
    if total >= limit:
        largest = ", ".join(f"{path} ({size / 2**20:.0f} MiB)" for path, size in files[:3])
        raise SubmitError(f"the working directory {root} is {total / 2**20:.0f} MiB, over Ray's limit of "
                          f"{limit / 2**20:.0f} MiB for a runtime_env package; largest files: {largest}. Keep "
                          "weights and data on shared storage (HF_HOME, s3://...) instead of in the project folder")
    return total


def auth_warning(address: str | None) -> str | None:
    """Ray's security guidance: a dashboard reachable beyond this machine without token authentication
    lets anyone who reaches its port run code on the cluster."""
    if not address or address == "auto" or _is_loopback(address) or _token_auth_on():
        return None
    return (f"warning: {address} is not a loopback address and Ray token authentication is off "
            "(RAY_AUTH_MODE=disabled or no token): anyone who reaches that port can run code on the cluster. "
            "Enable token authentication (https://docs.ray.io/en/latest/ray-security/token-auth.html) or "
            "reach the dashboard through an SSH tunnel or port-forward on 127.0.0.1.")


def _shipped_files(root: Path):
    for folder, dirs, names in os.walk(root):
        rel_folder = Path(folder).relative_to(root)
        dirs[:] = [d for d in dirs if not _excluded(rel_folder / d)]
        for name in names:
            path = rel_folder / name
            if not _excluded(path):
                yield path, (Path(folder) / name).stat().st_size


def _excluded(path: Path) -> bool:
    text = path.as_posix()
    return any(fnmatch.fnmatch(path.name, pattern) or fnmatch.fnmatch(text, pattern)
               for pattern in WORKING_DIR_EXCLUDES)


def _package_limit() -> int:
    try:
        from ray._private.runtime_env.packaging import GCS_STORAGE_MAX_SIZE
    except ImportError:
        # where a Ray release moves it: its documented 500 MiB
        return 500 * 2**20
    return GCS_STORAGE_MAX_SIZE


def _token_auth_on() -> bool:
    """Whether this machine's Ray uses token authentication: RAY_AUTH_MODE, or when unset, whether a token is
    there for Ray to find (it then turns authentication on by itself). Read from the environment and the
    token file only: Ray's own token loader caches its state for the process, before ray.init."""
    mode = os.environ.get("RAY_AUTH_MODE")
    if mode is not None:
        return mode.lower() == "token"
    token_file = Path(os.environ.get("RAY_AUTH_TOKEN_PATH", "~/.ray/auth_token")).expanduser()
    return bool(os.environ.get("RAY_AUTH_TOKEN")) or token_file.is_file()


def _use_local_token() -> None:
    """Send the token found on this machine (~/.ray/auth_token, RAY_AUTH_TOKEN[_PATH]) as ray.init does when
    RAY_AUTH_MODE is unset; the token itself is never printed or recorded."""
    try:
        from ray._private.authentication.authentication_token_setup import maybe_enable_token_auth_if_token_available
    except ImportError:
        # a Ray without token authentication
        return
    maybe_enable_token_auth_if_token_available(warn_if_disabled=False)


def _is_loopback(address: str) -> bool:
    host = urlparse(address if "://" in address else f"//{address}").hostname or ""
    return host in ("localhost", "::1") or host.startswith("127.")


def _client(address: str):
    from ray.job_submission import JobSubmissionClient

    _use_local_token()
    try:
        return JobSubmissionClient(address)
    except Exception as exc:
        raise SubmitError(f"cannot reach the Ray dashboard at {address}: {exc}") from None
