"""backends.relay_cookies: whether a kind=http backend's cookies reach the client

The pass-through never stores an upstream cookie (issue 15, finding 1); this per-backend
flag (default false) says whether the upstream's ``Set-Cookie`` is relayed to the client
as a response header and the client's ``Cookie`` sent on. Existing backends get false:
their cookies are dropped, as they should have been.

Revision ID: 0003_backend_relay_cookies
Revises: 0002
Create Date: 2026-12-07 15:50:00.000000

"""
from alembic import op
import sqlalchemy as sa


# revision identifiers, used by Alembic.
revision = '0003_backend_relay_cookies'
down_revision = '0002'
branch_labels = None
depends_on = None


def upgrade():
    with op.batch_alter_table('backends', schema=None) as batch_op:
        batch_op.add_column(sa.Column('relay_cookies', sa.Boolean(), server_default=sa.false(), nullable=False))


def downgrade():
    with op.batch_alter_table('backends', schema=None) as batch_op:
        batch_op.drop_column('relay_cookies')
