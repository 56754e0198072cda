"""The ``taskguard`` command line, also available as ``celery taskguard``.

One click group serves both entry points: the ``taskguard`` console script calls
:func:`main`, and Celery finds :data:`taskguard` through the ``celery.commands`` entry
point. Each command lives in its own module and imports what it needs only when it runs,
so ``taskguard --help`` stays fast.
"""

from __future__ import annotations

import click

from .admin import breaker, lock
from .demo import demo
from .drain import drain, requeue_dead_letters
from .events import events
from .limits import limit
from .status import status
from .version import version, version_string

__all__ = ["main", "taskguard"]


@click.group(name="taskguard", context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(message="%(version)s", version=version_string(), prog_name="taskguard")
def taskguard() -> None:
    """Fleet-wide guards for Celery tasks: rate limits, locks, breakers, write-behind."""


taskguard.add_command(breaker)
taskguard.add_command(demo)
taskguard.add_command(drain)
taskguard.add_command(events)
taskguard.add_command(limit)
taskguard.add_command(lock)
taskguard.add_command(requeue_dead_letters)
taskguard.add_command(status)
taskguard.add_command(version)


def main() -> None:
    """Entry point of the ``taskguard`` console script."""
    taskguard(prog_name="taskguard")
