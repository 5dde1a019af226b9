"""Build the oracle behind ``replay:AUDIT_DB`` for one role.

The replay spec names only a file; the backend and model that must replay (their request hashes
are the cache keys) are read from the recorded calls: the backend:model that answered most of
that role's calls in the latest run that has any.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from tissue_oracle.oracles.replay import ReplayOracle
from tissue_oracle.store.audit_store import AuditStore
from tissue_oracle.store.reads import StoreReads
from tissue_oracle.tools.errors import ConfigError
from tissue_oracle.tools.oracle_protocol import Oracle
from tissue_oracle.tools.schemas import Role

#: Backends whose spec is the bare name (the model is implied, e.g. ``classical`` is ``classical-v1``).
_TAKES_NO_ARGUMENT = frozenset({"classical"})


def recorded_spec(store: AuditStore, role: Role) -> str:
    """``backend:model`` that served ``role`` in the latest run of ``store`` (ConfigError if none)."""
    served = StoreReads(store.query, str(store.path)).served_role(role)
    if served is None:
        raise ConfigError(
            f"audit store {str(store.path)!r} has no successful {role!r} calls to replay. "
            "Replay a store recorded with that role, or give the role a live backend."
        )
    backend, model = served
    if backend == "student":  # its model name is an architecture and digest, not the checkpoint path
        raise ConfigError(
            f"{role!r} was served by the student {model!r}, which replay can't rebuild from the store. "
            "Give the role 'student:PATH' with the same checkpoint: it is local and costs nothing."
        )
    return backend if backend in _TAKES_NO_ARGUMENT or not model else f"{backend}:{model}"


def build_replay_oracle(audit_path: Path, role: Role, build_inner: Callable[[str], Oracle]) -> ReplayOracle:
    """The recorded backend for ``role``, built by ``build_inner(spec)``, answering only from the store.

    Open the run's own (writable) store before calling this when both are the same file: the
    store is shared within a process, but a read-only open can't later become writable. The
    store opened here closes when the oracle's ``aclose`` runs.
    """
    store = AuditStore.open(audit_path, read_only=True)
    try:
        inner = build_inner(recorded_spec(store, role))
    except BaseException:
        store.close()
        raise
    return ReplayOracle(inner, store.recorder, on_close=store.close)
