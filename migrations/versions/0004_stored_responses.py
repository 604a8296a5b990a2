"""stored responses: which backend and upstream key created each Responses API id, and its owner

Follow-ups to a stored response (retrieve, delete, cancel, input items,
``previous_response_id``) must reach the provider account that holds it, and only its
owner may reach it (issue 16). New table only; downgrade drops it.

Revision ID: 0004_stored_responses
Revises: 0003_backend_relay_cookies
Create Date: 2026-12-07 15:40:00.000000

"""
import sqlalchemy as sa
from alembic import op

# revision identifiers, used by Alembic.
revision = '0004_stored_responses'
down_revision = '0003_backend_relay_cookies'
branch_labels = None
depends_on = None


def upgrade():
    op.create_table(
        'stored_responses',
        sa.Column('id', sa.Integer(), nullable=False),
        sa.Column('response_id', sa.String(length=128), nullable=False),
        sa.Column('backend_id', sa.Integer(), nullable=False),
        sa.Column('upstream_key_id', sa.Integer(), nullable=False),
        sa.Column('user_id', sa.Integer(), nullable=False),
        sa.Column('key_id', sa.Integer(), nullable=False),
        sa.Column('created_at', sa.DateTime(), nullable=False),
        sa.PrimaryKeyConstraint('id'),
        sa.UniqueConstraint('response_id'),
    )
    with op.batch_alter_table('stored_responses', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_stored_responses_created_at'), ['created_at'], unique=False)


def downgrade():
    with op.batch_alter_table('stored_responses', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_stored_responses_created_at'))
    op.drop_table('stored_responses')
