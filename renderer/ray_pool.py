"""The Ray shell around the scheduler: GPU actors holding a loaded pipeline, and CPU encode tasks.

Frames travel from the actor to the encode task by ObjectRef, and the encode runs on the actor's node; the
actor takes its next task while the last one is encoded. The chunks of a long row stay in the object
store until the stitch task (on any actor) blends them. The driver only sees small records.
"""
from __future__ import annotations

import os
import socket
import time
import warnings
from collections import deque
from dataclasses import dataclass, field, replace

import ray
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from . import fault_hook, storage
from .errors import BadOutput, RowRejected, WriteFailed
from .options import LoadOptions
from .scheduler import (
    CRASHED,
    ERROR,
    FAILED,
    OK,
    REJECTED,
    REQUEUE,
    STITCH,
    Outcome,
    Task,
)

ACTOR_DIED = "actor_died"  # pool-internal: becomes CRASHED or REQUEUE
TASKS_QUEUED_PER_ACTOR = 2  # on the actor: one rendering, one waiting, so it never idles between tasks
ENCODES_PER_ACTOR = 2  # per actor: rendered rows whose frames may wait in the object store for their encode
DEATH_SETTLE_S = 10.0  # after an actor died, how long its calls may take to report it
# before an actor exits on purpose: the reply of the call it finished just before is sent by another thread and
# may still be on its way; exiting at once loses it, and the driver then blames that call's row for the death
EXIT_FLUSH_S = 1.0


@ray.remote
class RenderActor:
    def __init__(self, model: str, device: str, threads: int, load_options: LoadOptions):
        os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")  # keep the driver's log to what matters
        os.environ.setdefault("DIFFUSERS_VERBOSITY", "error")
        # deprecation notices torch raises inside diffusers' Text2Video-Zero warping, once per actor: not the user's to act on
        warnings.filterwarnings("ignore", message=r"(torch\.meshgrid|Default grid_sample)")
        import torch

        from .model import load

        if device == "cpu":  # never more threads than this node's cores: oversubscribed torch threads spin
            torch.set_num_threads(max(1, min(threads, os.cpu_count() or 1)))
        self.model = load(model, device, load_options)
        if load_options.compile:
            self.model.warm_up()
        self.gpu = torch.cuda.get_device_name() if device.startswith("cuda") else "cpu"
        self.name = f"{socket.gethostname()}:{os.getpid()}"

    def ready(self) -> str:
        """The ID of the node this actor runs on: its encodes are placed there."""
        return ray.get_runtime_context().get_node_id()

    @ray.method(num_returns=2)
    def render(self, request):
        """A whole row: its frames and what the record says of the render."""
        start = time.perf_counter()
        frames = self._survive(self.model.render_whole, request)
        return frames, self._info(start, request)

    @ray.method(num_returns=2)
    def render_chunk(self, request, index: int, previous, first):
        """One chunk of a long row: its frames or latents (kept in the object store for the stitch) and info."""
        start = time.perf_counter()
        output = self._survive(self.model.render_chunk, request, index, previous, first)
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
        return {"seconds": time.perf_counter() - start, "gpu": self.gpu, "actor": self.name,
                "recoveries": list(self.model.recoveries), "prompt_truncated": self.model.prompt_truncated(request)}


# num_cpus=0: light next to a render, it must never wait behind CPU actors for a slot. max_retries=0: a
# killed encode is an attempt the scheduler counts against --max-attempts, not a silent retry
@ray.remote(num_cpus=0, max_retries=0)
def encode(frames, info: dict, final_path: str, fps: int, row_id: str) -> dict:
    """Encode to `final_path`, a local path or an object URI (uploaded from this worker when done)."""
    from .video import write_mp4

    start = time.perf_counter()
    write_mp4(frames, final_path, fps, row_id)
    return {**info, "encode_seconds": time.perf_counter() - start}


class ModelLoadError(Exception):
    """No actor could load the model: every row of it fails without burning retries."""


@dataclass
class Slot:
    """One actor and what the driver knows of it."""

    actor: object
    queue: list = field(default_factory=list)  # its tickets' refs until collected, oldest first
    running: deque = field(default_factory=deque)  # its Tickets whose actor call has not returned, oldest first
    since: float = 0.0  # when running[0] began executing: when its predecessor returned, or it was submitted
    generation: int = 0  # bumped when the actor dies; tickets of an older life are not charged again
    node: str = ""  # the actor's node ID (from ready()), where its encode tasks run
    restarting: object = None  # ObjectRef of ready() while the actor comes back


@dataclass(eq=False)
class Ticket:
    """One task in flight. Its ref is what the scheduler waits on: a whole row's or a stitch's encode task,
    a chunk's info. `call` is the actor call's info, which tells when the actor is done with the task."""

    ref: ray.ObjectRef
    slot: Slot
    generation: int
    call: ray.ObjectRef
    charged: bool = False  # the task its actor was executing when it died: it pays the attempt


