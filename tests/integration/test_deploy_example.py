"""The example project docker-compose.yml runs, run here as a real worker without Docker.

Its `celery -A proj worker` (the compose file's command) takes guarded tasks whose
write-behind writes its own drain bootstep moves into the database.
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path

from celery import Celery

from taskguard.sinks.sql import SQLStore
from taskguard.testing import WorkerProcess

EXAMPLE = Path(__file__).resolve().parents[2] / "deploy" / "example"


def test_example_worker_runs_guarded_tasks_and_drains_their_writes(
    redis_url: str, tg_prefix: str, celery_queue: str, tmp_path: Path
) -> None:
    db_url = f"sqlite:///{tmp_path / 'example.db'}"
    env = {
        "CELERY_BROKER_URL": redis_url,
        "TASKGUARD_REDIS_URL": redis_url,
        "TASKGUARD_DB_URL": db_url,
        "TASKGUARD_PREFIX": tg_prefix,
    }
    worker = WorkerProcess("proj", concurrency=2, queues=[celery_queue], env=env, cwd=EXAMPLE)
    client = Celery("example-client", broker=redis_url, set_as_current=False)
    store = SQLStore(db_url)
    try:
        worker.start(timeout=60)
        for n in range(20):
            client.send_task(
                "proj.record_reading", args=(f"sensor-{n}", n * 0.5), queue=celery_queue
            )
        deadline = time.monotonic() + 60
        keys = [f"sensor-{n}" for n in range(20)]
        while len(rows := store.load_many("readings", keys)) < 20:
            assert time.monotonic() < deadline, (
                f"{len(rows)} of 20 rows drained:\n{worker.log()[-3000:]}"
            )
            time.sleep(0.2)
        assert {key: row.value for key, row in rows.items()} == {
            f"sensor-{n}": {"value": n * 0.5} for n in range(20)
        }
    finally:
        worker.stop()
        shutil.rmtree(worker.logfile.parent, ignore_errors=True)
        store.close()
        client.close()
