"""The Ray shell of the pool: GPU actors holding a loaded pipeline, CPU encode tasks, and the replica that ties
one actor to the pool's policies (renderer/pool.py).

Frames travel from the actor to the encode task by ObjectRef, and the encode runs on the actor's node; the
actor takes its next task while the last one is encoded. The chunks of a long row stay in the object
store until the stitch task (on any actor) blends them. The driver only sees small records.
"""
from __future__ import annotations

import os
import socket
import time
import warnings

import ray
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from . import fault_hook, gang, storage
from .dispatch import STITCH, Task
from .errors import BadOutput, RowRejected, WriteFailed
from .options import LoadOptions
from .pool import HELPER_DIED, REPLICA_DIED, Call, ModelLoadError, ReplicaPool, Report

# before an actor exits on purpose: the reply of the call it finished just before is sent by another thread and
# may still be on its way; exiting at once loses it, and the driver then blames that call's row for the death
EXIT_FLUSH_S = 1.0


@ray.remote
class RenderActor:
    def __init__(self, model: str, device: str, threads: int, load_options: LoadOptions):
        # keep the driver's log to what matters
        os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
        os.environ.setdefault("DIFFUSERS_VERBOSITY", "error")
        # deprecation notices torch raises inside diffusers' Text2Video-Zero warping, once per actor: not the
        # user's to act on
        warnings.filterwarnings("ignore", message=r"(torch\.meshgrid|Default grid_sample)")
        import torch

        from .loading import load

        # never more threads than this node's cores: oversubscribed torch threads spin
        if device == "cpu":
            torch.set_num_threads(max(1, min(threads, os.cpu_count() or 1)))
        self.model = load(model, device, load_options)
        if load_options.compile:
            self.model.warm_up()
        self.gpu = torch.cuda.get_device_name() if device.startswith("cuda") else "cpu"
        # how many devices render each video, and how they share it (a gang's context parallelism)
        self.parallel = {"gpus": 1, "parallel": None}
        self.name = f"{socket.gethostname()}:{os.getpid()}"

    def ready(self) -> str:
        """The ID of the node this actor runs on: its encodes are placed there."""
        return ray.get_runtime_context().get_node_id()

    def gang_port(self) -> int:
        """As a gang's leader: a port free on this node for the members to join at (see gang.py)."""
        return gang.free_port()

    def join_gang(self, rank: int, size: int, port: int, mode: str, timeout_s: float) -> dict:
        """Join a gang of `size` actors as `rank` and shard the model's transformers across it: each transformer's
        (ring, ulysses) degrees."""
        gang.join(rank, size, port, self.model.device, timeout_s)
        degrees = gang.enable(self.model.pipeline, size, mode)
        self.parallel = {"gpus": size, "parallel": mode}
        # the leader's frames are written: the others skip the VAE decode
        self.model.decodes = rank == 0
        return degrees

    @ray.method(num_returns=2)
    def render(self, request):
        """A whole row: its frames and what the record says of the render (with the seam metrics of the windows
        where one call renders several)."""
        start = time.perf_counter()
        frames = self._survive(self.model.render_whole, request)
        return frames, {**self._info(start, request), **self.model.window_seams(request, frames)}

    @ray.method(num_returns=2)
    def render_chunk(self, request, index: int, previous, first):
        """One chunk of a long row: its frames or latents (kept in the object store for the stitch) and info."""
        start = time.perf_counter()
        output = self._survive(self.model.render_chunk, request, index, previous, first)
        return output, self._info(start, request)

    @ray.method(num_returns=2)
    def render_keyframe(self, request, index: int, anchor):
        """One keyframe of a row rendered between keyframes: its one frame (kept in the object store) and info."""
        start = time.perf_counter()
        output = self._survive(self.model.render_keyframe, request, index, anchor)
        return output, self._info(start, request)

    @ray.method(num_returns=2)
    def stitch(self, request, *parts):
        """A long row's chunks blended (and decoded, for latents) into its frames; info with the seam metrics."""
        start = time.perf_counter()
        frames, metrics = self._survive(self.model.stitch, request, list(parts))
        return frames, {**self._info(start, request), **metrics}

    def _survive(self, render, *args):
        """Run a render; after a CUDA error that poisons the context (illegal access, ECC, launch failure) this
        process can never use the GPU again: exit, so Ray restarts the actor fresh and the row is retried."""
        try:
            return render(*args)
        except RuntimeError as exc:
            if "CUDA error" in str(exc):
                print(f"exiting after a CUDA error; the actor restarts: {exc}", flush=True)
                time.sleep(EXIT_FLUSH_S)
                os._exit(70)
            raise

    def _info(self, start: float, request) -> dict:
        return {"seconds": time.perf_counter() - start, "gpu": self.gpu, "actor": self.name, **self.parallel,
                "recoveries": list(self.model.recoveries), "prompt_truncated": self.model.prompt_truncated(request)}


# num_cpus=0: light next to a render, it must never wait behind CPU actors for a slot. max_retries=0: a
# killed encode is an attempt the dispatcher counts against --max-attempts, not a silent retry
@ray.remote(num_cpus=0, max_retries=0)
def encode(frames, info: dict, final_path: str, fps: int, row_id: str) -> dict:
    """Encode to `final_path`, a local path or an object URI (uploaded from this worker when done), and its poster
    beside it; the info gains the size and checksum of each file committed (what resume and `render verify` trust)."""
    from .paths import poster_relpath
    from .video import write_mp4, write_poster

    start = time.perf_counter()
    # the poster first: a committed video always has its poster
    poster = write_poster(frames[0], poster_relpath(final_path))
    video = write_mp4(frames, final_path, fps, row_id)
    return {**info, "encode_seconds": time.perf_counter() - start, "video_bytes": video.size,
            "video_sha256": video.checksum, "poster_bytes": poster.size, "poster_sha256": poster.checksum}


