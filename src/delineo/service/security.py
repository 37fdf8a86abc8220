"""Accounts: argon2 password hashes (argon2-cffi), session cookies and Bearer API tokens.

Tokens are 32 random bytes (URL-safe base64) handed to the client once; only their SHA-256 is
stored, so a database leak does not leak usable tokens. A session cookie is a token of kind
``session`` that expires after ``DELINEO_SESSION_IDLE_MIN`` minutes without use. An API token
expires at its ``expires_at`` (``DELINEO_TOKEN_DAYS`` by default, at most ``DELINEO_TOKEN_MAX_DAYS``)
and carries a scope (:data:`SCOPES`), enforced by :mod:`delineo.service.routes.deps`.
"""

from __future__ import annotations

import hashlib
import re
import secrets
from datetime import datetime, timedelta, timezone

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from delineo.service.models import ApiToken, User, utcnow

SESSION_COOKIE = "delineo_session"
USERNAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
MIN_PASSWORD = 8
#: what an API token may do: ``read`` (GET only), ``contour`` (everything a user does with their
#: own studies: upload, contour, edit, send, delete), ``admin`` (also the administrator's routes;
#: administrators' tokens only). Sessions have their account's full power.
SCOPES = ("read", "contour", "admin")

_hasher = PasswordHasher()


def hash_password(password: str) -> str:
    return _hasher.hash(password)


def verify_password(password_hash: str, password: str) -> bool:
    try:
        return _hasher.verify(password_hash, password)
    except (VerifyMismatchError, VerificationError, InvalidHashError):
        return False


# a hash to verify against when the user does not exist, so timing does not reveal user names
_DUMMY_HASH = hash_password(secrets.token_urlsafe(16))


def authenticate(db: Session, username: str, password: str) -> User | None:
    user = db.scalar(select(User).where(User.username == username))
    if user is None:
        verify_password(_DUMMY_HASH, password)
        return None
    if not verify_password(user.password_hash, password):
        return None
    if _hasher.check_needs_rehash(user.password_hash):
        user.password_hash = hash_password(password)
    return user


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def _aware(d: datetime) -> datetime:
    return d if d.tzinfo else d.replace(tzinfo=timezone.utc)


def issue_token(db: Session, user: User, kind: str = "api", name: str = "", scope: str | None = None,
                expires_at: datetime | None = None) -> tuple[str, ApiToken]:
    token = secrets.token_urlsafe(32)
    scope = scope or ("admin" if user.is_admin else "contour")
    row = ApiToken(user_id=user.id, token_hash=token_hash(token), kind=kind, name=name[:128], scope=scope, expires_at=expires_at)
    db.add(row)
    db.flush()
    return token, row


class TokenExpired(Exception):
    """An API token past its ``expires_at`` (the message says when it expired)."""


def token_row(db: Session, token: str, kind: str | None, session_idle_min: float) -> ApiToken | None:
    """The live session or API token row for ``token`` (None when unknown, of another kind, or a
    session idle too long); raises :class:`TokenExpired` for an API token past its expiry."""
    row = db.scalar(select(ApiToken).where(ApiToken.token_hash == token_hash(token)))
    if row is None or (kind is not None and row.kind != kind):
        return None
    now = utcnow()
    last = _aware(row.last_used_at)
    if row.kind == "session" and now - last > timedelta(minutes=session_idle_min):
        db.delete(row)
        return None
    if row.expires_at is not None and now >= _aware(row.expires_at):
        raise TokenExpired(f"this API token ({row.name or 'no name'}) expired on {_aware(row.expires_at):%Y-%m-%d %H:%M} UTC: "
                           f"sign in and create a new one")
    if now - last > timedelta(seconds=60):  # do not write on every request
        row.last_used_at = now
    return row


def user_for_token(db: Session, token: str, kind: str | None, session_idle_min: float) -> User | None:
    try:
        row = token_row(db, token, kind, session_idle_min)
    except TokenExpired:
        return None
    return row.user if row is not None else None


def revoke_token(db: Session, token: str) -> None:
    row = db.scalar(select(ApiToken).where(ApiToken.token_hash == token_hash(token)))
    if row is not None:
        db.delete(row)


def revoke_user_tokens(db: Session, user_id: int, keep: str | None = None) -> int:
    """Delete every session and API token of a user except the one whose token is ``keep``;
    returns how many were revoked (after a password change, or by an administrator)."""
    keep_hash = token_hash(keep) if keep else None
    rows = [r for r in db.scalars(select(ApiToken).where(ApiToken.user_id == user_id)) if r.token_hash != keep_hash]
    for r in rows:
        db.delete(r)
    db.flush()
    return len(rows)


def check_new_user(username: str, password: str) -> str | None:
    """A message for a person when the user name or password is not acceptable, else None."""
    if not USERNAME_RE.match(username or ""):
        return "user names are 1-64 letters, digits, '.', '_' or '-', starting with a letter or digit"
    if len(password or "") < MIN_PASSWORD:
        return f"passwords need at least {MIN_PASSWORD} characters"
    return None


def ensure_admin(db: Session, password: str | None = None) -> str | None:
    """With no users at all, create ``admin``; returns the password when one was generated."""
    if db.scalar(select(func.count()).select_from(User)):
        return None
    generated = password is None
    password = password or secrets.token_urlsafe(12)
    db.add(User(username="admin", password_hash=hash_password(password), is_admin=True))
    db.flush()
    return password if generated else None


def now_utc() -> datetime:
    return utcnow()
