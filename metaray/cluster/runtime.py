"""Where the objects run: Ray actors, or plain objects in this process (`--serial`).

Both runtimes speak Ray's calling convention (`handle.method.remote(...)`, `get`, `wait`), so
the training loop is one piece of code. Serial futures are lazy and run in the order they were
made when someone waits on them, which keeps serial runs deterministic and close to the order
Ray would run them in.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import socket
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from metaray.learner.parameter_server import ParameterServer
from metaray.learner.variables import LocalVariables, RayVariables


class RuntimeStartError(RuntimeError):
    """Ray could not be started or reached; the message is one line for the user.

    `half_started` says a local node got as far as starting processes (a GCS, a raylet) before
    it failed: those were stopped, but Ray's gRPC threads in this process can still hang the
    interpreter's exit, so the CLI leaves with `os._exit` after the message."""

    def __init__(self, message: str, half_started: bool = False):
        super().__init__(message)
        self.half_started = half_started


def _stop_half_started_node() -> bool:
    """Stop the Ray processes this process started (a GCS, a raylet...) after a failed
    `ray.init`: Ray keeps no handle to a node whose start failed, so they would outlive the run,
    holding ports and memory. Linux's /proc names them; elsewhere nothing is done. Says whether
    there were any."""
    import signal

    children: dict[int, list[int]] = {}
    commands: dict[int, str] = {}
    for entry in os.listdir("/proc") if os.path.isdir("/proc") else []:
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                ppid = int(f.read().rsplit(")", 1)[1].split()[1])
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                commands[int(entry)] = f.read().replace(b"\0", b" ").decode(errors="replace")
        except (OSError, ValueError, IndexError):
            continue
        children.setdefault(ppid, []).append(int(entry))
    stack, mine = [os.getpid()], []
    while stack:
        for pid in children.get(stack.pop(), []):
            mine.append(pid)
            stack.append(pid)
    # a Ray binary (gcs_server, raylet) or a Python process running one of Ray's own files
    stopped = [pid for pid in mine if "/ray/" in " ".join(commands.get(pid, "").split()[:3])]
    for pid in stopped:
        with contextlib.suppress(OSError):
            os.kill(pid, signal.SIGKILL)
    return bool(stopped)


_counter = itertools.count()


@contextlib.contextmanager
def _interrupts_as_such() -> Any:
    """A Ctrl-C (or the CLI's SIGTERM handler) that lands inside Ray's Cython `get`/`wait` can
    surface as `SystemError: ... returned a result with an exception set`, the KeyboardInterrupt
    only its cause: re-raise the interrupt, so the run checkpoints and stops as it does for one
    that lands anywhere else."""
    try:
        yield
    except SystemError as err:
        cause = err.__cause__ or err.__context__
        if isinstance(cause, KeyboardInterrupt):
            raise cause from None
        raise


@dataclass(eq=False)
class SerialFuture:
    fn: Any
    args: tuple
    kwargs: dict
    index: int = -1
    seq: int = field(default_factory=lambda: next(_counter))
    done: bool = False
    value: Any = None
    error: BaseException | None = None
    parent: SerialFuture | None = None

    def execute(self) -> None:
        """Run the call once; an exception is kept and raised by `run` (as Ray raises on get)."""
        if self.parent is not None:
            self.parent.execute()
        elif not self.done:
            try:
                args = [_resolve(a) for a in self.args]
                kwargs = {k: _resolve(v) for k, v in self.kwargs.items()}
                self.value = self.fn(*args, **kwargs)
            except Exception as err:
                self.error = err
            self.done = True

    def run(self) -> Any:
        if self.parent is not None:
            return self.parent.run()[self.index]
        self.execute()
        if self.error is not None:
            raise self.error
        return self.value

    @property
    def ready(self) -> bool:
        return (self.parent or self).done


def _resolve(value: Any) -> Any:
    return value.run() if isinstance(value, SerialFuture) else value


