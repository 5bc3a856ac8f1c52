"""Each source carries a parents version, drawn anew by every change to its parent refs.

Harvesters resolve a child's parent once and keep the answer in memory for as long as
the source's `parents_version` stands. Triggers on `harvester.parent_refs` draw a new
version from a sequence for every statement that changes a source's refs, whoever runs
it (a harvester of this revision or the one before, an operator), and a sequence never
gives a number twice, so a change that was rolled back can never look current.

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-01

Every revision must keep working with the code of the revision before it (workers are
upgraded one at a time) and must not hold long locks on `harvester.items`.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

BUMP_FUNCTION = """
CREATE FUNCTION harvester.bump_parents_version() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
  UPDATE harvester.sources
  SET parents_version = nextval('harvester.parents_version_seq')
  WHERE name IN (SELECT DISTINCT source FROM changed_refs);
  RETURN NULL;
END
$$
"""

# Transition tables allow one event per trigger: one trigger for each.
TRIGGERS = {
    "insert": "INSERT ON harvester.parent_refs REFERENCING NEW TABLE AS changed_refs",
    "delete": "DELETE ON harvester.parent_refs REFERENCING OLD TABLE AS changed_refs",
    "update": "UPDATE ON harvester.parent_refs REFERENCING NEW TABLE AS changed_refs",
}


def upgrade() -> None:
    op.execute("CREATE SEQUENCE harvester.parents_version_seq")
    # A NOT NULL column with a constant default: a catalogue change, no table rewrite.
    op.add_column(
        "sources",
        sa.Column("parents_version", sa.BigInteger, nullable=False, server_default="0"),
        schema="harvester",
    )
    op.execute(BUMP_FUNCTION)
    for event, clause in TRIGGERS.items():
        op.execute(
            f"CREATE TRIGGER parent_refs_{event}_bumps_version AFTER {clause}"
            " FOR EACH STATEMENT EXECUTE FUNCTION harvester.bump_parents_version()"
        )


def downgrade() -> None:
    for event in TRIGGERS:
        op.execute(f"DROP TRIGGER parent_refs_{event}_bumps_version ON harvester.parent_refs")
    op.execute("DROP FUNCTION harvester.bump_parents_version()")
    op.drop_column("sources", "parents_version", schema="harvester")
    op.execute("DROP SEQUENCE harvester.parents_version_seq")
