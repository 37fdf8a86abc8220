"""Dependencies shared by the routes: the service context, a DB session, the signed-in user."""

from __future__ import annotations

from typing import Iterator

from fastapi import Depends, HTTPException, Request
from sqlalchemy.orm import Session

from delineo.service.core import ServiceContext
from delineo.service.models import Study, User
from delineo.service.security import SESSION_COOKIE, TokenExpired, token_row

#: methods a ``read`` token may use
SAFE_METHODS = ("GET", "HEAD", "OPTIONS")


def get_ctx(request: Request) -> ServiceContext:
    return request.app.state.ctx


def get_db(ctx: ServiceContext = Depends(get_ctx)) -> Iterator[Session]:
    with ctx.db.session() as s:
        yield s


def bearer_token(request: Request) -> str | None:
    auth = request.headers.get("authorization", "")
    if auth.lower().startswith("bearer "):
        return auth[7:].strip() or None
    return None


def current_user(request: Request, db: Session = Depends(get_db, scope="function"), ctx: ServiceContext = Depends(get_ctx)) -> User:
    """The signed-in user, by API token (``Authorization: Bearer``) or else by session cookie.
    ``request.state.token_scope`` is the API token's scope, None for a session; a ``read`` token
    gets 403 on anything but GET/HEAD, an expired token 401 saying so."""
    token = bearer_token(request)
    row = None
    request.state.token_scope = None
    try:
        if token:
            row = token_row(db, token, "api", ctx.settings.session_idle_min)
        else:
            cookie = request.cookies.get(SESSION_COOKIE)
            if cookie:
                row = token_row(db, cookie, "session", ctx.settings.session_idle_min)
    except TokenExpired as exc:
        raise HTTPException(401, str(exc), headers={"WWW-Authenticate": "Bearer"}) from None
    if row is None:
        raise HTTPException(401, "sign in first (session expired or missing credentials)", headers={"WWW-Authenticate": "Bearer"})
    user = row.user
    if row.kind == "api":
        request.state.token_scope = row.scope
        if row.scope == "read" and request.method.upper() not in SAFE_METHODS:
            raise HTTPException(403, "this API token is read-only (scope 'read'): it cannot change anything; "
                                     "use a token with scope 'contour'")
    # end the transaction now: its database connection goes back to the pool while the endpoint
    # works without it (an upload can take minutes on a busy server: 50 users uploading at once
    # held 50 connections and exhausted the pool); the session takes one again when it is used
    db.commit()
    return user


def admin_user(request: Request, user: User = Depends(current_user)) -> User:
    if not user.is_admin:
        raise HTTPException(403, "only an administrator can do this")
    scope = getattr(request.state, "token_scope", None)
    if scope not in (None, "admin"):
        raise HTTPException(403, f"this API token's scope is {scope!r}: administrator routes need a token with scope 'admin' "
                                 f"(or a signed-in session)")
    return user


def visible_study(study_id: str, user: User, db: Session) -> Study:
    """The study if this user may see it (owner or admin); 404 otherwise, so ids do not leak."""
    study = db.get(Study, study_id)
    if study is None or (study.owner_id != user.id and not user.is_admin):
        raise HTTPException(404, "no such study")
    return study
