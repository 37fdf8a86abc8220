"""Service settings, read from the environment.

``DELINEO_HOME``               data directory (default ``./var``): database, queue, uploads, studies
``DELINEO_DATABASE_URL``       SQLAlchemy URL (default SQLite ``$DELINEO_HOME/delineo.db``;
                               e.g. ``postgresql+psycopg://user@host/db``)
``DELINEO_QUEUE``              ``embedded`` (huey on SQLite in the data directory, consumer threads
                               inside the server) or ``redis://host:port/db`` (``delineo worker``
                               processes take the jobs)
``DELINEO_QUEUE_NAME``         queue name (default ``delineo``), to share one Redis between setups
``DELINEO_WORKERS``            consumer threads (embedded server or ``delineo worker``; default 1)
``DELINEO_DEVICE``             inference device for jobs: ``cpu``, ``cuda`` or ``auto`` (default)
``DELINEO_MAX_UPLOAD_MB``      upload size cap (default 1024); larger uploads get 413
``DELINEO_MAX_UNZIPPED_MB``    total uncompressed size allowed in a zip (default 4096)
``DELINEO_MAX_ZIP_RATIO``      compression ratio above which a zip is refused as a bomb (default 200)
``DELINEO_MAX_FILES``          files allowed in one upload or zip (default 5000)
``DELINEO_UPLOAD_IDLE_S``      an upload that sends nothing for this long is dropped (default 60)
``DELINEO_SESSION_IDLE_MIN``   a browser session unused for this long expires (default 720)
``DELINEO_ADMIN_PASSWORD``     password of the first ``admin`` (default: random, printed once)
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path


def _float(name: str, default: float) -> float:
    raw = os.environ.get(name)
    if raw is None or raw.strip() == "":
        return default
    try:
        return float(raw)
    except ValueError as exc:
        raise ValueError(f"{name}={raw!r} is not a number") from exc


@dataclass
class Settings:
    home: Path = field(default_factory=lambda: Path("var"))
    database_url: str = ""
    queue: str = "embedded"
    queue_name: str = "delineo"
    workers: int = 1
    device: str = "auto"
    max_upload_mb: float = 1024.0
    max_unzipped_mb: float = 4096.0
    max_zip_ratio: float = 200.0
    max_files: int = 5000
    upload_idle_s: float = 60.0
    session_idle_min: float = 720.0
    admin_password: str | None = None
    #: run the embedded queue's consumer threads inside the app (False: tests that drive jobs by hand)
    start_consumer: bool = True

    def __post_init__(self) -> None:
        self.home = Path(self.home).expanduser().resolve()
        if not self.database_url:
            self.database_url = f"sqlite:///{self.home / 'delineo.db'}"
        if self.queue != "embedded" and not self.queue.startswith(("redis://", "rediss://", "unix://")):
            raise ValueError(f"DELINEO_QUEUE must be 'embedded' or a redis:// URL, got {self.queue!r}")

    @property
    def embedded_queue(self) -> bool:
        return self.queue == "embedded"

    @property
    def max_upload_bytes(self) -> int:
        return int(self.max_upload_mb * 1024 * 1024)

    @property
    def max_unzipped_bytes(self) -> int:
        return int(self.max_unzipped_mb * 1024 * 1024)

    @classmethod
    def from_env(cls, **overrides) -> "Settings":
        env = os.environ
        values = dict(
            home=Path(env.get("DELINEO_HOME", "var")),
            database_url=env.get("DELINEO_DATABASE_URL", ""),
            queue=env.get("DELINEO_QUEUE", "embedded") or "embedded",
            queue_name=env.get("DELINEO_QUEUE_NAME", "delineo") or "delineo",
            workers=int(_float("DELINEO_WORKERS", 1)),
            device=env.get("DELINEO_DEVICE", "auto") or "auto",
            max_upload_mb=_float("DELINEO_MAX_UPLOAD_MB", 1024.0),
            max_unzipped_mb=_float("DELINEO_MAX_UNZIPPED_MB", 4096.0),
            max_zip_ratio=_float("DELINEO_MAX_ZIP_RATIO", 200.0),
            max_files=int(_float("DELINEO_MAX_FILES", 5000)),
            upload_idle_s=_float("DELINEO_UPLOAD_IDLE_S", 60.0),
            session_idle_min=_float("DELINEO_SESSION_IDLE_MIN", 720.0),
            admin_password=env.get("DELINEO_ADMIN_PASSWORD") or None,
        )
        values.update(overrides)
        return cls(**values)
