"""rotation sets grace_until only; revoked_at means an explicit revocation

Before: rotating a key set both ``grace_until`` and ``revoked_at`` to the end of the
grace period, so ``revoked_at`` also meant "valid until". After: rotation sets only
``grace_until`` and ``revoked_at`` stays NULL until an admin revokes the key or deletes
its owner; ``gateway.key_rules`` treats a passed ``grace_until`` as revoked. Data only,
no schema change. Reversible: before this revision no row had ``grace_until`` without
``revoked_at`` (revoking or deleting cleared ``grace_until``).

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-07 12:40:00.000000

"""
from alembic import op


# revision identifiers, used by Alembic.
revision = '0002'
down_revision = '0001'
branch_labels = None
depends_on = None


def upgrade():
    op.execute("UPDATE api_keys SET revoked_at = NULL "
               "WHERE grace_until IS NOT NULL AND revoked_at = grace_until")


def downgrade():
    op.execute("UPDATE api_keys SET revoked_at = grace_until "
               "WHERE grace_until IS NOT NULL AND revoked_at IS NULL")
