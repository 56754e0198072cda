"""What the demo's parent process tells its worker subprocesses, through the environment."""

from __future__ import annotations

import os
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from urllib.parse import parse_qs, urlsplit

__all__ = [
    "BREAKER_STAGE",
    "CLUSTER_STAGE",
    "PARK_STAGE",
    "STAGES",
    "WRITEBEHIND_STAGE",
    "DemoConfig",
    "broker_url_for",
]

_ENV = {
    "redis_url": "TASKGUARD_DEMO_REDIS_URL",
    "broker_url": "TASKGUARD_DEMO_BROKER_URL",
    "prefix": "TASKGUARD_DEMO_PREFIX",
    "rate": "TASKGUARD_DEMO_RATE",
}
#: Optional: set only for the write-behind stage's workers.
_DB_URL = "TASKGUARD_DEMO_DB_URL"
#: Optional: set only for the Cluster stage's workers (guard state apart from the broker).
_GUARD_URL = "TASKGUARD_DEMO_GUARD_URL"
_DRAIN = "TASKGUARD_DEMO_DRAIN"

#: The demo's two rate-limit stages, by short name (also their queue and record suffix).
STAGES = ("celery", "taskguard")
#: The concurrency-cap (parking) stage's short name (its queue and record suffix).
PARK_STAGE = "park"
#: The circuit-breaker stage's short name (its queue and record suffix).
BREAKER_STAGE = "breaker"
#: The write-behind stage's short name (its queue and record suffix).
WRITEBEHIND_STAGE = "writebehind"
#: The Redis Cluster stage's short name (its queue and record suffix).
CLUSTER_STAGE = "cluster"


def broker_url_for(redis_url: str) -> str:
    """The kombu broker URL for a redis-py URL (kombu spells unix sockets differently).

    Example:
        >>> broker_url_for("unix:///run/redis.sock?db=3")
        'redis+socket:///run/redis.sock?virtual_host=3'
        >>> broker_url_for("redis://127.0.0.1:6379/5")
        'redis://127.0.0.1:6379/5'
    """
    parts = urlsplit(redis_url)
    if parts.scheme != "unix":
        return redis_url
    db = parse_qs(parts.query).get("db", ["0"])[0]
    return f"redis+socket://{parts.path}?virtual_host={db}"


@dataclass(frozen=True, kw_only=True)
class DemoConfig:
    """One demo run's wiring.

    Attributes:
        redis_url: redis-py URL of the Redis holding guard state and the demo's records.
        broker_url: kombu URL of the same Redis, used as the Celery broker.
        prefix: Unique namespace for every key and queue of this run, so a run on a
            shared Redis never touches anything else (and can delete what it wrote).
        rate: The rate limit, in tasks per second, that both stages configure.
        db_url: The write-behind stage's database (SQLAlchemy URL), "" when unset.
        drain: Whether this worker runs a drain pool (the write-behind stage's workers).
        guard_url: Where guard state lives when not on ``redis_url`` (the Cluster stage's
            workers: a ``redis+cluster://`` URL), "" when unset.
    """

    redis_url: str
    broker_url: str
    prefix: str
    rate: int = 10
    db_url: str = ""
    drain: bool = False
    guard_url: str = ""

    @classmethod
    def new(cls, redis_url: str, *, rate: int = 10, db_url: str = "") -> DemoConfig:
        """A config with a fresh, unique prefix."""
        return cls(
            redis_url=redis_url,
            broker_url=broker_url_for(redis_url),
            prefix=f"tgdemo-{uuid.uuid4().hex[:8]}",
            rate=rate,
            db_url=db_url,
        )

    @property
    def table(self) -> str:
        """The write-behind stage's table, unique to this run."""
        return self.prefix.replace("-", "_") + "_kv"

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> DemoConfig:
        """Read the config the parent passed (see :meth:`to_env`).

        Raises:
            RuntimeError: A variable is missing: the module was imported outside the demo.
        """
        env = os.environ if environ is None else environ
        missing = [name for name in _ENV.values() if not env.get(name)]
        if missing:
            raise RuntimeError(
                f"taskguard.demo.app is started by `taskguard demo`; {', '.join(missing)} not set"
            )
        return cls(
            redis_url=env[_ENV["redis_url"]],
            broker_url=env[_ENV["broker_url"]],
            prefix=env[_ENV["prefix"]],
            rate=int(env[_ENV["rate"]]),
            db_url=env.get(_DB_URL, ""),
            drain=env.get(_DRAIN) == "1",
            guard_url=env.get(_GUARD_URL, ""),
        )

    def to_env(self) -> dict[str, str]:
        """Environment variables from which a worker rebuilds this config."""
        return {
            _ENV["redis_url"]: self.redis_url,
            _ENV["broker_url"]: self.broker_url,
            _ENV["prefix"]: self.prefix,
            _ENV["rate"]: str(self.rate),
            _DB_URL: self.db_url,
            _DRAIN: "1" if self.drain else "0",
            _GUARD_URL: self.guard_url,
        }

    def queue(self, stage: str) -> str:
        """The queue that stage's tasks (and only them) go through."""
        return f"{self.prefix}.{stage}"

    def starts_key(self, stage: str) -> str:
        """Redis list of one record per task start in ``stage``."""
        return f"{self.prefix}:demo:starts:{stage}"

    def deferrals_key(self, stage: str) -> str:
        """Redis counter of deferrals in ``stage`` (from the ``task_deferred`` signal)."""
        return f"{self.prefix}:demo:deferrals:{stage}"

    def failures_key(self, stage: str) -> str:
        """Redis list of one record per task that ended FAILURE in ``stage``."""
        return f"{self.prefix}:demo:failures:{stage}"

    def transitions_key(self) -> str:
        """Redis list of the demo breaker's state changes (``circuit_state_changed``)."""
        return f"{self.prefix}:demo:transitions"

    def done_key(self, stage: str) -> str:
        """Redis counter of tasks of ``stage`` that finished their work."""
        return f"{self.prefix}:demo:done:{stage}"

    def drained_key(self) -> str:
        """Redis hash of the drain's totals (``records``, ``rows``, ``batches``)."""
        return f"{self.prefix}:demo:drained"
