"""Sign-in throttling: after ``DELINEO_LOGIN_MAX_FAILURES`` failed sign-ins for one user name from
one client address (or ``DELINEO_LOGIN_MAX_FAILURES_PER_ADDRESS`` from one client address, any
user name) within ``DELINEO_LOGIN_LOCKOUT_S`` seconds, further attempts for that name from that
address (or from that address at all) are refused (HTTP 429, ``Retry-After``) without checking the
password, until the oldest of those failures is that old. The same account from another address
is not refused: a stranger guessing an account's password does not lock its owner out (issue 36).

Failures are rows in the database (``login_failures``), so the count holds across several server
processes and restarts. An attempt counts for its user name from before its password is checked,
so attempts sent in parallel cannot get past the limit (for that name from that address); for the address only confirmed failures
count (many users behind one proxy sign in at the same time). Refused attempts are not counted (a refusal costs no password check), so
the lock ends on time; failures and the first refusal of each lock go to the access log.
"""

from __future__ import annotations

import logging
import math
from datetime import datetime, timedelta, timezone

from sqlalchemy import delete, exists, select, update
from sqlalchemy.orm import Session

from delineo.service import audit
from delineo.service.config import Settings
from delineo.service.db import Database
from delineo.service.models import AccessEvent, LoginFailure, utcnow

log = logging.getLogger("delineo.service.auth")


def _aware(d: datetime) -> datetime:
    return d if d.tzinfo else d.replace(tzinfo=timezone.utc)


def _key(username: str) -> str:
    return username.strip().lower()[:64]


def retry_after(db: Session, settings: Settings, username: str, address: str,
                before_id: int | None = None) -> tuple[float, datetime | None]:
    """(seconds until a sign-in for ``username`` from ``address`` is accepted again, 0 when it is
    now; the latest failure that counts). ``before_id``: count only attempts before that one."""
    now = utcnow()
    window = timedelta(seconds=settings.login_lockout_s)
    wait, latest = 0.0, None
    same_address = LoginFailure.address == address[:64]
    for where, limit, per_address in (((LoginFailure.username == _key(username), same_address), settings.login_max_failures, False),
                                      ((same_address,), settings.login_max_failures_per_address, True)):
        if limit <= 0:
            continue
        q = select(LoginFailure.at).where(*where, LoginFailure.at >= now - window)
        if before_id is not None:
            q = q.where(LoginFailure.id < before_id)
        if per_address:  # many users behind one address sign in at once: count only real failures
            q = q.where(LoginFailure.confirmed.is_(True))
        times = [_aware(t) for t in db.scalars(q.order_by(LoginFailure.at.desc()).limit(limit))]
        if len(times) >= limit:
            wait = max(wait, (times[-1] + window - now).total_seconds())
            latest = max(latest or times[0], times[0])
    return max(wait, 0.0), latest


def begin(database: Database, settings: Settings, username: str, address: str) -> tuple[int | None, int | None]:
    """Count this attempt as a failure *before* its password is checked, so that attempts sent at
    the same time count each other; then look at the attempts before it. Returns (the attempt's
    row id, None) when the password may be checked, or (None, whole seconds to wait) when the
    attempt is refused (then it is not counted, and the first refusal of a lock is logged)."""
    with database.session() as db:
        row = LoginFailure(at=utcnow(), username=_key(username), address=address[:64], confirmed=False)
        db.add(row)
        db.flush()
        attempt = row.id
    with database.session() as db:
        wait, latest = retry_after(db, settings, username, address, before_id=attempt)
        if wait <= 0:
            return attempt, None
        db.execute(delete(LoginFailure).where(LoginFailure.id == attempt))
        actor = username[:64]
        already = db.scalar(select(exists().where(AccessEvent.action == "login-refused", AccessEvent.actor == actor,
                                                  AccessEvent.address == address[:64], AccessEvent.at >= latest)))
        if not already:  # once per lock, not once per attempt: a flood does not fill the log
            audit.record(db, "login-refused", actor=actor, address=address[:64],
                         detail=f"too many failed sign-ins; refused for {math.ceil(wait)} s")
    log.warning("sign-in for %r from %s refused for %d s after repeated failures", username[:64], address, math.ceil(wait))
    return None, max(1, math.ceil(wait))


def failed(database: Database, settings: Settings, attempt: int, username: str, address: str) -> None:
    """The attempt's password was wrong: its row stays, confirmed; logged (own transaction: the
    request itself ends in an error)."""
    now = utcnow()
    with database.session() as db:
        db.execute(update(LoginFailure).where(LoginFailure.id == attempt).values(confirmed=True))
        audit.record(db, "login-failed", actor=username[:64], address=address[:64], detail="wrong user name or password")
        db.execute(delete(LoginFailure).where(LoginFailure.at < now - timedelta(seconds=max(settings.login_lockout_s, 60) * 2)))
    log.warning("failed sign-in for %r from %s", username[:64], address)


def succeeded(db: Session, username: str, address: str) -> None:
    """A correct password clears the user name's failures from this address, this attempt's too
    (not those from other addresses: the owner signing in does not lift a stranger's lock)."""
    db.execute(delete(LoginFailure).where(LoginFailure.username == _key(username), LoginFailure.address == address[:64]))
