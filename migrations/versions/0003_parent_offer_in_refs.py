"""Each parent reference carries its parent's offer, so joining a child reads one small table.

Children were joined through `parent_refs` and then the parent's row in `items`; with a
million items those rows are mostly outside shared buffers and the join cost a read per
child. The offer columns (what the booking window needs) now sit in `parent_refs`,
rewritten with the refs whenever the parent changes.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-22

Every revision must keep working with the code of the revision before it (workers are
upgraded one at a time) and must not hold long locks on `harvester.items`.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

COLUMNS = (
    ("offer_problem", sa.Text),
    ("from_months", sa.Integer),
    ("from_micros", sa.BigInteger),
    ("through_months", sa.Integer),
    ("through_micros", sa.BigInteger),
)


def upgrade() -> None:
    for name, kind in COLUMNS:
        op.add_column("parent_refs", sa.Column(name, kind), schema="harvester")
    op.execute(
        """
        UPDATE harvester.parent_refs AS r
        SET offer_problem = p.offer_problem, from_months = p.from_months,
            from_micros = p.from_micros, through_months = p.through_months,
            through_micros = p.through_micros
        FROM harvester.items AS p
        WHERE p.source = r.source AND p.kind = r.parent_kind AND p.rpde_id = r.parent_rpde_id
        """
    )


def downgrade() -> None:
    for name, _ in COLUMNS:
        op.drop_column("parent_refs", name, schema="harvester")