class ActorPool:
    """An Executor (see scheduler.py) over `actors` actors of one model: RenderActors, or any actor class with
    their constructor and methods (bench/scaling.py swaps in a fixed-time stand-in to measure the orchestration).
    With `row_timeout` (seconds), a task executing longer fails `timeout` and its actor is replaced."""

    def __init__(self, model: str, out_dir: str, actors: int, device: str, gpus_per_actor: float, threads: int,
                 load_options: LoadOptions, actor_class=RenderActor, row_timeout: float | None = None):
        options = dict(num_cpus=threads if device == "cpu" else 1, max_restarts=-1, max_task_retries=0,
                       **fault_hook.runtime_env())
        if device.startswith("cuda"):
            options["num_gpus"] = gpus_per_actor
        self.slots = [Slot(actor_class.options(**options).remote(model, device, threads, load_options))
                      for _ in range(actors)]
        self.out_dir = out_dir
        self.row_timeout = row_timeout
        self.tickets: dict[ray.ObjectRef, Ticket] = {}
        self.outputs: dict[ray.ObjectRef, ray.ObjectRef] = {}  # a chunk's ticket -> its output
        try:
            for slot, node in zip(self.slots, ray.get([slot.actor.ready.remote() for slot in self.slots])):
                slot.node = node
        except Exception as exc:
            self.shutdown()
            raise ModelLoadError(f"model {model!r} failed to load: {describe(exc)}") from None

    @property
    def free(self) -> int:
        """How many more tasks the live actors take now. An actor is fed again as soon as a render returns, not
        once its video is encoded, so slow encoding never idles it; but when encoding falls behind, no more than
        ENCODES_PER_ACTOR rendered rows per actor wait for it, holding their frames in the object store."""
        live = [slot for slot in self.slots if slot.restarting is None]
        on_actors = sum(TASKS_QUEUED_PER_ACTOR - len(slot.running) for slot in live)
        return min(on_actors, len(live) * (TASKS_QUEUED_PER_ACTOR + ENCODES_PER_ACTOR) - len(self.tickets))

    def submit(self, task: Task) -> ray.ObjectRef:
        """Queue a task on the live actor with the fewest unreturned calls: a whole row or a stitch ends in an
        encode task (its ticket); a chunk's ticket is its info, and its output stays in the object store."""
        slot = min((s for s in self.slots if s.restarting is None), key=lambda s: len(s.running))
        request = task.request
        if task.whole_row or task.chunk == STITCH:
            frames, call = (slot.actor.render.remote(request) if task.whole_row
                            else slot.actor.stitch.remote(request, *task.parts))
            ref = encode.options(scheduling_strategy=next_to(slot), **fault_hook.runtime_env()).remote(
                frames, call, storage.join(self.out_dir, request.video_path), request.fps, request.id)
        else:
            output, call = slot.actor.render_chunk.remote(request, task.chunk, task.previous, task.first)
            ref = call
            self.outputs[ref] = output
        ticket = Ticket(ref, slot, slot.generation, call)
        self.tickets[ref] = ticket
        slot.queue.append(ref)
        if not slot.running:  # an idle actor starts it now
            slot.since = time.monotonic()
        slot.running.append(ticket)
        return ref

    def wait(self, timeout: float) -> list[tuple[ray.ObjectRef, Outcome]]:
        restarting = {s.restarting: s for s in self.slots if s.restarting is not None}
        # also wakes when an actor call returns: that actor takes its next task before the encode is done
        returning = {s.running[0].call for s in self.slots if s.running and s.restarting is None}
        waiting = list({*self.tickets, *restarting, *returning})
        if not waiting:
            return []
        ready, _ = ray.wait(waiting, num_returns=1, timeout=timeout)
        if ready:  # collect everything else that is already finished too
            ready, _ = ray.wait(waiting, num_returns=len(waiting), timeout=0)
        for ref in ready:
            if ref in restarting:
                self._restarted(restarting[ref])
        finished = sorted((r for r in ready if r in self.tickets), key=lambda r: self._age(r))
        outcomes = [(ref, self._outcome(ref)) for ref in finished]
        return outcomes + self._timed_out()

    def shutdown(self) -> None:
        for slot in self.slots:
            ray.kill(slot.actor, no_restart=True)

    def _age(self, ref) -> int:
        return self.tickets[ref].slot.queue.index(ref)

    def _drop(self, ref) -> Ticket:
        ticket = self.tickets.pop(ref)
        ticket.slot.queue.remove(ref)
        return ticket

    def _outcome(self, ref) -> Outcome:
        ticket = self._drop(ref)
        slot = ticket.slot
        outcome = outcome_of(ref)
        output = self.outputs.pop(ref, None)
        if outcome.status == OK:
            return replace(outcome, output=output)
        if outcome.status != ACTOR_DIED:
            return outcome
        if ticket.generation == slot.generation:  # the first news of this death: find the task that caused it
            # not simply this ticket: encode tasks report the death in no fixed order
            (self._executing(slot, settle=DEATH_SETTLE_S) or ticket).charged = True
            self._replace_actor(slot)
        # the others were queued behind it: requeued without charge
        return Outcome(CRASHED if ticket.charged else REQUEUE, outcome.error)

    def _executing(self, slot: Slot, settle: float = 0) -> Ticket | None:
        """The ticket whose task the actor is executing (or died executing): the oldest whose actor call has
        neither returned nor raised. `settle`: how long to wait for a call to report a death."""
        while slot.running:
            head = slot.running[0]
            ready, _ = ray.wait([head.call], timeout=settle)
            if not ready or died_with_actor(head.call):
                return head
            slot.running.popleft()  # returned (or raised, and the actor lives on): the next one started
            slot.since = time.monotonic()
        return None

    def _timed_out(self) -> list[tuple[ray.ObjectRef, Outcome]]:
        """Tasks executing for longer than row_timeout: failed `timeout`, their actors killed and replaced.
        The tasks queued behind such a task then report the actor's death and are requeued without charge."""
        expired = []
        for slot in self.slots:
            # every slot, every time: also lets go of the calls that returned
            head = self._executing(slot) if slot.restarting is None else None
            if head is None or self.row_timeout is None or time.monotonic() - slot.since <= self.row_timeout:
                continue
            if ray.wait([head.call], timeout=0)[0]:  # it died just now: settled as a crash once collected
                continue
            self._drop(head.ref)
            self.outputs.pop(head.ref, None)
            ray.kill(slot.actor, no_restart=False)
            self._replace_actor(slot)
            expired.append((head.ref, Outcome(
                FAILED, f"timeout: the task ran past --row-timeout {self.row_timeout:g}s; its actor was replaced")))
        return expired

    def _replace_actor(self, slot: Slot) -> None:
        """The actor died or was killed: Ray restarts it; its tickets of this life are settled as they come."""
        slot.generation += 1
        slot.running.clear()
        slot.restarting = slot.actor.ready.remote()

    def _restarted(self, slot: Slot) -> None:
        try:
            slot.node = ray.get(slot.restarting)
            slot.restarting = None
        except ray.exceptions.RayError:  # died again while loading: keep waiting on its next life
            slot.restarting = slot.actor.ready.remote()


