"""harvester: OpenActive RPDE feeds into PostgreSQL, and what is bookable now."""

__version__ = "0.1.0"
