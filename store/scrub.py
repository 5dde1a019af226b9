"""Keep secrets out of the audit store: API keys, authorisation headers and signed-URL signatures.

Backends are meant never to put a secret into a record; this is the defence behind that rule.
Every free-text field is scrubbed before it is queued for writing:

- query parameters that carry credentials (``key=``, ``sig=``, ``X-Amz-Signature=``...);
- JSON fields and header lines named like credentials (``"authorization": ...``, ``x-goog-api-key:``);
- ``Bearer ...`` tokens and well-known key shapes (``sk-...``, ``AIza...``, ``hf_...``);
- the literal value of every environment variable whose name looks secret (``*KEY*``, ``*TOKEN*``,
  ``*SECRET*``, ``*PASSWORD*``...), read when the scrubber is made.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping

REDACTED = "[REDACTED]"

_SECRET_ENV_NAME = re.compile(r"KEY|TOKEN|SECRET|PASSW|CREDENTIAL|AUTH|SIGNATURE", re.IGNORECASE)
_MIN_SECRET_LEN = 8

_CREDENTIAL_NAMES = (
    r"key|api[_-]?key|x-goog-api-key|x-api-key|sig|signature|token|access[_-]?token|auth|authorization|"
    r"proxy-authorization|password|secret|client[_-]?secret|cookie|set-cookie|"
    r"x-amz-signature|x-amz-credential|x-amz-security-token|x-goog-signature|x-goog-credential|"
    r"googleaccessid|awsaccesskeyid"
)
# name=value inside a URL query string (signed URLs, ?key= for Gemini REST).
_QUERY = re.compile(rf"([?&;](?:{_CREDENTIAL_NAMES})=)[^&#\s\"'<>]+", re.IGNORECASE)
# "name": "value" in JSON, and name: value in header dumps.
_JSON_FIELD = re.compile(rf'("(?:{_CREDENTIAL_NAMES})"\s*:\s*)"(?:[^"\\]|\\.)*"', re.IGNORECASE)
_HEADER_LINE = re.compile(rf"^(\s*(?:{_CREDENTIAL_NAMES})\s*:\s*)\S.*$", re.IGNORECASE | re.MULTILINE)
_TOKEN_SHAPES = re.compile(
    r"(?i:bearer|basic)\s+[A-Za-z0-9._~+/=-]{8,}|sk-[A-Za-z0-9_-]{16,}|AIza[0-9A-Za-z_-]{30,}|hf_[A-Za-z0-9]{20,}"
)
# user:password@ in a URL (``--base-url http://user:pass@host``), kept out of runs.command_line.
_USERINFO = re.compile(r"(\b[a-z][a-z0-9+.-]*://)[^/\s:@]+:[^/\s@]+@", re.IGNORECASE)
# One pass over clean text decides whether any of the substitutions is needed.
_ANY = re.compile(
    "|".join(f"(?:{p.pattern})" for p in (_QUERY, _JSON_FIELD, _HEADER_LINE, _TOKEN_SHAPES, _USERINFO)),
    re.IGNORECASE | re.MULTILINE,
)


def secret_env_values(environ: Mapping[str, str] | None = None) -> tuple[str, ...]:
    """Values of environment variables whose names look like credentials, longest first."""
    env = os.environ if environ is None else environ
    values = {v for k, v in env.items() if _SECRET_ENV_NAME.search(k) and len(v) >= _MIN_SECRET_LEN}
    return tuple(sorted(values, key=len, reverse=True))


class Scrubber:
    """Redacts credentials from text. Cheap on clean text: one regex search and a few ``in`` tests."""

    def __init__(self, environ: Mapping[str, str] | None = None) -> None:
        self._env_values = secret_env_values(environ)

    def __call__(self, text: str | None) -> str | None:
        if not text:
            return text
        for value in self._env_values:
            if value in text:
                text = text.replace(value, REDACTED)
        if _ANY.search(text) is None:
            return text
        text = _QUERY.sub(rf"\1{REDACTED}", text)
        text = _JSON_FIELD.sub(rf'\1"{REDACTED}"', text)
        text = _HEADER_LINE.sub(rf"\1{REDACTED}", text)
        text = _USERINFO.sub(rf"\1{REDACTED}@", text)
        return _TOKEN_SHAPES.sub(REDACTED, text)