class RayReplica:
    """A Replica (see pool.py) of one actor, which Ray restarts when its process dies (max_restarts=-1). A whole
    row or a stitch ends in an encode task on the actor's node (`done`); a chunk's `done` is its info, and its
    output stays in the object store."""

    def __init__(self, actor, out_dir: str):
        self.actor = actor
        self.out_dir = out_dir
        # the actor's node ID (from ready()), where its encode tasks run
        self.node = ""

    def submit(self, task: Task) -> Call:
        request = task.request
        if task.keyframe is not None:
            output, call = self.actor.render_keyframe.remote(request, task.keyframe, task.previous)
            return Call(call, call, output)
        if not (task.whole_row or task.chunk == STITCH):
            output, call = self.actor.render_chunk.remote(request, task.chunk, task.previous, task.first)
            return Call(call, call, output)
        frames, call = (self.actor.render.remote(request) if task.whole_row
                        else self.actor.stitch.remote(request, *task.parts))
        done = encode.options(scheduling_strategy=next_to(self.node), **fault_hook.runtime_env()).remote(
            frames, call, storage.join(self.out_dir, request.video_path), request.fps, request.id)
        return Call(done, call)

    def report(self, done: ray.ObjectRef) -> Report:
        return report_of(done)

    def returned(self, handle: ray.ObjectRef) -> bool:
        return not died_with_actor(handle)

    def kill(self) -> None:
        ray.kill(self.actor, no_restart=False)

    def restart(self) -> ray.ObjectRef:
        return self.actor.ready.remote()

    def restarted(self, handle: ray.ObjectRef) -> bool:
        node = node_when_up(handle)
        self.node = node or self.node
        return node is not None

    def shutdown(self) -> None:
        ray.kill(self.actor, no_restart=True)


def node_when_up(handle: ray.ObjectRef) -> str | None:
    """The node ID a restart's handle gives once the replica is up again; None when it died again starting."""
    try:
        return ray.get(handle)
    except ray.exceptions.RayError:
        return None


def start_pool(model: str, out_dir: str, actors: int, device: str, gpus_per_actor: float, threads: int,
               load_options: LoadOptions, actor_class=RenderActor, row_timeout: float | None = None) -> ReplicaPool:
    """A ReplicaPool over `actors` actors of one model, once every one has loaded it: RenderActors, or any actor
    class with their constructor and methods (bench/scaling.py swaps in a fixed-time stand-in to measure the
    orchestration). Raises ModelLoadError when an actor cannot load the model."""
    options = dict(num_cpus=threads if device == "cpu" else 1, max_restarts=-1, max_task_retries=0,
                   **fault_hook.runtime_env())
    if device.startswith("cuda"):
        options["num_gpus"] = gpus_per_actor
    replicas = [RayReplica(actor_class.options(**options).remote(model, device, threads, load_options), out_dir)
                for _ in range(actors)]
    try:
        nodes = ray.get([replica.actor.ready.remote() for replica in replicas])
        for replica, node in zip(replicas, nodes, strict=True):
            replica.node = node
    except Exception as exc:
        for replica in replicas:
            replica.shutdown()
        raise ModelLoadError(f"model {model!r} failed to load: {describe(exc)}") from None
    return ReplicaPool(replicas, wait, row_timeout)


def wait(refs: list, timeout: float) -> list:
    """The pool's transport wait: the refs finished within `timeout` seconds of waiting for the first one, and
    every other one finished by then."""
    ready, _ = ray.wait(refs, num_returns=1, timeout=timeout)
    if ready and len(refs) > 1:
        ready, _ = ray.wait(refs, num_returns=len(refs), timeout=0)
    return ready


def next_to(node: str) -> NodeAffinitySchedulingStrategy:
    """Place an encode on the node of the actor that rendered its frames. Ray's own placement follows large
    arguments only: frames small enough to travel inline would all be encoded on the driver's node, and where
    that node declares no CPU (a cluster's head often does), Ray kills each idle worker there after a second,
    so each wave of encodes would start new Python processes. Soft: if that node is gone, anywhere."""
    return NodeAffinitySchedulingStrategy(node, soft=True)


def died_with_actor(call: ray.ObjectRef) -> bool:
    """Whether a finished actor call failed because its actor process died."""
    try:
        ray.get(call)
    except ray.exceptions.RayActorError:
        return True
    # the call raised; the actor lives on
    except ray.exceptions.RayError:
        return False
    return False


def report_of(done: ray.ObjectRef) -> Report:
    """A finished task's Report, Ray's exceptions translated into plain values."""
    try:
        return Report(info=ray.get(done))
    except ray.exceptions.RayError as exc:
        # a failed render reaches us through the encode task that depended on its frames
        cause = exc.cause if isinstance(exc, ray.exceptions.RayTaskError) else exc
        # the actor process died or is restarting
        if isinstance(cause, ray.exceptions.RayActorError):
            return Report(death=REPLICA_DIED, message=f"worker_crashed: the actor died ({type(cause).__name__})")
        # the encode task's worker died
        if isinstance(cause, ray.exceptions.WorkerCrashedError):
            return Report(death=HELPER_DIED,
                          message=f"worker_crashed: the encode worker died ({type(cause).__name__})")
        return Report(error=cause, message=describe(exc))


def describe(exc: BaseException) -> str:
    """The original exception's type and message, without Ray's wrapping traceback."""
    cause = getattr(exc, "cause", None) or exc
    if isinstance(cause, (RowRejected, BadOutput, WriteFailed)):
        return str(cause)
    text = str(cause).strip().splitlines()
    return f"{type(cause).__name__}: {text[-1] if text else ''}"[:500]
