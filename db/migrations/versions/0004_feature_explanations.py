"""feature explanations

Neuronpedia's explanations of SAE features, cached per (SAE, feature index) so labels and search work
offline (``saejobs features import|search``, ``neuronpedia feature --fetch``). ``key`` is Neuronpedia's
explanation id when the record carries one (its bulk exports do), else a digest of the text: with
``(sae_id, feature_index, key)`` unique, importing the same export again adds nothing.

Full-text search: on SQLite an FTS5 table over ``description`` (external content: it stores only the
index; triggers keep it in step with every insert, update and delete, cascades and ``db prune``
included); on PostgreSQL a GIN index on ``to_tsvector('english', description)``, the expression
``db/explanations.py`` queries. Neither is in ``db/models.py`` (``FTS_OBJECTS`` there names them, so
autogenerate leaves them alone). A later batch rebuild of ``feature_explanations`` on SQLite drops the
triggers: such a migration must create them again (``sqlite_fts_ddl``).

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-05
"""
from alembic import op
import sqlalchemy as sa  # types spelt out here: a migration must not change when db/models.py does


revision = '0004'
down_revision = '0003'
branch_labels = None
depends_on = None

FTS = 'feature_explanations_fts'
PG_INDEX = 'ix_feature_explanations_fts'


def sqlite_fts_ddl() -> list[str]:
    """The FTS5 table (porter stemming over unicode61 words) and the triggers that keep it in sync."""
    return [
        f"CREATE VIRTUAL TABLE {FTS} USING fts5(description, content='feature_explanations', "
        "content_rowid='id', tokenize='porter unicode61')",
        f"CREATE TRIGGER {FTS}_ai AFTER INSERT ON feature_explanations BEGIN "
        f"INSERT INTO {FTS}(rowid, description) VALUES (new.id, new.description); END",
        f"CREATE TRIGGER {FTS}_ad AFTER DELETE ON feature_explanations BEGIN "
        f"INSERT INTO {FTS}({FTS}, rowid, description) VALUES ('delete', old.id, old.description); END",
        f"CREATE TRIGGER {FTS}_au AFTER UPDATE OF description ON feature_explanations BEGIN "
        f"INSERT INTO {FTS}({FTS}, rowid, description) VALUES ('delete', old.id, old.description); "
        f"INSERT INTO {FTS}(rowid, description) VALUES (new.id, new.description); END",
    ]


def upgrade() -> None:
    op.create_table('feature_explanations',
    sa.Column('id', sa.Integer(), autoincrement=True, nullable=False),
    sa.Column('sae_id', sa.String(length=300), nullable=False),
    sa.Column('feature_index', sa.Integer(), nullable=False),
    sa.Column('key', sa.String(length=100), nullable=False),
    sa.Column('description', sa.Text(), nullable=False),
    sa.Column('type_name', sa.String(length=200), nullable=True),
    sa.Column('explainer', sa.String(length=200), nullable=True),
    sa.Column('source', sa.Text(), nullable=False),
    sa.Column('stored_at', sa.DateTime(), nullable=False),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('sae_id', 'feature_index', 'key', name='uq_explanation_key')
    )
    with op.batch_alter_table('feature_explanations', schema=None) as batch_op:
        batch_op.create_index('ix_feature_explanations_sae_feature', ['sae_id', 'feature_index'], unique=False)
    dialect = op.get_bind().dialect.name
    if dialect == 'sqlite':
        for ddl in sqlite_fts_ddl():
            op.execute(ddl)
    elif dialect == 'postgresql':
        op.execute(f"CREATE INDEX {PG_INDEX} ON feature_explanations "
                   "USING gin (to_tsvector('english', description))")


def downgrade() -> None:
    dialect = op.get_bind().dialect.name
    if dialect == 'sqlite':
        for suffix in ('ai', 'ad', 'au'):
            op.execute(f"DROP TRIGGER IF EXISTS {FTS}_{suffix}")
        op.execute(f"DROP TABLE IF EXISTS {FTS}")
    elif dialect == 'postgresql':
        op.execute(f"DROP INDEX IF EXISTS {PG_INDEX}")
    with op.batch_alter_table('feature_explanations', schema=None) as batch_op:
        batch_op.drop_index('ix_feature_explanations_sae_feature')
    op.drop_table('feature_explanations')