class _SerialMethod:
    def __init__(self, fn: Any, num_returns: int = 1):
        self.fn, self.num_returns = fn, num_returns

    def options(self, num_returns: int = 1, **_: Any) -> _SerialMethod:
        return _SerialMethod(self.fn, num_returns)

    def remote(self, *args: Any, **kwargs: Any) -> Any:
        future = SerialFuture(self.fn, args, kwargs)
        if self.num_returns == 1:
            return future
        return tuple(SerialFuture(None, (), {}, index=i, seq=future.seq, parent=future) for i in range(self.num_returns))


class SerialHandle:
    """An in-process object behind Ray's actor-handle interface."""

    def __init__(self, obj: Any):
        self.obj = obj

    def __getattr__(self, name: str) -> _SerialMethod:
        return _SerialMethod(getattr(self.obj, name))


class SerialRuntime:
    name = "serial"

    def spawn(self, cls: type, *args: Any, **_resources: Any) -> SerialHandle:
        return SerialHandle(cls(*args))

    def parameter_server(self) -> tuple[SerialHandle, LocalVariables]:
        server = ParameterServer()
        return SerialHandle(server), LocalVariables(server)

    def get(self, futures: Any) -> Any:
        if isinstance(futures, list):
            return [_resolve(f) for f in futures]
        return _resolve(futures)

    def wait(self, futures: list[Any], num_returns: int = 1, timeout: float | None = None) -> tuple[list, list]:
        for f in sorted(futures, key=lambda f: f.seq):
            if sum(f.ready for f in futures) >= num_returns:
                break
            f.execute()
        ready = [f for f in futures if f.ready]
        return ready[:num_returns], [f for f in futures if f not in ready[:num_returns]]

    def kill(self, handle: Any) -> None:
        """Nothing to kill in one process: the object is dropped."""

    def route_ray_messages(self, sink: Callable[[str], None]) -> None:
        """No Ray, no Ray messages."""

    def cluster_gpus(self) -> float:
        return 0.0

    def shutdown(self) -> None:
        pass


