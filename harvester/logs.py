"""Logging set-up: readable lines for people, or one JSON object per line for machines.

Every record carries a stable `event` name (in `extra`), so logs can be filtered and
counted without parsing the human message. Registered secrets (harvester.redact) are
scrubbed from everything written.
"""

from __future__ import annotations

import logging
import sys
from datetime import UTC, datetime
from typing import Any

import orjson

from harvester import redact
from harvester.errors import ConfigError

# Attributes every LogRecord has; anything else on a record came from `extra`.
STANDARD_ATTRIBUTES = frozenset(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {
    "message", "asctime", "taskName",
}  # fmt: skip


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, event, message and extra fields."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(),
            "level": record.levelname.lower(),
            "logger": record.name,
            "event": getattr(record, "event", None),
            "message": record.getMessage(),
        }
        entry |= {k: v for k, v in vars(record).items() if k not in STANDARD_ATTRIBUTES}
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        # Scrubbed field by field, before encoding: JSON escapes would hide a secret holding
        # `"` or `\\` from a scrub of the encoded line, and a scrub there could break the JSON.
        return orjson.dumps(scrub_value(entry)).decode()


class ScrubbingFormatter(logging.Formatter):
    """Another formatter's text with every registered secret replaced."""

    def __init__(self, inner: logging.Formatter) -> None:
        super().__init__()
        self.inner = inner

    def format(self, record: logging.LogRecord) -> str:
        """The inner formatter's text (message, exception, stack), scrubbed."""
        return redact.scrub(self.inner.format(record))


def scrub_value(value: Any) -> Any:
    """A JSON-ready copy of `value` with every string (keys too) scrubbed."""
    if isinstance(value, str):
        return redact.scrub(value)
    if value is None or isinstance(value, bool | int | float):
        return value
    if isinstance(value, dict):
        return {redact.scrub(str(key)): scrub_value(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [scrub_value(item) for item in value]
    # Anything else in the JSON form orjson would give it (dates ISO, dataclasses as
    # objects, the rest as str), so the strings inside are scrubbed too.
    return scrub_value(orjson.loads(orjson.dumps(value, default=str)))


LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")


def setup_logging(level: str = "INFO", fmt: str = "text") -> None:
    """Configure the root logger once, to stderr; ConfigError for an unknown level."""
    if level.strip().upper() not in LEVELS:
        raise ConfigError(f"log level {level!r}: one of {', '.join(LEVELS)} (--log-level, "
                          "HARVESTER_LOG_LEVEL)")  # fmt: skip
    handler = logging.StreamHandler(sys.stderr)
    if fmt == "json":
        handler.setFormatter(JsonFormatter())  # scrubs each field itself
    else:
        text = logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s")
        handler.setFormatter(ScrubbingFormatter(text))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.strip().upper())
    # httpx logs every request at INFO, URL included; ours are enough.
    logging.getLogger("httpx").setLevel(logging.WARNING)
    for noisy in ("alembic", "pgserver"):  # set-up chatter, not harvesting news
        logging.getLogger(noisy).setLevel(logging.WARNING)
