"""Every runnable example in README.md and docs/*.md runs, so the docs cannot rot.

The convention for code blocks in the documentation
----------------------------------------------------

* A fence whose language is exactly ``python`` is **executed** by this test, each block in a
  fresh namespace (``__name__ == "__main__"``), so every such block must be self-contained:
  its own imports, its own Celery app, its own backend. It must run in-process and fast:
  ``taskguard.connect("memory://")``, ``Celery(..., broker="memory://")`` with
  ``taskguard`` ``redis_url: "memory://"``, and ``taskguard.clock.FakeClock`` instead of
  sleeping. Use ``assert`` to state what the example shows; ``print`` is fine too.
  A ``title="..."`` after the language is allowed (``python title="proj/tasks.py"``).
* A ``python needs-redis`` fence is executed too, against the test Redis, by
  ``tests/contract/test_docs_examples.py`` (a unit test needs no server): the
  ``TASKGUARD_REDIS_URL`` and ``TASKGUARD_PREFIX`` environment variables point
  ``taskguard.connect()`` at it under a unique key prefix (deleted afterwards), and the block
  runs in a temporary working directory, so ``sqlite:///example.db`` leaves nothing behind.
* A fence whose language is ``py`` is Python that is **shown, not run**: it needs a real
  Redis, a running worker, a Django project, or is a fragment. Pygments highlights both.
* Other languages are never run: ``bash``/``console`` for commands, ``text`` for output,
  ``toml``, ``yaml``, ``ini``, ``lua``. Any other language fails :func:`test_fence_languages`,
  so a typo such as ``pyhton`` cannot silently turn an example off.

Fences may be indented (inside an admonition or a list); the block is dedented by the
fence's indentation. Run just this file with::

    .venv/bin/pytest tests/unit/test_docs_examples.py -p no:cacheprovider
"""

from __future__ import annotations

import re
import textwrap
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DOC_FILES = sorted([ROOT / "README.md", *(ROOT / "docs").glob("*.md")])

RUN = "python"
SHOW_ONLY = {"py"}
NEVER_RUN = {"bash", "console", "shell", "text", "toml", "yaml", "ini", "lua", "json", "sql"}

_FENCE = re.compile(r"^(?P<indent>[ \t]*)(?P<fence>`{3,}|~{3,})(?P<info>.*)$")


@dataclass(frozen=True)
class Block:
    """One fenced code block of a Markdown file."""

    path: Path
    line: int  # 1-based line of the opening fence
    language: str
    source: str
    needs_redis: bool = False

    @property
    def id(self) -> str:
        return f"{self.path.relative_to(ROOT)}:{self.line}"


def _language(info: str) -> str:
    info = info.strip()
    if info.startswith("{"):  # attribute-list form: ``` {.python title="x"}
        match = re.match(r"\{\s*\.?([\w+-]+)", info)
        return match.group(1) if match else ""
    return info.split(maxsplit=1)[0] if info else ""


def iter_blocks(path: Path) -> Iterator[Block]:
    """Yield the fenced code blocks of ``path``; raise on an unclosed fence."""
    lines = path.read_text(encoding="utf-8").splitlines()
    index = 0
    while index < len(lines):
        opening = _FENCE.match(lines[index])
        if opening is None or ("`" in opening.group("info") and opening.group("fence")[0] == "`"):
            index += 1
            continue
        indent, fence = opening.group("indent"), opening.group("fence")
        start = index
        body: list[str] = []
        index += 1
        while index < len(lines):
            closing = _FENCE.match(lines[index])
            if (
                closing is not None
                and closing.group("fence")[0] == fence[0]
                and len(closing.group("fence")) >= len(fence)
                and not closing.group("info").strip()
            ):
                break
            body.append(lines[index][len(indent) :] if lines[index].startswith(indent) else "")
            index += 1
        else:
            raise AssertionError(f"{path.relative_to(ROOT)}:{start + 1}: unclosed code fence")
        index += 1
        yield Block(
            path=path,
            line=start + 1,
            language=_language(opening.group("info")),
            source=textwrap.dedent("\n".join(body)) + "\n",
            needs_redis="needs-redis" in opening.group("info").split(),
        )


ALL_BLOCKS = [block for path in DOC_FILES for block in iter_blocks(path)]
RUNNABLE = [block for block in ALL_BLOCKS if block.language == RUN]
IN_PROCESS = [block for block in RUNNABLE if not block.needs_redis]


def run_block(block: Block) -> None:
    """Execute ``block`` as a script, in a fresh namespace."""
    namespace: dict[str, object] = {"__name__": "__main__"}
    code = compile(block.source, block.id, "exec")
    try:
        exec(code, namespace)
    finally:
        namespace.clear()


@pytest.mark.usefixtures("isolated")
@pytest.mark.parametrize("block", IN_PROCESS, ids=[block.id for block in IN_PROCESS])
def test_example_runs(block: Block) -> None:
    run_block(block)


def test_documentation_has_runnable_examples() -> None:
    # Guards the collector itself: a broken fence regex would otherwise pass vacuously.
    pages = {block.path.name for block in RUNNABLE}
    for name in ("README.md", "quickstart.md", "rate-limits.md", "settings.md", "testing.md"):
        assert name in pages, f"{name} has no runnable ```python example"


@pytest.mark.parametrize("path", DOC_FILES, ids=[str(p.relative_to(ROOT)) for p in DOC_FILES])
def test_fence_languages(path: Path) -> None:
    known = {RUN, *SHOW_ONLY, *NEVER_RUN}
    for block in iter_blocks(path):
        assert block.language in known, (
            f"{block.id}: code fence language {block.language!r} is not one of "
            f"{sorted(known)}; see the convention at the top of {Path(__file__).name}"
        )
