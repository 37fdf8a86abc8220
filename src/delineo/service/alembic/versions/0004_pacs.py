"""PACS (DICOMweb servers) an administrator configures for searching and contouring from the
web page (issue 38, item 3); the password or token is kept here and never sent to a browser

Revision ID: 0004
Revises: 0003
Create Date: 2026-03-10
"""
from alembic import op
import sqlalchemy as sa

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "pacs_servers",
        sa.Column("name", sa.String(64), primary_key=True),
        sa.Column("url", sa.String(1024), nullable=False),
        sa.Column("auth", sa.String(16), nullable=False, server_default="none"),
        sa.Column("username", sa.String(255), nullable=True),
        sa.Column("secret", sa.Text(), nullable=True),
        sa.Column("ca_bundle", sa.String(1024), nullable=True),
        sa.Column("client_cert", sa.String(1024), nullable=True),
        sa.Column("client_key", sa.String(1024), nullable=True),
        sa.Column("timeout_s", sa.Float(), nullable=False, server_default="120"),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_by", sa.String(64), nullable=False, server_default=""),
    )


def downgrade() -> None:
    op.drop_table("pacs_servers")
