"""The drain process's heap: what was built to start it is kept out of the collector's way.

A drain thread holds each batch it reads (two lists per record, as Redis's reply is
parsed) while it writes the batch, so the batches outlive the young generations and every
few reads set off a collection of the oldest one, which walks the whole heap: up to 77 ms
a time with the ~100k objects a process holds once celery, SQLAlchemy and redis-py are
imported (48-152 ms per 60,000 records drained, measured), with every drain thread
stopped meanwhile.
``gc.freeze()`` moves what is alive at start (modules, settings, connections: alive for
the life of the process anyway) to a generation that is never collected, so those
collections walk the batches in flight alone. ``taskguard drain`` does it before its pool
starts; a process of your own that runs a :class:`~taskguard.drain.DrainPool` and little
else can do the same.
"""

from __future__ import annotations

import gc

__all__ = ["freeze_heap"]


def freeze_heap() -> int:
    """Collect what is garbage now, then freeze the rest (``gc.freeze()``): the collector
    leaves those objects alone from now on, and frees them only when no reference is
    left. For a process of its own: a cycle that becomes garbage later among them is not
    found, so call it once, when the process has built what it keeps.

    Returns:
        How many objects were frozen (``gc.get_freeze_count()``).
    """
    gc.collect()
    gc.freeze()
    return gc.get_freeze_count()
