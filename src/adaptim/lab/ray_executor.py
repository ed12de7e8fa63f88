"""Trials on a Ray cluster: ``adaptim compare --executor ray``.

Each trial is one Ray task that declares its resources (``--trial-cpus``,
``--trial-gpus``), so Ray packs as many trials on each node as fit and gives a
GPU trial a GPU of its own. Results come back as tasks finish, in any order,
and the study stores each one as it arrives, exactly as with the local
executors.

A trial whose worker process or node dies is retried by Ray (up to
``MAX_RETRIES`` times): the task's result reaches the driver once, and the
store's unique trial key would absorb a second copy anyway, so a lost worker
costs time, never a lost or duplicated trial. A trial that fails by itself (a
:class:`~adaptim.lab.errors.LabError` from the problem's code) is not retried:
it would fail again.

Ray is an optional extra (``pip install 'adaptim[ray]'``); this module imports
it only when the executor is created.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from adaptim.lab.errors import LabError
from adaptim.lab.problems import BuildContext
from adaptim.lab.trial import TrialResult, TrialSpec

#: How many times Ray re-runs a trial whose worker died before giving up on it.
MAX_RETRIES = 3

INSTALL_HINT = "--executor ray needs Ray: pip install 'adaptim[ray]'"


def _ray() -> Any:
    try:
        import ray
    except ImportError:
        raise LabError(INSTALL_HINT) from None
    return ray


def _run_task(spec: TrialSpec, context: BuildContext, path: list[str], threads: int) -> TrialResult:
    """The body of one Ray task, in a Ray worker process."""
    import torch

    from adaptim.lab.executors import execute

    # The driver's import path, so `--problem package.module:function` resolves here too
    # (entries that do not exist on this node are harmless).
    sys.path.extend(p for p in path if p not in sys.path)
    torch.set_num_threads(threads)
    return execute(spec, context)


class RayExecutor:
    """Runs each trial as a Ray task with ``cpus`` CPUs and ``gpus`` GPUs.

    ``address`` is that of a running cluster (``auto``, ``ray://host:port``);
    ``None`` starts a local Ray instance on 127.0.0.1, closed again by
    :meth:`close`. A Ray already initialised in this process is used as it is.
    """

    def __init__(self, address: str | None = None, cpus: float = 1.0, gpus: float = 0.0) -> None:
        if cpus <= 0:
            raise LabError(f"--trial-cpus must be positive, got {cpus}")
        if gpus < 0:
            raise LabError(f"--trial-gpus must be 0 or more, got {gpus}")
        ray = self.ray = _ray()
        self.started = False
        if not ray.is_initialized():
            options: dict[str, Any] = {"include_dashboard": False, "log_to_driver": False}
            if address is None:  # a local instance, reachable from this machine only
                options["_node_ip_address"] = "127.0.0.1"
            try:
                ray.init(address=address, **options)
            except (ConnectionError, RuntimeError, ValueError) as error:
                reason = str(error).splitlines()[0] if str(error) else type(error).__name__
                raise LabError(f"cannot reach Ray at --ray-address {address!r}: {reason}") from None
            self.started = True
        resources = ray.cluster_resources()
        slots = int(resources.get("CPU", 0) // cpus)
        if gpus:
            slots = min(slots, int(resources.get("GPU", 0) // gpus))
        if slots < 1:
            have = f"{resources.get('CPU', 0):g} CPUs and {resources.get('GPU', 0):g} GPUs"
            raise LabError(
                f"no Ray node can run a trial with --trial-cpus {cpus:g} --trial-gpus {gpus:g}: "
                f"the cluster has {have}"
            )
        #: Trials running at once: how many a worker claims at a time (see claims.py).
        self.workers = slots
        self.threads = max(1, int(cpus))
        self.task = ray.remote(
            num_cpus=cpus, num_gpus=gpus, max_retries=MAX_RETRIES, retry_exceptions=False
        )(_run_task)

    def run(self, specs: Sequence[TrialSpec], context: BuildContext) -> Iterator[TrialResult]:
        ray = self.ray
        path = [str(Path.cwd()), *sys.path]
        pending = {self.task.remote(s, context, path, self.threads): s for s in specs}
        try:
            while pending:
                done, _ = ray.wait(list(pending), num_returns=1)
                for ref in done:
                    spec = pending.pop(ref)
                    yield self._result(ref, spec)
        finally:
            for ref in pending:  # a failure or an interrupt: stop what was not collected
                ray.cancel(ref, force=True)

    def _result(self, ref: Any, spec: TrialSpec) -> TrialResult:
        exceptions = self.ray.exceptions
        try:
            result: TrialResult = self.ray.get(ref)
        except exceptions.RayTaskError as error:
            cause = error.cause
            if isinstance(cause, LabError):
                raise LabError(str(cause.args[0]) if cause.args else str(cause)) from None
            raise LabError(f"trial {_name(spec)} failed on Ray: {type(cause).__name__}") from None
        except exceptions.RayError as error:  # the worker or node died every time
            raise LabError(
                f"trial {_name(spec)} was lost on Ray {MAX_RETRIES + 1} times: "
                f"{type(error).__name__}"
            ) from None
        return result

    def close(self) -> None:
        if self.started:
            self.ray.shutdown()


def _name(spec: TrialSpec) -> str:
    return f"{spec.problem} / {spec.optimizer} lr={spec.hparams.get('lr')} seed {spec.seed}"
