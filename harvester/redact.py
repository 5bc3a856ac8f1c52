"""Secrets (configured header values) scrubbed out of any text before it leaves the process.

The registry is process-wide because secrets reach text by many roads (exception
messages, log records, stored errors) that cannot all be handed the config.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable

REDACTED = "[redacted]"
MIN_SECRET_LENGTH = 4  # shorter values would blank out ordinary words and numbers

_lock = threading.Lock()
_secrets: set[str] = set()
_forms: tuple[str, ...] = ()  # every form of every registered secret, longest first


def register_secrets(values: Iterable[str]) -> None:
    """Add values to the process-wide registry that `scrub` replaces by default."""
    global _forms
    with _lock:
        _secrets.update(value for value in values if len(value) >= MIN_SECRET_LENGTH)
        _forms = secret_forms(_secrets)


def clear_secrets() -> None:
    """Empty the registry (for tests)."""
    global _forms
    with _lock:
        _secrets.clear()
        _forms = ()


def registered_secrets() -> frozenset[str]:
    """The values registered so far."""
    with _lock:
        return frozenset(_secrets)


def scrub(text: str, secrets: Iterable[str] | None = None) -> str:
    """`text` with every secret (registered ones by default) replaced by [redacted]."""
    if secrets is None:
        with _lock:
            forms = _forms
    else:
        forms = secret_forms(secrets)
    # Longest first: a secret that contains another is replaced whole, not in part.
    for form in forms:
        if form in text:
            text = text.replace(form, REDACTED)
    return text


def secret_forms(values: Iterable[str]) -> tuple[str, ...]:
    """Each long enough value as written and as escaped in str and bytes reprs, longest first."""
    forms = {
        form for value in values if len(value) >= MIN_SECRET_LENGTH
        for form in escaped_forms(value)
    }  # fmt: skip
    return tuple(sorted(forms, key=lambda form: (-len(form), form)))


def escaped_forms(value: str) -> set[str]:
    """The value itself and its body inside '...', "..." and b'...' reprs."""
    encoded = value.encode("utf-8", "surrogatepass")
    # repr() picks its quote from the string it is given; a secret inside a longer text
    # may be quoted either way, so force the single-quote form too by adding both quotes.
    return {
        value,
        repr(value)[1:-1],
        repr(value + "'\"")[1:-4],
        repr(encoded)[2:-1],
        repr(encoded + b"'\"")[2:-4],
    }
