"""The Ray work pool every batch stage shares: preprocessing, generation and evaluation.

- ``RayConfig``: where the actors run (an embedded local Ray, or a cluster through ``ray.address``
  or RAY_ADDRESS) and how they recover (``max_restarts``, ``max_task_retries``: the work items must
  be idempotent, which every stage's are: each writes its output atomically and skips it when done).
- ``init_ray``: start or join Ray once per process. A cluster started with token authentication
  (Ray 2.60's default for ``ray start --head``) is joined with RAY_AUTH_MODE=token in the
  environment as well as the address (``ray.address`` or RAY_ADDRESS).
- ``actors``: a context manager that starts N actors of a class and always kills them at the end,
  also when the driver fails or is interrupted.
- ``map_unordered``: one item per actor at a time, the next to whichever frees up first; an actor
  that died more often than ``max_restarts`` allows turns into a failure row for its item, never
  into an exception that would stop the batch. An actor that is only unreachable for now (its node
  was lost and Ray has not declared it dead yet) gets its item again (``unavailable``).
- ``reason`` and ``format_table``: one failure wording and one summary table for every stage.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Optional

from drivegen.errors import ConfigError

__all__ = ["RayConfig", "actors", "format_table", "init_ray", "map_unordered", "reason", "unavailable"]


@dataclass(kw_only=True)
class RayConfig:
    """Where the workers run and how they recover."""

    address: Optional[str] = None
    """None: RAY_ADDRESS if set, else an embedded local instance; 'auto' or 'ray://...' joins a cluster."""
    num_workers: int = 2
    """Actors (one CPU each, or one GPU each where the stage uses GPUs)."""
    num_cpus: Optional[int] = None
    """CPUs of the embedded local instance (None: all); ignored when joining a cluster."""
    max_restarts: int = 3
    """Times an actor is restarted after its process dies (-1: forever)."""
    max_task_retries: int = 3
    """Times a task is retried on a restarted actor (-1: forever); every stage's items are idempotent."""

    def __post_init__(self) -> None:
        for name in ("num_workers", "num_cpus"):
            value = getattr(self, name)
            if value is None and name == "num_cpus":
                continue
            if not (isinstance(value, int) and not isinstance(value, bool) and value > 0):
                raise ConfigError(f"ray.{name}={value!r}: expected a positive integer"
                                  + (" or null (all CPUs)" if name == "num_cpus" else ""))
        for name in ("max_restarts", "max_task_retries"):
            value = getattr(self, name)
            if not (isinstance(value, int) and not isinstance(value, bool) and value >= -1):
                raise ConfigError(f"ray.{name}={value!r}: expected an integer >= -1 (-1: forever)")


def init_ray(config: RayConfig):
    """The ``ray`` module, initialised: left as it is when already running (tests and notebooks
    start Ray themselves), else joining ``config.address`` / RAY_ADDRESS, else a local instance."""
    import ray

    if ray.is_initialized():
        return ray
    kwargs: dict[str, Any] = {"include_dashboard": False, "log_to_driver": True}
    address = config.address or os.environ.get("RAY_ADDRESS")
    if address:
        kwargs["address"] = address
    else:
        kwargs["address"] = "local"
        if config.num_cpus is not None:
            kwargs["num_cpus"] = config.num_cpus
    ray.init(**kwargs)
    return ray


@contextmanager
def actors(cls: type, count: int, config: RayConfig, *args: Any, resources: Optional[dict] = None) -> Iterator[list]:
    """``count`` actors of ``cls(*args)`` (one CPU each unless ``resources`` says otherwise),
    restarted per ``config``; killed when the block ends, whatever ended it."""
    ray = init_ray(config)
    remote_cls = ray.remote(**(resources or {"num_cpus": 1}))(cls)
    pool = [remote_cls.options(max_restarts=config.max_restarts, max_task_retries=config.max_task_retries)
            .remote(*args) for _ in range(count)]
    try:
        yield pool
    finally:
        for actor in pool:
            ray.kill(actor, no_restart=True)


def map_unordered(pool: Sequence[Any], items: Iterable[Any], call: Callable[[Any, Any], Any],
                  failed: Callable[[Any, BaseException], dict]) -> Iterator[tuple[Any, Any]]:
    """Yield ``(item, result)`` as results arrive: ``call(actor, item)`` submits one item (returns
    an ObjectRef); each actor has one item in flight. An item whose actor died for good yields
    ``failed(item, exc)`` as its result."""
    import ray

    queue = list(items)
    in_flight: dict[Any, tuple[Any, Any]] = {}
    for actor in pool:
        if queue:
            item = queue.pop(0)
            in_flight[call(actor, item)] = (actor, item)
    while in_flight:
        [ref], _ = ray.wait(list(in_flight), num_returns=1)
        actor, item = in_flight.pop(ref)
        try:
            result = ray.get(ref)
        except Exception as exc:
            if unavailable(exc):  # not lost: the same actor gets the item again
                in_flight[call(actor, item)] = (actor, item)
                continue
            result = failed(item, exc)  # the actor died more often than ray.max_restarts allows
        if queue:
            nxt = queue.pop(0)
            in_flight[call(actor, nxt)] = (actor, nxt)
        yield item, result


def unavailable(exc: BaseException) -> bool:
    """Whether a task failed only because its actor cannot be reached for now (Ray's
    ActorUnavailableError), e.g. its node was lost and the cluster has not declared the node dead
    yet (Ray's health checks take about 15 s). Ray counts every such attempt against
    ``max_task_retries`` and retries within seconds, so a lost node uses the retries up before the
    actor is restarted; the stages submit the item again instead, to the same actor: Ray runs it
    once the actor is back, or raises ActorDiedError when it died more often than ``max_restarts``."""
    from ray.exceptions import ActorUnavailableError

    return isinstance(exc, ActorUnavailableError)


def reason(exc: BaseException) -> str:
    """``Type: message`` of a failure, as every report and summary shows it. An error about a log
    (drivegen.errors.LogError, which carries ``log`` and a short ``reason``) gives the short reason:
    its report row names the log already. Every other error gives its whole message (a
    ScenarioError's names the scenario, the agent and the field)."""
    own = getattr(exc, "reason", None)
    text = own if isinstance(own, str) and hasattr(exc, "log") else str(exc)
    return f"{type(exc).__name__}: {text}"


def format_table(header: Sequence[str], rows: Sequence[Sequence[str]], footer: Sequence[str] = ()) -> str:
    """A Markdown table (columns padded to their widest cell) followed by footer lines."""
    widths = [max([len(h), *(len(row[j]) for row in rows)]) for j, h in enumerate(header)]

    def line(cells: Sequence[str]) -> str:
        return "| " + " | ".join(c.ljust(w) for c, w in zip(cells, widths)) + " |"

    rule = "|" + "|".join("-" * (w + 2) for w in widths) + "|"
    return "\n".join([line(header), rule, *(line(r) for r in rows), *footer])