def next_to(slot: Slot) -> NodeAffinitySchedulingStrategy:
    """Place an encode on the node of the actor that rendered its frames. Ray's own placement follows large
    arguments only: frames small enough to travel inline would all be encoded on the driver's node, and where
    that node declares no CPU (a cluster's head often does), Ray kills each idle worker there after a second,
    so each wave of encodes would start new Python processes. Soft: if that node is gone, anywhere."""
    return NodeAffinitySchedulingStrategy(slot.node, soft=True)


def died_with_actor(call: ray.ObjectRef) -> bool:
    """Whether a finished actor call failed because its actor process died."""
    try:
        ray.get(call)
    except ray.exceptions.RayActorError:
        return True
    except ray.exceptions.RayError:  # the call raised; the actor lives on
        return False
    return False


def outcome_of(ticket: ray.ObjectRef) -> Outcome:
    try:
        return Outcome(OK, info=ray.get(ticket))
    except ray.exceptions.RayError as exc:
        # a failed render reaches us through the encode task that depended on its frames
        cause = exc.cause if isinstance(exc, ray.exceptions.RayTaskError) else exc
        if isinstance(cause, ray.exceptions.RayActorError):  # the actor process died or is restarting
            return Outcome(ACTOR_DIED, f"worker_crashed: the actor died ({type(cause).__name__})")
        if isinstance(cause, ray.exceptions.WorkerCrashedError):  # the encode task's worker died
            return Outcome(CRASHED, f"worker_crashed: the encode worker died ({type(cause).__name__})")
        final = REJECTED if isinstance(cause, RowRejected) else FAILED if isinstance(cause, BadOutput) else ERROR
        return Outcome(final, describe(exc), write_failed=isinstance(cause, WriteFailed))


def describe(exc: BaseException) -> str:
    """The original exception's type and message, without Ray's wrapping traceback."""
    cause = getattr(exc, "cause", None) or exc
    if isinstance(cause, (RowRejected, BadOutput, WriteFailed)):
        return str(cause)
    text = str(cause).strip().splitlines()
    return f"{type(cause).__name__}: {text[-1] if text else ''}"[:500]
