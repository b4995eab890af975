"""copy file stats

Each host's SAE copy records the size and modification time of every file it verified
(``sae_copies.files``), so a job reuses a copy only while its files are the ones checked, and hashes
them again otherwise.

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-03
"""
from alembic import op
import sqlalchemy as sa  # types spelt out here: a migration must not change when db/models.py does


revision = '0003'
down_revision = '0002'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('sae_copies', schema=None) as batch_op:
        batch_op.add_column(sa.Column('files', sa.JSON(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('sae_copies', schema=None) as batch_op:
        batch_op.drop_column('files')
