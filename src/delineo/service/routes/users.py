"""User administration (administrators only)."""

from __future__ import annotations

from fastapi import APIRouter, Depends, HTTPException, Request, Response
from sqlalchemy import select
from sqlalchemy.orm import Session

from delineo.service import audit
from delineo.service.models import User
from delineo.service.routes.auth import user_out
from delineo.service.routes.deps import admin_user, bearer_token, get_db
from delineo.service.schemas import UserIn, UserOut
from delineo.service.security import SESSION_COOKIE, check_new_user, hash_password, revoke_user_tokens

router = APIRouter(prefix="/api/users", tags=["users"])


@router.get("", response_model=list[UserOut])
def list_users(_: User = Depends(admin_user), db: Session = Depends(get_db, scope="function")) -> list[UserOut]:
    return [user_out(u) for u in db.scalars(select(User).order_by(User.id))]


@router.post("", response_model=UserOut, status_code=201)
def create_user(body: UserIn, request: Request, admin: User = Depends(admin_user), db: Session = Depends(get_db, scope="function")) -> UserOut:
    problem = check_new_user(body.username, body.password)
    if problem:
        raise HTTPException(422, problem)
    if db.scalar(select(User).where(User.username == body.username)) is not None:
        raise HTTPException(409, f"user {body.username!r} already exists")
    user = User(username=body.username, password_hash=hash_password(body.password), is_admin=body.is_admin)
    db.add(user)
    db.flush()
    audit.record(db, "user-create", actor=admin.username, address=audit.client_address(request),
                 detail=f"created user {user.username}" + (" (administrator)" if user.is_admin else ""))
    return user_out(user)


@router.delete("/{user_id}", status_code=204)
def delete_user(user_id: int, admin: User = Depends(admin_user), db: Session = Depends(get_db, scope="function")) -> Response:
    user = db.get(User, user_id)
    if user is None:
        raise HTTPException(404, "no such user")
    if user.id == admin.id:
        raise HTTPException(400, "you cannot delete your own account")
    if user.studies:
        raise HTTPException(409, f"{user.username} still owns {len(user.studies)} studies; delete them first")
    db.delete(user)
    return Response(status_code=204)


@router.delete("/{user_id}/sessions")
def revoke_sessions(user_id: int, request: Request, admin: User = Depends(admin_user), db: Session = Depends(get_db, scope="function")) -> dict:
    """Sign a user out everywhere: revoke all their sessions and API tokens (for your own
    account, all but the session or token of this request). Returns ``{"revoked": n}``."""
    user = db.get(User, user_id)
    if user is None:
        raise HTTPException(404, "no such user")
    keep = (bearer_token(request) or request.cookies.get(SESSION_COOKIE)) if user.id == admin.id else None
    revoked = revoke_user_tokens(db, user.id, keep=keep)
    audit.record(db, "sessions-revoke", actor=admin.username, address=audit.client_address(request),
                 detail=f"signed {user.username} out everywhere: {revoked} session(s) and token(s) revoked")
    return {"revoked": revoked}
