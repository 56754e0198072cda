"""``taskguard version``: taskguard's version and those of the libraries it runs on."""

from __future__ import annotations

import platform
from importlib.metadata import PackageNotFoundError
from importlib.metadata import version as dist_version

import click

from taskguard import __version__

__all__ = ["version", "version_string"]

_DEPENDENCIES = (("celery", "celery"), ("kombu", "kombu"), ("redis-py", "redis"))


def _installed(distribution: str) -> str:
    try:
        return dist_version(distribution)
    except PackageNotFoundError:
        return "not installed"


def version_string() -> str:
    """``taskguard X.Y.Z (celery …, kombu …, redis-py …, Python …)``."""
    deps = ", ".join(f"{name} {_installed(dist)}" for name, dist in _DEPENDENCIES)
    return f"taskguard {__version__} ({deps}, Python {platform.python_version()})"


@click.command()
def version() -> None:
    """Show taskguard's version and those of celery, kombu and redis-py."""
    click.echo(version_string())
