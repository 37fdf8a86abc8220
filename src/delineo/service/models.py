"""Database tables (SQLAlchemy 2.x declarative). Schema changes go through Alembic (``alembic/``)."""

from __future__ import annotations

import json
import uuid
from datetime import datetime, timezone
from typing import Any

from sqlalchemy import Boolean, DateTime, Float, ForeignKey, Integer, String, Text
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

JOB_STATES = ("queued", "running", "done", "failed")


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


def new_id() -> str:
    return uuid.uuid4().hex


class Base(DeclarativeBase):
    pass


class User(Base):
    __tablename__ = "users"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    username: Mapped[str] = mapped_column(String(64), unique=True, index=True)
    password_hash: Mapped[str] = mapped_column(String(255))
    is_admin: Mapped[bool] = mapped_column(Boolean, default=False)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)

    tokens: Mapped[list["ApiToken"]] = relationship(back_populates="user", cascade="all, delete-orphan")
    studies: Mapped[list["Study"]] = relationship(back_populates="owner")


class ApiToken(Base):
    """A browser session (``kind='session'``, cookie) or an API token (``kind='api'``, Bearer).
    Only the SHA-256 of the random token is stored. An API token has a ``scope`` (``read``,
    ``contour`` or ``admin``: :data:`delineo.service.security.SCOPES`) and expires at
    ``expires_at``; a session has its account's full power and expires when idle."""

    __tablename__ = "api_tokens"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    token_hash: Mapped[str] = mapped_column(String(64), unique=True, index=True)
    kind: Mapped[str] = mapped_column(String(16), default="api")
    name: Mapped[str] = mapped_column(String(128), default="")
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    last_used_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    scope: Mapped[str] = mapped_column(String(16), default="contour")
    expires_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)

    user: Mapped[User] = relationship(back_populates="tokens")


class Study(Base):
    """An uploaded image: a NIfTI CT, a PNG X-ray or a DICOM series (files under the data directory)."""

    __tablename__ = "studies"

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    owner_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    name: Mapped[str] = mapped_column(String(255))
    kind: Mapped[str] = mapped_column(String(16))  # nifti | png | dicom
    input_path: Mapped[str] = mapped_column(String(512))  # relative to the study folder
    size_bytes: Mapped[int] = mapped_column(Integer, default=0)
    info_json: Mapped[str] = mapped_column(Text, default="{}")
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)

    owner: Mapped[User] = relationship(back_populates="studies")
    jobs: Mapped[list["Job"]] = relationship(
        back_populates="study", cascade="all, delete-orphan", order_by="Job.created_at", passive_deletes=True
    )

    @property
    def info(self) -> dict[str, Any]:
        return json.loads(self.info_json or "{}")


class Job(Base):
    """One contouring run on a study. ``state``: queued -> running -> done | failed."""

    __tablename__ = "jobs"

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    study_id: Mapped[str] = mapped_column(ForeignKey("studies.id", ondelete="CASCADE"), index=True)
    model: Mapped[str] = mapped_column(String(255))
    structures_json: Mapped[str] = mapped_column(Text, default="null")
    state: Mapped[str] = mapped_column(String(16), default="queued", index=True)
    stage: Mapped[str] = mapped_column(String(32), default="queued")
    progress: Mapped[float] = mapped_column(Float, default=0.0)
    error: Mapped[str | None] = mapped_column(Text, nullable=True)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    started_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    #: last sign of life: of the worker running the job, or when the job was (re-)queued
    heartbeat_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    #: ``host:pid`` of the process that claimed the latest attempt
    worker: Mapped[str | None] = mapped_column(String(128), nullable=True)

    study: Mapped[Study] = relationship(back_populates="jobs")

    @property
    def structures(self) -> list[str] | None:
        return json.loads(self.structures_json or "null")


class AccessEvent(Base):
    """One line of the access log: who (a user, a DICOM AE title, or the system) did what to
    which study, when and from where. Patients appear only as a pseudonym (a short SHA-256 of the
    Patient ID, as in the logs); study names are not copied here (they can hold a patient's name)."""

    __tablename__ = "access_log"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow, index=True)
    actor_kind: Mapped[str] = mapped_column(String(8))  # user | ae | system
    actor: Mapped[str] = mapped_column(String(64))
    action: Mapped[str] = mapped_column(String(32), index=True)
    study_id: Mapped[str | None] = mapped_column(String(64), nullable=True, index=True)
    patient: Mapped[str | None] = mapped_column(String(16), nullable=True)
    address: Mapped[str | None] = mapped_column(String(64), nullable=True)
    detail: Mapped[str] = mapped_column(String(255), default="")


class LoginFailure(Base):
    """A failed sign-in (or one being checked), counted for throttling (per user name and per client address)."""

    __tablename__ = "login_failures"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow, index=True)
    username: Mapped[str] = mapped_column(String(64), index=True)
    address: Mapped[str] = mapped_column(String(64), index=True)
    #: False while the password is being checked (the attempt already counts for its user name)
    confirmed: Mapped[bool] = mapped_column(Boolean, default=False)


class PacsServer(Base):
    """A PACS (DICOMweb server) an administrator configured for the web page's search and
    contouring (:mod:`delineo.service.routes.pacs`). ``auth``: none | basic (``username`` and the
    password in ``secret``) | bearer (the token in ``secret``); ``secret`` is never sent to a browser.
    ``ca_bundle``, ``client_cert``, ``client_key``: PEM files on the server, for HTTPS."""

    __tablename__ = "pacs_servers"

    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    url: Mapped[str] = mapped_column(String(1024))
    auth: Mapped[str] = mapped_column(String(16), default="none")
    username: Mapped[str | None] = mapped_column(String(255), nullable=True)
    secret: Mapped[str | None] = mapped_column(Text, nullable=True)
    ca_bundle: Mapped[str | None] = mapped_column(String(1024), nullable=True)
    client_cert: Mapped[str | None] = mapped_column(String(1024), nullable=True)
    client_key: Mapped[str | None] = mapped_column(String(1024), nullable=True)
    timeout_s: Mapped[float] = mapped_column(Float, default=120.0)
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    updated_by: Mapped[str] = mapped_column(String(64), default="")
