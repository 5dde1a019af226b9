"""The one family of errors that tissue-oracle raises to its callers.

    TissueOracleError
    ├── SlideError                 a slide file can't be used (names the file, says what to do)
    │   ├── SlideNotFoundError
    │   ├── UnsupportedSlideError  not an image, or a format no reader handles
    │   ├── CorruptSlideError      zero bytes, truncated, or a tile that won't decode
    │   └── SlideTooLargeError     dimensions beyond any real slide
    ├── ConfigError                a policy, spec string or option is wrong (lists valid choices)
    ├── OracleError                an oracle could not answer after its retries
    │   ├── OracleUnavailableError the backend can't be reached or refused us (auth, 4xx)
    │   └── ReplayMissError        replay found no recorded answer for this request
    ├── BudgetExceededError        a reservation would break a hard budget cap
    └── StoreError                 the audit store can't be opened or written
        └── StoreLockedError       another process holds the audit store

Library errors are translated at the boundary (``raise SlideError(...) from exc``), so no raw
OpenSlide, PIL, DuckDB or HTTP traceback reaches a user.
"""

from __future__ import annotations

from pathlib import Path


class TissueOracleError(Exception):
    """Base of every error tissue-oracle raises on purpose."""


class SlideError(TissueOracleError):
    """A slide can't be used. The message names the file and says what to do next."""

    def __init__(self, path: str | Path | None, problem: str, advice: str) -> None:
        self.path = None if path is None else str(path)
        self.problem = problem
        self.advice = advice
        where = "in-memory slide" if path is None else f"{str(path)!r}"
        super().__init__(f"{where}: {problem}. {advice}")


class SlideNotFoundError(SlideError):
    pass


class UnsupportedSlideError(SlideError):
    pass


class CorruptSlideError(SlideError):
    pass


class SlideTooLargeError(SlideError):
    pass


class ConfigError(TissueOracleError):
    """A policy file, spec string or option is invalid; the message lists the valid choices."""


class OracleError(TissueOracleError):
    """An oracle could not produce a valid answer after its retries."""


class OracleUnavailableError(OracleError):
    """The backend can't be reached, or refused the request (bad key, unknown model...)."""


class ReplayMissError(OracleError):
    """The replay backend has no recorded answer for this exact request."""


class BudgetExceededError(TissueOracleError):
    """Reserving for a call would exceed a hard budget cap."""


class StoreError(TissueOracleError):
    """The audit store can't be opened, migrated or written."""


class StoreLockedError(StoreError):
    """Another process holds the audit store open for writing."""
