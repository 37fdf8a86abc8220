"""Jobs through huey: ``SqliteHuey`` in the data directory (embedded default, consumer threads
inside the server process) or ``RedisHuey`` (``DELINEO_QUEUE=redis://...``; ``delineo worker``
processes consume). The queue carries only job ids; the job's state lives in the database."""

from __future__ import annotations

import logging
import threading
from typing import Callable

from huey import RedisHuey, SqliteHuey
from huey.consumer import Consumer

from delineo.service.config import Settings

log = logging.getLogger("delineo.service.queue")

TASK_NAME = "delineo.run_job"


class _EmbeddedConsumer(Consumer):
    """A huey consumer that leaves signal handling to its host (uvicorn, or ``delineo worker``)."""

    def _set_signal_handlers(self):  # noqa: D401
        return None


class JobQueue:
    def __init__(self, settings: Settings, run_job: Callable[[str], None]):
        self.settings = settings
        if settings.embedded_queue:
            settings.home.mkdir(parents=True, exist_ok=True)
            self.huey = SqliteHuey(name=settings.queue_name, filename=str(settings.home / "queue.db"), results=False, utc=True)
        else:
            self.huey = RedisHuey(name=settings.queue_name, url=settings.queue, results=False, utc=True)
        self._task = self.huey.task(retries=0, name=TASK_NAME)(run_job)
        self._consumer: Consumer | None = None
        self._thread: threading.Thread | None = None

    def enqueue(self, job_id: str) -> None:
        self._task(job_id)

    def pending(self) -> int:
        return self.huey.pending_count()

    def flush(self) -> None:
        self.huey.flush()

    def consumer(self, workers: int | None = None) -> Consumer:
        return _EmbeddedConsumer(self.huey, workers=workers or self.settings.workers, worker_type="thread",
                                 periodic=False, initial_delay=0.1, max_delay=1.0, check_worker_health=True)

    def start_consumer(self, workers: int | None = None) -> None:
        """Start consumer threads in this process (embedded mode, or ``delineo worker``)."""
        if self._consumer is not None:
            return
        self._consumer = self.consumer(workers)
        self._consumer.start()
        log.info("job consumer started (%s thread(s), %s)", self._consumer.workers, type(self.huey).__name__)

    def stop_consumer(self) -> None:
        if self._consumer is not None:
            self._consumer.stop(graceful=False)
            self._consumer = None

    def close(self) -> None:
        self.stop_consumer()
        try:
            self.huey.storage.close()
        except Exception:  # pragma: no cover
            pass
