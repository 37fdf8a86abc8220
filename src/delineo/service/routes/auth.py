"""Sign in and out, the current user, API tokens."""

from __future__ import annotations

from datetime import timedelta

from fastapi import APIRouter, Depends, HTTPException, Request, Response
from sqlalchemy import select
from sqlalchemy.orm import Session

from delineo.service import audit, throttle
from delineo.service.audit import client_address
from delineo.service.core import ServiceContext
from delineo.service.models import ApiToken, User
from delineo.service.routes.deps import bearer_token, current_user, get_ctx, get_db
from delineo.service.schemas import LoginIn, PasswordIn, TokenIn, TokenOut, UserOut
from delineo.service.security import (SESSION_COOKIE, authenticate, check_new_user, hash_password, issue_token, now_utc, revoke_token,
                                      revoke_user_tokens, verify_password)

router = APIRouter(prefix="/api/auth", tags=["auth"])


def user_out(u: User) -> UserOut:
    return UserOut(id=u.id, username=u.username, is_admin=u.is_admin, created_at=u.created_at)


@router.post("/login", response_model=UserOut, responses={429: {"description": "too many failed sign-ins: wait (Retry-After)"}})
def login(body: LoginIn, request: Request, response: Response, db: Session = Depends(get_db, scope="function"),
          ctx: ServiceContext = Depends(get_ctx)) -> UserOut:
    """Check the password and set the session cookie. After repeated failures for the user name or
    from the address, attempts are refused with 429 for a while (``Retry-After`` says how long)."""
    username, address = body.username.strip(), client_address(request) or "unknown"
    attempt, wait = throttle.begin(ctx.db, ctx.settings, username, address)
    if wait is not None:
        raise HTTPException(429, f"too many failed sign-ins for this user name or from this address: "
                                 f"try again in {wait} s", headers={"Retry-After": str(wait)})
    user = authenticate(db, username, body.password)
    if user is None:
        throttle.failed(ctx.db, ctx.settings, attempt, username, address)
        raise HTTPException(401, "wrong user name or password")
    throttle.succeeded(db, username, address)
    token, _ = issue_token(db, user, kind="session", name=request.headers.get("user-agent", "")[:120])
    audit.record(db, "login", actor=user.username, address=address[:64], detail="signed in (browser session)")
    response.set_cookie(SESSION_COOKIE, token, httponly=True, samesite="lax", secure=request.url.scheme == "https", path="/")
    return user_out(user)


@router.post("/logout", status_code=204)
def logout(request: Request, response: Response, db: Session = Depends(get_db, scope="function")) -> Response:
    cookie = request.cookies.get(SESSION_COOKIE)
    if cookie:
        revoke_token(db, cookie)
    response = Response(status_code=204)
    response.delete_cookie(SESSION_COOKIE, path="/")
    return response


@router.get("/me", response_model=UserOut)
def me(user: User = Depends(current_user)) -> UserOut:
    return user_out(user)


@router.post("/password", status_code=204)
def change_password(body: PasswordIn, request: Request, user: User = Depends(current_user), db: Session = Depends(get_db, scope="function")) -> Response:
    """Change your password. Every other session of yours and every API token you made are
    revoked (a stolen cookie or token stops working); the session or token of this request stays."""
    if not verify_password(user.password_hash, body.old_password):
        raise HTTPException(400, "the current password is wrong")
    problem = check_new_user(user.username, body.new_password)
    if problem:
        raise HTTPException(422, problem)
    db.get(User, user.id).password_hash = hash_password(body.new_password)
    revoked = revoke_user_tokens(db, user.id, keep=bearer_token(request) or request.cookies.get(SESSION_COOKIE))
    audit.record(db, "password-change", actor=user.username, address=client_address(request),
                 detail=f"password changed; {revoked} other session(s) and token(s) revoked")
    return Response(status_code=204)


def token_out(row: ApiToken, token: str | None = None) -> TokenOut:
    return TokenOut(id=row.id, name=row.name, token=token, created_at=row.created_at, scope=row.scope, expires_at=row.expires_at)


@router.post("/tokens", response_model=TokenOut, status_code=201,
             responses={403: {"description": "asked with an API token (sign in first), or scope admin for a non-administrator"},
                        422: {"description": "a life longer than DELINEO_TOKEN_MAX_DAYS, or not positive"}})
def create_token(body: TokenIn, request: Request, user: User = Depends(current_user), db: Session = Depends(get_db, scope="function"),
                 ctx: ServiceContext = Depends(get_ctx)) -> TokenOut:
    """A new API token for ``Authorization: Bearer <token>``; the token is shown only in this answer.
    It expires after ``days`` (default ``DELINEO_TOKEN_DAYS``, at most ``DELINEO_TOKEN_MAX_DAYS``)
    and can do what its ``scope`` allows. Only a signed-in session creates tokens: a request made
    with an API token is refused, so a stolen token cannot make itself a longer-lived one."""
    if bearer_token(request) is not None:
        raise HTTPException(403, "API tokens cannot create tokens: sign in with your password (browser session) to create one")
    settings = ctx.settings
    days = settings.token_default_days if body.days is None else body.days
    if not 0 < days <= settings.token_max_days:
        raise HTTPException(422, f"a token's life must be more than 0 and at most {settings.token_max_days:g} days "
                                 f"(DELINEO_TOKEN_MAX_DAYS), not {days:g}")
    if body.scope == "admin" and not user.is_admin:
        raise HTTPException(403, "only an administrator can create a token with scope 'admin'")
    token, row = issue_token(db, user, kind="api", name=body.name, scope=body.scope, expires_at=now_utc() + timedelta(days=days))
    audit.record(db, "token-create", actor=user.username, address=client_address(request),
                 detail=f"API token {row.id} {row.name[:80]!r}, scope {row.scope}, expires {row.expires_at:%Y-%m-%d %H:%M} UTC")
    return token_out(row, token)


@router.get("/tokens", response_model=list[TokenOut])
def list_tokens(user: User = Depends(current_user), db: Session = Depends(get_db, scope="function")) -> list[TokenOut]:
    rows = db.scalars(select(ApiToken).where(ApiToken.user_id == user.id, ApiToken.kind == "api").order_by(ApiToken.id))
    return [token_out(r) for r in rows]


@router.delete("/tokens/{token_id}", status_code=204)
def delete_token(token_id: int, user: User = Depends(current_user), db: Session = Depends(get_db, scope="function")) -> Response:
    row = db.get(ApiToken, token_id)
    if row is None or row.user_id != user.id or row.kind != "api":
        raise HTTPException(404, "no such token")
    db.delete(row)
    return Response(status_code=204)
