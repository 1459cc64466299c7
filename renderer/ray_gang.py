"""A gang as one replica of the pool: `size` RenderActors on one node, in one placement group, that render every
task together (renderer/gang.py: one process group, the transformer's tokens sharded between them).

Every member gets every task that denoises, in the same order, so their collectives pair up; the leader's (rank 0)
frames go to the encode task and its chunks to the stitch, which the leader alone runs (a whole row's followers stop
at the latents: only the leader's frames are kept). The pool's policies apply unchanged (renderer/pool.py): to the
pool a gang is one replica that dies when any member dies or fails in a way the others cannot share. Then every
member is killed at once (a survivor would wait in a collective for a peer that is gone) and the gang forms again
on a new port once Ray has restarted them all in their bundles.
"""
from __future__ import annotations

import ray
from ray.util.placement_group import placement_group, remove_placement_group
from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

from . import fault_hook, storage
from .dispatch import STITCH, Task
from .errors import BadOutput, RowRejected, WriteFailed
from .pool import REPLICA_DIED, Call, ModelLoadError, ReplicaPool, Report
from .ray_replica import RenderActor, describe, encode, next_to, node_when_up, report_of, wait

# errors every member raises alike (the same request, the same weights): the row's, not the gang's
SHARED_ERRORS = (RowRejected, BadOutput, WriteFailed)
# a gang that breaks this many times in a row without a success is retired (its rows go to the other gangs)
RETIRE_AFTER = 4


@ray.remote(num_cpus=0, max_retries=0)
def all_returned(*calls) -> None:
    """Finishes once every member's call has (Ray fails it at once when one of them failed)."""


@ray.remote(num_cpus=0, max_retries=0)
def form(members: list, mode: str, timeout_s: float) -> str:
    """Once every member has loaded the model: all join the leader's process group at a port free now, and shard
    the transformers. The leader's node ID, where the gang's encodes run."""
    nodes = ray.get([member.ready.remote() for member in members])
    port = ray.get(members[0].gang_port.remote())
    ray.get([member.join_gang.remote(rank, len(members), port, mode, timeout_s)
             for rank, member in enumerate(members)])
    return nodes[0]


class RayGang:
    """A Replica (see pool.py) of a gang of actors in one placement group."""

    def __init__(self, members: list, group, out_dir: str, mode: str, timeout_s: float):
        self.members = members
        self.group = group
        self.out_dir = out_dir
        self.mode = mode
        self.timeout_s = timeout_s
        # the leader's node ID, where the encodes run
        self.node = ""
        # bumped by every restart: a call of an earlier life never breaks the gang's next one
        self.life = 0
        # a task's `done` and `returned` handles -> (the gang's life, every member's call of it)
        self.calls: dict = {}

    def submit(self, task: Task) -> Call:
        # a stitch decodes without collectives: the leader's alone is the row's
        members = self.members[:1] if task.chunk == STITCH else self.members
        sent = [self._send(member, task) for member in members]
        calls = [call for _, call in sent]
        output, call = sent[0]
        returned = all_returned.remote(*calls)
        done = call
        if task.whole_row or task.chunk == STITCH:
            request = task.request
            done = encode.options(scheduling_strategy=next_to(self.node), **fault_hook.runtime_env()).remote(
                output, call, storage.join(self.out_dir, request.video_path), request.fps, request.id)
            output = None
        self.calls[done] = self.calls[returned] = (self.life, calls)
        return Call(done, returned, output)

    @staticmethod
    def _send(member, task: Task) -> tuple:
        """(output, info) handles of one member's call of the task."""
        request = task.request
        if task.keyframe is not None:
            return member.render_keyframe.remote(request, task.keyframe, task.previous)
        if task.whole_row:
            return member.render.remote(request)
        if task.chunk == STITCH:
            return member.stitch.remote(request, *task.parts)
        return member.render_chunk.remote(request, task.chunk, task.previous, task.first)

    def report(self, done) -> Report:
        life, calls = self.calls.pop(done)
        broken = self._broken(calls)
        if broken is None:
            return report_of(done)
        # the others wait in a collective for the one that failed: the gang ends here and forms again (a call of
        # an earlier life reports the death that life already had)
        if life == self.life:
            self.kill()
        return Report(death=REPLICA_DIED, message=f"worker_crashed: a gang member failed ({broken})")

    def returned(self, handle) -> bool:
        # asked again while the pool has not yet settled the death it reports
        if self._broken(self.calls[handle][1]) is not None:
            return False
        del self.calls[handle]
        return True

    def _broken(self, calls: list) -> str | None:
        """Why the gang broke on these member calls (a member died, raised what its peers did not, or did not
        return within the collective timeout of the others), or None."""
        finished, _ = ray.wait(calls, num_returns=len(calls), timeout=self.timeout_s)
        if len(finished) < len(calls):
            return f"a member did not return within {self.timeout_s:g}s of the others"
        for call in calls:
            try:
                ray.get(call)
            except ray.exceptions.RayError as exc:
                cause = exc.cause if isinstance(exc, ray.exceptions.RayTaskError) else exc
                if not isinstance(cause, SHARED_ERRORS):
                    return describe(exc)
        return None

    def kill(self) -> None:
        for member in self.members:
            ray.kill(member, no_restart=False)

    def restart(self):
        # the members were killed when the gang broke (report, or the pool's kill): Ray starts each afresh in its
        # bundle, and the gang forms once all are up; a member killed again while starting fails this try, and
        # the pool asks for the next
        self.life += 1
        return form.remote(self.members, self.mode, self.timeout_s)

    def restarted(self, handle) -> bool:
        node = node_when_up(handle)
        self.node = node or self.node
        return node is not None

    def shutdown(self) -> None:
        for member in self.members:
            ray.kill(member, no_restart=True)
        remove_placement_group(self.group)


def start_gangs(model: str, out_dir: str, gangs: int, size: int, device: str, gpus_per_actor: float, threads: int,
                load_options, mode: str, timeout_s: float, row_timeout: float | None = None) -> ReplicaPool:
    """A ReplicaPool over `gangs` gangs of `size` actors of one model, each gang on one node (STRICT_PACK), once
    every gang has formed. Raises ModelLoadError when a gang cannot load the model or form."""
    bundle = {"CPU": threads if device == "cpu" else 1, **({"GPU": gpus_per_actor} if device != "cpu" else {})}
    replicas = []
    try:
        for _ in range(gangs):
            group = placement_group([bundle] * size, strategy="STRICT_PACK")
            members = [RenderActor.options(
                num_cpus=bundle["CPU"], num_gpus=bundle.get("GPU", 0), max_restarts=-1, max_task_retries=0,
                scheduling_strategy=PlacementGroupSchedulingStrategy(group, placement_group_bundle_index=rank),
                **fault_hook.runtime_env()).remote(model, device, threads, load_options) for rank in range(size)]
            replicas.append(RayGang(members, group, out_dir, mode, timeout_s))
        nodes = ray.get([form.remote(gang.members, mode, timeout_s) for gang in replicas])
        for gang, node in zip(replicas, nodes, strict=True):
            gang.node = node
    except Exception as exc:
        for gang in replicas:
            gang.shutdown()
        raise ModelLoadError(f"model {model!r} failed to form gangs of {size}: {describe(exc)}") from None
    return ReplicaPool(replicas, wait, row_timeout, retire_after=RETIRE_AFTER)
