"""Dependencies shared by the routes: the service context, a DB session, the signed-in user."""

from __future__ import annotations

from typing import Iterator

from fastapi import Depends, HTTPException, Request
from sqlalchemy.orm import Session

from delineo.service.core import ServiceContext
from delineo.service.models import Study, User
from delineo.service.security import SESSION_COOKIE, user_for_token


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
    token = bearer_token(request)
    user = None
    if token:
        user = user_for_token(db, token, "api", ctx.settings.session_idle_min)
    else:
        cookie = request.cookies.get(SESSION_COOKIE)
        if cookie:
            user = user_for_token(db, cookie, "session", ctx.settings.session_idle_min)
    if user is None:
        raise HTTPException(401, "sign in first (session expired or missing credentials)", headers={"WWW-Authenticate": "Bearer"})
    # end the transaction now: its database connection goes back to the pool while the endpoint
    # works without it (an upload can take minutes on a busy server: 50 users uploading at once
    # held 50 connections and exhausted the pool); the session takes one again when it is used
    db.commit()
    return user


def admin_user(user: User = Depends(current_user)) -> User:
    if not user.is_admin:
        raise HTTPException(403, "only an administrator can do this")
    return user


def visible_study(study_id: str, user: User, db: Session) -> Study:
    """The study if this user may see it (owner or admin); 404 otherwise, so ids do not leak."""
    study = db.get(Study, study_id)
    if study is None or (study.owner_id != user.id and not user.is_admin):
        raise HTTPException(404, "no such study")
    return study
