"""API tokens get an expiry and a scope (issue 36, item 7)

Existing API tokens expire ``DELINEO_TOKEN_DAYS`` days (default 90) after this migration runs, and
get the full scope of their account's role: ``admin`` for an administrator's tokens, ``contour``
(upload and contour) for the others. Sessions keep no expiry date (they expire when idle).

Revision ID: 0003
Revises: 0002
Create Date: 2026-03-01
"""
import os
from datetime import datetime, timedelta, timezone

from alembic import op
import sqlalchemy as sa

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def _default_days() -> float:
    raw = (os.environ.get("DELINEO_TOKEN_DAYS") or "").strip()
    try:
        days = float(raw) if raw else 90.0
    except ValueError:
        raise ValueError(f"DELINEO_TOKEN_DAYS={raw!r} is not a number") from None
    return days if days > 0 else 90.0


def upgrade() -> None:
    with op.batch_alter_table("api_tokens") as batch:
        batch.add_column(sa.Column("scope", sa.String(16), nullable=False, server_default="contour"))
        batch.add_column(sa.Column("expires_at", sa.DateTime(timezone=True), nullable=True))
    tokens = sa.table("api_tokens", sa.column("kind", sa.String), sa.column("user_id", sa.Integer),
                      sa.column("scope", sa.String), sa.column("expires_at", sa.DateTime(timezone=True)))
    users = sa.table("users", sa.column("id", sa.Integer), sa.column("is_admin", sa.Boolean))
    expires = datetime.now(timezone.utc) + timedelta(days=_default_days())
    op.execute(tokens.update().where(tokens.c.kind == "api").values(expires_at=expires))
    admins = sa.select(users.c.id).where(users.c.is_admin.is_(True))
    op.execute(tokens.update().where(tokens.c.user_id.in_(admins)).values(scope="admin"))


def downgrade() -> None:
    with op.batch_alter_table("api_tokens") as batch:
        batch.drop_column("expires_at")
        batch.drop_column("scope")
