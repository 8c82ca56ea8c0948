"""The flywheel's own metadata database: SQLAlchemy models, engine resolution and Alembic migrations."""
