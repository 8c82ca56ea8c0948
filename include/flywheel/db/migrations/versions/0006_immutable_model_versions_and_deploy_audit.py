"""immutable model versions (adapter and model digests) and what serving was told in alias_events

model_versions gains adapter_sha256 (the digest of the adapter's files, which the registry copies into
models/<workload>/<digest>/) and model_sha256 (the digest of the registered model config). The unique
key of a run's variant includes model_sha256, so a re-run that trained different bytes registers a new
version instead of rewriting one that may be the champion. Rows from before keep their path and get
null digests. alias_events gains deployment: the deploy hook's result, or the --no-deploy mark.

Downgrading fails where one run variant has several versions (re-runs after this revision).

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-07 05:10:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("model_versions", schema=None) as batch_op:
        batch_op.add_column(sa.Column("adapter_sha256", sa.String(length=64), nullable=True))
        batch_op.add_column(sa.Column("model_sha256", sa.String(length=64), nullable=True))
        batch_op.drop_constraint("uq_model_versions_run_variant", type_="unique")
        batch_op.create_unique_constraint(
            "uq_model_versions_run_variant_model", ["run_id", "candidate_id", "eval_type", "model_sha256"]
        )
    with op.batch_alter_table("alias_events", schema=None) as batch_op:
        batch_op.add_column(sa.Column("deployment", sa.JSON(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("alias_events", schema=None) as batch_op:
        batch_op.drop_column("deployment")
    with op.batch_alter_table("model_versions", schema=None) as batch_op:
        batch_op.drop_constraint("uq_model_versions_run_variant_model", type_="unique")
        batch_op.create_unique_constraint(
            "uq_model_versions_run_variant", ["run_id", "candidate_id", "eval_type"]
        )
        batch_op.drop_column("model_sha256")
        batch_op.drop_column("adapter_sha256")