class RayRuntime:
    name = "ray"
    address = ""
    _unroute: Callable[[], None] = staticmethod(lambda: None)

    def __init__(self, address: str | None, num_cpus: int | None = None):
        import ray

        self.ray = ray
        if address is None and os.environ.get("RAY_ADDRESS"):  # Ray's convention (`ray job submit`
            address = os.environ["RAY_ADDRESS"]  # sets it): join that cluster
        self.started_here = address is None
        if address not in (None, "auto"):
            _check_reachable(address)
        env_vars = {"PYTHONPATH": os.pathsep.join(p for p in [os.getcwd(), os.environ.get("PYTHONPATH", "")] if p)}
        try:
            ray.init(  # no address: a fresh local instance ("local"), never one found running on the
                # machine (ray.init(None) would join that and then refuse num_cpus)
                address=address or "local", num_cpus=num_cpus if address is None else None,
                include_dashboard=False, logging_level="ERROR", log_to_driver=True,
                runtime_env={"env_vars": env_vars}, ignore_reinit_error=True,
            )
        except Exception as err:  # Ray raises bare Exception too ("timed out during startup" on a busy machine)
            first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            if address is None:
                if "timed out during startup" in first:  # Ray gives its raylet 30 s, fixed
                    first += f" (Ray waits 30 s for its node; load average now {os.getloadavg()[0]:.1f} on " \
                             f"{os.cpu_count()} CPUs: start it when the machine is less busy, or at a higher priority)"
                raise RuntimeStartError(f"cannot start a local Ray instance: {first}",
                                        half_started=_stop_half_started_node()) from None
            hint = ""
            if os.environ.get("RAY_AUTH_MODE") != "token":
                hint = " (a cluster with token auth, Ray's default, needs RAY_AUTH_MODE=token here too)"
            raise RuntimeStartError(f"cannot connect to Ray at {address}: {first}{hint}") from None
        self.address = ray.get_runtime_context().gcs_address

    def spawn(self, cls: type, *args: Any, num_cpus: float = 1, num_gpus: float = 0, name: str | None = None,
              namespace: str | None = None, scheduling_strategy: Any = None) -> Any:
        actor = self.ray.remote(cls).options(num_cpus=num_cpus, num_gpus=num_gpus, name=name, namespace=namespace,
                                             scheduling_strategy=scheduling_strategy)
        return actor.remote(*args)

    def driver_node(self, soft: bool) -> Any:
        """Scheduling strategy: the driver's node. The parameter server and a CPU learner live
        there, so losing another node only costs rollout workers (which are restarted)."""
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        return NodeAffinitySchedulingStrategy(self.ray.get_runtime_context().get_node_id(), soft=soft)

    def parameter_server(self) -> tuple[Any, RayVariables]:
        handle = self.spawn(ParameterServer, num_cpus=0, scheduling_strategy=self.driver_node(soft=False))
        return handle, RayVariables(handle)

    def get(self, futures: Any) -> Any:
        with _interrupts_as_such():
            return self.ray.get(futures)

    def wait(self, futures: list[Any], num_returns: int = 1, timeout: float | None = None) -> tuple[list, list]:
        with _interrupts_as_such():
            return self.ray.wait(futures, num_returns=num_returns, timeout=timeout)

    def kill(self, handle: Any) -> None:
        """Stop an actor for good (no Ray-side restart); a dead one is fine."""
        with contextlib.suppress(Exception):  # already gone
            self.ray.kill(handle, no_restart=True)

    def route_ray_messages(self, sink: Callable[[str], None]) -> None:
        """Send Ray's own messages (the raylet's: a ~750-character line per worker death, OOM
        notes) to `sink` instead of stdout, until shutdown or the next call; the output of
        the actors still prints. Ray has no public hook for this, so its private printer is
        wrapped; with a Ray that lacks it, nothing changes."""
        from ray._private import worker as ray_worker

        original = getattr(ray_worker, "print_to_stdstream", None)
        if original is None:
            return
        original = getattr(original, "metaray_original", original)

        def route(data: dict[str, Any], *args: Any, **kwargs: Any) -> None:
            if data.get("pid") != "raylet":
                return original(data, *args, **kwargs)
            for line in data.get("lines", []):
                sink(str(line))
            return None

        route.metaray_original = original  # type: ignore[attr-defined]
        ray_worker.print_to_stdstream = route
        self._unroute = lambda: setattr(ray_worker, "print_to_stdstream", original)

    def cluster_gpus(self) -> float:
        return float(self.ray.cluster_resources().get("GPU", 0))

    def cluster_cpus(self) -> float:
        return float(self.ray.cluster_resources().get("CPU", 0))

    def shutdown(self) -> None:
        if self.ray.is_initialized():
            self.ray.shutdown()
        self._unroute()


def _check_reachable(address: str, timeout_s: float = 3.0) -> None:
    """Fail fast, with one line, on an address nothing answers at (ray.init would wait long)."""
    host, _, port = address.rpartition(":")
    if address.startswith(("ray://", "http://", "https://")):
        return
    if not host or not port.isdigit():
        raise RuntimeStartError(f"--address {address!r}: expected 'auto' or HOST:PORT")
    try:
        with socket.create_connection((host, int(port)), timeout=timeout_s):
            pass
    except OSError as err:
        raise RuntimeStartError(f"cannot reach Ray at {address}: {err.strerror or err}") from None


def make_runtime(serial: bool, address: str | None, num_cpus: int | None = None) -> SerialRuntime | RayRuntime:
    if serial:
        return SerialRuntime()
    if "ray" not in sys.modules:
        os.environ.setdefault("RAY_DEDUP_LOGS", "1")
    return RayRuntime(address, num_cpus)
