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
``DELINEO_MAX_VOXELS``         voxels allowed in an uploaded NIfTI, read from its header before any
                               data (default 268435456 = 512 x 512 x 1024); more gets 413
``DELINEO_MAX_NIFTI_MB``       uncompressed size allowed for an uploaded NIfTI (declared in its header
                               and counted while decompressing, so ``.nii.gz`` bombs are refused;
                               default 2048); more gets 413
``DELINEO_UPLOAD_IDLE_S``      an upload that sends nothing for this long is dropped (default 60)
``DELINEO_SESSION_IDLE_MIN``   a browser session unused for this long expires (default 720)
``DELINEO_ADMIN_PASSWORD``     password of the first ``admin`` (default: random, printed once)
``DELINEO_JOB_HEARTBEAT_S``    a running job marks itself alive this often (default 10)
``DELINEO_JOB_STALE_S``        a running job silent for this long belonged to a worker that died:
                               it is put back on the queue for another worker (default 90)
``DELINEO_RETENTION_DAYS``     delete studies (images and results, also the DICOM node's finished
                               series) older than this many days, each deletion in the access log;
                               0 or unset: keep everything (default)
``DELINEO_RETENTION_INTERVAL_S`` how often the server looks for expired studies (default 3600)
``DELINEO_LOGIN_MAX_FAILURES`` failed sign-ins for one user name from one client address before
                               further attempts for that name from that address are refused with 429
                               (default 5); the same name from another address is not refused
``DELINEO_LOGIN_MAX_FAILURES_PER_ADDRESS`` failed sign-ins from one client address, any user names,
                               before every sign-in from that address is refused (default 20)
``DELINEO_LOGIN_LOCKOUT_S``    the window the failures are counted in, and how long the refusal
                               lasts after the last of them (default 300)
``DELINEO_TOKEN_DAYS``         an API token expires this many days after it is made, unless its maker
                               asks for fewer (default 90)
``DELINEO_TOKEN_MAX_DAYS``     the longest life a token may be given (default 365)
``DELINEO_ALLOWED_ORIGINS``    origins (``https://host[:port]``, comma-separated) besides the server's
                               own whose pages may send state-changing requests with the session
                               cookie: the public address when a reverse proxy does not pass the
                               ``Host`` header on (default: none)
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


def _origin(text: str) -> str:
    """``scheme://host[:port]`` as browsers send it in ``Origin`` (lower case, no path, no slash)."""
    from urllib.parse import urlsplit

    from delineo.service.csrf import normalize_origin

    raw = text.strip().rstrip("/")
    origin = normalize_origin(raw)
    if origin is None or urlsplit(raw).path or urlsplit(raw).query or "@" in raw:
        raise ValueError(f"DELINEO_ALLOWED_ORIGINS: {text.strip()!r} is not an origin like https://contour.example.org[:port]")
    return origin


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
    max_voxels: int = 268_435_456
    max_nifti_mb: float = 2048.0
    upload_idle_s: float = 60.0
    session_idle_min: float = 720.0
    admin_password: str | None = None
    job_heartbeat_s: float = 10.0
    job_stale_s: float = 90.0
    retention_days: float = 0.0
    retention_interval_s: float = 3600.0
    login_max_failures: int = 5
    login_max_failures_per_address: int = 20
    login_lockout_s: float = 300.0
    token_default_days: float = 90.0
    token_max_days: float = 365.0
    allowed_origins: tuple[str, ...] = ()
    #: run the embedded queue's consumer threads inside the app (False: tests that drive jobs by hand)
    start_consumer: bool = True

    def __post_init__(self) -> None:
        self.home = Path(self.home).expanduser().resolve()
        if not self.database_url:
            self.database_url = f"sqlite:///{self.home / 'delineo.db'}"
        if self.queue != "embedded" and not self.queue.startswith(("redis://", "rediss://", "unix://")):
            raise ValueError(f"DELINEO_QUEUE must be 'embedded' or a redis:// URL, got {self.queue!r}")
        if self.job_heartbeat_s <= 0 or self.job_stale_s < 3 * self.job_heartbeat_s:
            raise ValueError(f"DELINEO_JOB_STALE_S ({self.job_stale_s}) must be at least three heartbeats "
                             f"(DELINEO_JOB_HEARTBEAT_S {self.job_heartbeat_s}), or live jobs would be taken away")
        if self.retention_days < 0:
            raise ValueError(f"DELINEO_RETENTION_DAYS must be 0 (off) or a number of days, got {self.retention_days}")
        if not 0 < self.token_default_days <= self.token_max_days:
            raise ValueError(f"DELINEO_TOKEN_DAYS ({self.token_default_days}) must be more than 0 and at most "
                             f"DELINEO_TOKEN_MAX_DAYS ({self.token_max_days})")
        if isinstance(self.allowed_origins, str):
            self.allowed_origins = tuple(self.allowed_origins.split(","))
        self.allowed_origins = tuple(_origin(o) for o in self.allowed_origins if o.strip())

    @property
    def embedded_queue(self) -> bool:
        return self.queue == "embedded"

    @property
    def max_upload_bytes(self) -> int:
        return int(self.max_upload_mb * 1024 * 1024)

    @property
    def max_unzipped_bytes(self) -> int:
        return int(self.max_unzipped_mb * 1024 * 1024)

    @property
    def max_nifti_bytes(self) -> int:
        return int(self.max_nifti_mb * 1024 * 1024)

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
            max_voxels=int(_float("DELINEO_MAX_VOXELS", 268_435_456)),
            max_nifti_mb=_float("DELINEO_MAX_NIFTI_MB", 2048.0),
            upload_idle_s=_float("DELINEO_UPLOAD_IDLE_S", 60.0),
            session_idle_min=_float("DELINEO_SESSION_IDLE_MIN", 720.0),
            admin_password=env.get("DELINEO_ADMIN_PASSWORD") or None,
            job_heartbeat_s=_float("DELINEO_JOB_HEARTBEAT_S", 10.0),
            job_stale_s=_float("DELINEO_JOB_STALE_S", 90.0),
            retention_days=_float("DELINEO_RETENTION_DAYS", 0.0),
            retention_interval_s=_float("DELINEO_RETENTION_INTERVAL_S", 3600.0),
            login_max_failures=int(_float("DELINEO_LOGIN_MAX_FAILURES", 5)),
            login_max_failures_per_address=int(_float("DELINEO_LOGIN_MAX_FAILURES_PER_ADDRESS", 20)),
            login_lockout_s=_float("DELINEO_LOGIN_LOCKOUT_S", 300.0),
            token_default_days=_float("DELINEO_TOKEN_DAYS", 90.0),
            token_max_days=_float("DELINEO_TOKEN_MAX_DAYS", 365.0),
            allowed_origins=tuple(env.get("DELINEO_ALLOWED_ORIGINS", "").split(",")),
        )
        values.update(overrides)
        return cls(**values)
