"""Secrets scrubbed from text: `scrub` itself, the registry, and every log line written."""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Iterator
from datetime import UTC, datetime

import pytest

from harvester import redact
from harvester.logs import setup_logging

SECRET = "k3y-Very-S3cret-1234"


@pytest.fixture
def registry() -> Iterator[None]:
    """An empty registry for the test; the one before it is put back afterwards."""
    before = redact.registered_secrets()
    redact.clear_secrets()
    yield
    redact.clear_secrets()
    redact.register_secrets(before)


@pytest.fixture
def restore_logging() -> Iterator[None]:
    """Put back the root logger (and the quietened loggers) that setup_logging changes."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    quiet = {name: logging.getLogger(name).level for name in ("httpx", "alembic", "pgserver")}
    yield
    root.handlers[:] = handlers
    root.setLevel(level)
    for name, old in quiet.items():
        logging.getLogger(name).setLevel(old)


# --- scrub, pure -------------------------------------------------------------------------


def test_scrub_plain_value() -> None:
    text = f"GET failed with X-API-KEY: {SECRET} (twice: {SECRET})"
    expected = "GET failed with X-API-KEY: [redacted] (twice: [redacted])"
    assert redact.scrub(text, [SECRET]) == expected


def test_scrub_leaves_text_without_secrets_alone() -> None:
    assert redact.scrub("nothing to see", [SECRET]) == "nothing to see"
    assert redact.scrub("", [SECRET]) == ""
    assert redact.scrub(f"no secrets given: {SECRET}", []) == f"no secrets given: {SECRET}"


def test_scrub_httpx_illegal_header_message() -> None:
    # What httpx raises for a value with a line end in it: the bytes repr.
    text = f"Illegal header value {(SECRET + chr(10)).encode()!r}"
    assert SECRET in text
    assert redact.scrub(text, [SECRET]) == r"Illegal header value b'[redacted]\n'"


@pytest.mark.parametrize(
    "secret",
    [
        "back\\slash-key",  # repr doubles the backslash
        "it's-a-key",  # alone: repr uses "..."; next to a `"`: '...' with \'
        'say "key" now',
        "tab\tinside-key",
        "clé-secrète-42",  # str repr keeps it, bytes repr gives \xc3\xa9
        "new\nline-key",
    ],
)
def test_scrub_repr_escaped_forms(secret: str) -> None:
    texts = [
        repr(secret),
        repr(secret.encode()),
        repr({"X-API-KEY": secret}),
        repr([secret, 'other "quoted" text']),
        repr((secret + "'\"").encode()),
        f"Illegal header value {secret.encode()!r}",
    ]
    for text in texts:
        scrubbed = redact.scrub(text, [secret])
        assert "[redacted]" in scrubbed, text
        for form in redact.escaped_forms(secret):
            assert form not in scrubbed, (text, form)


def test_short_values_are_not_scrubbed() -> None:
    assert redact.scrub("a 1 is not a secret, nor is abc", ["1", "abc", ""]) == (
        "a 1 is not a secret, nor is abc"
    )
    assert redact.scrub("four: abcd", ["abcd"]) == "four: [redacted]"


def test_longest_secret_first() -> None:
    # One secret inside another: the longer is replaced whole, the shorter where alone.
    secrets = ["abcd", "abcdefgh"]
    assert redact.scrub("x abcdefgh y abcd", secrets) == "x [redacted] y [redacted]"
    # Overlapping at the start: no piece of the longer one is left over.
    assert redact.scrub("xabcdefgh", ["xabc", "abcdefgh"]) == "x[redacted]"
    assert redact.scrub("xabcdefgh", ["abcdefgh", "xabc"]) == "x[redacted]"


# --- the registry --------------------------------------------------------------------------


@pytest.mark.usefixtures("registry")
def test_registered_secrets_are_scrubbed_by_default() -> None:
    assert redact.scrub(f"key {SECRET}") == f"key {SECRET}"
    redact.register_secrets([SECRET, "abc"])
    assert redact.registered_secrets() == {SECRET}  # too short to register: "abc"
    assert redact.scrub(f"key {SECRET}") == "key [redacted]"
    assert redact.scrub(f"key {SECRET}", secrets=[]) == f"key {SECRET}"  # explicit: pure


@pytest.mark.usefixtures("registry")
def test_register_from_many_threads() -> None:
    values = [f"secret-value-{index:04d}" for index in range(200)]
    threads = [
        threading.Thread(target=redact.register_secrets, args=(values[start::8],))
        for start in range(8)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert redact.registered_secrets() == set(values)
    assert redact.scrub(" ".join(values)) == " ".join(["[redacted]"] * len(values))


# --- logging -------------------------------------------------------------------------------


def log_with_secret() -> None:
    """One error record with the secret in its message, an extra field and its exception."""
    logger = logging.getLogger("harvester.test_redact")
    try:
        raise ValueError(f"Illegal header value {(SECRET + chr(10)).encode()!r}")
    except ValueError:
        logger.exception(
            "request with %s failed", SECRET,
            extra={"event": "test_secret", "header": SECRET, "nested": {SECRET: [SECRET]},
                   "when": datetime(2024, 1, 2, tzinfo=UTC)},
        )  # fmt: skip


@pytest.mark.usefixtures("registry", "restore_logging")
@pytest.mark.parametrize("fmt", ["text", "json"])
def test_log_lines_are_scrubbed(fmt: str, capsys: pytest.CaptureFixture[str]) -> None:
    redact.register_secrets([SECRET])
    setup_logging("INFO", fmt)
    log_with_secret()
    written = capsys.readouterr().err
    assert "request with [redacted] failed" in written
    assert SECRET not in written
    assert "ValueError" in written  # the exception is still there, scrubbed
    if fmt == "json":
        (line,) = written.splitlines()
        entry = json.loads(line)
        assert entry["message"] == "request with [redacted] failed"
        assert entry["header"] == "[redacted]"
        assert entry["nested"] == {"[redacted]": ["[redacted]"]}
        assert entry["when"] == "2024-01-02T00:00:00+00:00"  # other values as before
        assert entry["event"] == "test_secret"
        assert r"b'[redacted]\n'" in entry["exception"]


@pytest.mark.usefixtures("registry", "restore_logging")
@pytest.mark.parametrize("fmt", ["text", "json"])
def test_secret_registered_after_setup_is_scrubbed(
    fmt: str, capsys: pytest.CaptureFixture[str]
) -> None:
    setup_logging("INFO", fmt)
    redact.register_secrets([SECRET])
    logging.getLogger("harvester.test_redact").warning("late %s", SECRET)
    written = capsys.readouterr().err
    assert SECRET not in written and "late [redacted]" in written
