"""hosts, shards, scores and chat

Sharded sweeps (``jobs.parent_id``), routing to a host (``jobs.requested_host``), per-job deadlines
(``jobs.deadline_at``), per-host SAE copies (``sae_copies``, and ``saes.source``: the mirror other hosts fetch from), scores of each generation
(``generations.scores``) and the chat conversation a generation continued (``generations.messages``).

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-26
"""
from alembic import op
import sqlalchemy as sa  # types spelt out here: a migration must not change when db/models.py does


revision = '0002'
down_revision = '0001'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('jobs', schema=None) as batch_op:
        batch_op.add_column(sa.Column('parent_id', sa.String(length=36), nullable=True))
        batch_op.add_column(sa.Column('requested_host', sa.String(length=200), nullable=True))
        batch_op.add_column(sa.Column('deadline_at', sa.DateTime(), nullable=True))
        batch_op.create_index(batch_op.f('ix_jobs_parent_id'), ['parent_id'], unique=False)
        batch_op.create_foreign_key('fk_jobs_parent_id', 'jobs', ['parent_id'], ['id'], ondelete='CASCADE')
    with op.batch_alter_table('saes', schema=None) as batch_op:
        batch_op.add_column(sa.Column('source', sa.Text(), nullable=True))
    op.create_table('sae_copies',
    sa.Column('id', sa.Integer(), autoincrement=True, nullable=False),
    sa.Column('sae_id', sa.String(length=300), nullable=False),
    sa.Column('host', sa.String(length=200), nullable=False),
    sa.Column('path', sa.Text(), nullable=False),
    sa.Column('sha256', sa.String(length=64), nullable=True),
    sa.Column('verified_at', sa.DateTime(), nullable=False),
    sa.ForeignKeyConstraint(['sae_id'], ['saes.id'], ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('sae_id', 'host', name='uq_sae_copy_host')
    )
    with op.batch_alter_table('generations', schema=None) as batch_op:
        batch_op.add_column(sa.Column('scores', sa.JSON(), nullable=True))
        batch_op.add_column(sa.Column('messages', sa.JSON(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('generations', schema=None) as batch_op:
        batch_op.drop_column('messages')
        batch_op.drop_column('scores')
    op.drop_table('sae_copies')
    with op.batch_alter_table('saes', schema=None) as batch_op:
        batch_op.drop_column('source')
    with op.batch_alter_table('jobs', schema=None) as batch_op:
        batch_op.drop_constraint('fk_jobs_parent_id', type_='foreignkey')
        batch_op.drop_index(batch_op.f('ix_jobs_parent_id'))
        batch_op.drop_column('deadline_at')
        batch_op.drop_column('requested_host')
        batch_op.drop_column('parent_id')
