"""validated partitions and datasets

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-21 08:48:24.651403
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "datasets",
        sa.Column("dataset_id", sa.String(length=64), nullable=False),
        sa.Column("workload_id", sa.String(length=64), nullable=False),
        sa.Column("uri", sa.Text(), nullable=False),
        sa.Column("manifest_uri", sa.Text(), nullable=False),
        sa.Column("train_records", sa.Integer(), nullable=False),
        sa.Column("validation_records", sa.Integer(), nullable=False),
        sa.Column("evaluation_records", sa.Integer(), nullable=False),
        sa.Column("duplicates_removed", sa.Integer(), nullable=False),
        sa.Column("first_day", sa.Date(), nullable=False),
        sa.Column("last_day", sa.Date(), nullable=False),
        sa.Column("content_hash", sa.String(length=64), nullable=False),
        sa.Column("config_hash", sa.String(length=32), nullable=False),
        sa.Column("run_id", sa.Integer(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["run_id"], ["runs.id"], name=op.f("fk_datasets_run_id_runs"), ondelete="SET NULL"
        ),
        sa.PrimaryKeyConstraint("dataset_id", name=op.f("pk_datasets")),
    )
    with op.batch_alter_table("datasets", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_datasets_workload_id"), ["workload_id"], unique=False)

    op.create_table(
        "validated_partitions",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("workload_id", sa.String(length=64), nullable=False),
        sa.Column("day", sa.Date(), nullable=False),
        sa.Column("extracted", sa.Integer(), nullable=False),
        sa.Column("clean", sa.Integer(), nullable=False),
        sa.Column("quarantined", sa.Integer(), nullable=False),
        sa.Column("duplicates_in_day", sa.Integer(), nullable=False),
        sa.Column("success", sa.Boolean(), nullable=False),
        sa.Column("failed_expectations", sa.JSON(), nullable=False),
        sa.Column("reasons", sa.JSON(), nullable=False),
        sa.Column("tool_shift", sa.Float(), nullable=True),
        sa.Column("clean_uri", sa.Text(), nullable=False),
        sa.Column("quarantine_uri", sa.Text(), nullable=False),
        sa.Column("validation_uri", sa.Text(), nullable=False),
        sa.Column("data_docs_uri", sa.Text(), nullable=True),
        sa.Column("run_id", sa.Integer(), nullable=True),
        sa.Column("validated_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["run_id"], ["runs.id"], name=op.f("fk_validated_partitions_run_id_runs"), ondelete="SET NULL"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_validated_partitions")),
        sa.UniqueConstraint("workload_id", "day", name=op.f("uq_validated_partitions_workload_id")),
    )


def downgrade() -> None:
    op.drop_table("validated_partitions")
    with op.batch_alter_table("datasets", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_datasets_workload_id"))

    op.drop_table("datasets")
