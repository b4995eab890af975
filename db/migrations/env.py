from alembic import context

from saejobs.db.models import Base

engine = context.config.attributes["engine"]
with engine.begin() as connection:
    if connection.dialect.name == "postgresql":  # a migration waits for a busy table this long, then fails
        connection.exec_driver_sql("SET LOCAL lock_timeout = '10s'")
    context.configure(connection=connection, target_metadata=Base.metadata, render_as_batch=True)
    context.run_migrations()
