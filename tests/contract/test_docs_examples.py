"""The documentation's ``python needs-redis`` examples run against the test Redis.

The convention for code blocks is in tests/unit/test_docs_examples.py, which runs every
other ``python`` example in-process. Here ``TASKGUARD_REDIS_URL`` and ``TASKGUARD_PREFIX``
point ``taskguard.connect()`` at the contract's Redis under its unique key prefix (deleted
afterwards), and the block runs in a temporary working directory, so
``sqlite:///example.db`` leaves nothing behind.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.unit.test_docs_examples import RUNNABLE, Block, run_block

from .harness import REDIS_ONLY, Contract

ON_REDIS = [block for block in RUNNABLE if block.needs_redis]


def test_some_examples_need_redis() -> None:
    # Guards the split: a broken ``needs-redis`` parse would otherwise pass vacuously.
    assert {block.path.name for block in ON_REDIS} >= {"caching.md", "write-behind.md"}


@REDIS_ONLY
@pytest.mark.usefixtures("isolated")
@pytest.mark.parametrize("block", ON_REDIS, ids=[block.id for block in ON_REDIS])
def test_example_runs_on_redis(
    block: Block, contract: Contract, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    assert contract.url is not None
    monkeypatch.setenv("TASKGUARD_REDIS_URL", contract.url)
    monkeypatch.setenv("TASKGUARD_PREFIX", contract.prefix)
    monkeypatch.chdir(tmp_path)
    run_block(block)
