"""Resuming a run: which slides it already finished, matched by content, and under which policy.

- A slide is skipped when the run finished a slide with the same content hash
  (``tools.file_hash.content_hash``, stored in ``slides.file_hash``): a renamed file is still
  recognised. A file whose name matches a finished slide but whose content differs is reported
  as changed and segmented again (its earlier calls stay in the store as the audit trail).
- A run id is tied to one policy: the canonical YAML of the policy in force (the command line's
  role overrides and caps folded in, see :func:`effective_policy`) must equal the one the run
  was begun under, or :func:`check_same_policy` refuses before anything is paid for. A changed
  policy or cap is a new run; calls already paid for are answered from the store's cache.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import yaml

from tissue_oracle.agent.run_settings import RunSettings
from tissue_oracle.agent.slide_ids import check_run_id, slide_ids
from tissue_oracle.policies.policy import Policy
from tissue_oracle.store.scrub import Scrubber
from tissue_oracle.tools.errors import ConfigError
from tissue_oracle.tools.file_hash import content_hash
from tissue_oracle.tools.schemas import Role


@dataclass(kw_only=True)
class SlidePlan:
    """What a run will do with one input file."""

    path: Path
    slide_id: str
    content_hash: str | None
    """None when the file can't be read (it then fails as a slide, with the reader's advice)."""
    skip: bool = False
    """The run already finished a slide with this content."""
    note: str | None = None
    """Why it is skipped under another id, or that it changed since the run finished it."""


def plan_slides(paths: list[Path], ids: list[str], finished: dict[str, str | None]) -> list[SlidePlan]:
    """One plan per path; ``finished`` is ``store.finished_slide_hashes(run_id)``."""
    by_hash: dict[str, str] = {}
    for done_id, done_hash in sorted(finished.items()):
        if done_hash:
            by_hash.setdefault(done_hash, done_id)
    plans = []
    for path, sid in zip(paths, ids, strict=True):
        try:
            digest: str | None = content_hash(path)
        except OSError:
            digest = None
        plan = SlidePlan(path=path, slide_id=sid, content_hash=digest)
        if digest is not None and finished.get(sid) == digest:
            plan.skip = True
        elif digest is not None and digest in by_hash:
            plan.skip = True
            plan.note = f"same content as slide {by_hash[digest]!r}, which this run finished"
        elif sid in finished:
            old = finished[sid] or "unknown"
            plan.note = (
                f"changed since this run finished it (content {_short(old)} -> {_short(digest)}); "
                "segmented again"
            )
        plans.append(plan)
    return plans


def _short(digest: str | None) -> str:
    if not digest:
        return "unreadable"
    scheme, _, hexdigest = digest.partition(":")
    return f"{scheme}:{hexdigest[:12]}" if hexdigest else digest[:12]


def effective_policy(policy: Policy, specs: dict[Role, str]) -> Policy:
    """``policy`` with the roles actually built (``OracleSet.specs``) written into it."""
    updates: dict[str, Any] = {
        f"roles.{role}": specs[role]
        for role in ("oracle", "reviewer")
        if specs.get(role) and specs[role] != getattr(policy.roles, role)
    }
    updated = policy.with_updates(updates) if updates else policy
    classifier = specs.get("classifier")
    if classifier and classifier != updated.roles.classifier_spec:
        updated = updated.with_updates({"roles.classifier": classifier})
    return updated


def check_same_policy(recorded_yaml: str | None, run_id: str, policy: Policy) -> None:
    """Refuse (``ConfigError``) to resume ``run_id`` under a policy other than the one it began with."""
    if recorded_yaml is None:
        return
    current = Scrubber()(policy.to_yaml()) or ""
    if current == recorded_yaml:
        return
    differences = _differences(_load(recorded_yaml), _load(current))
    shown = "; ".join(differences[:6]) + ("; ..." if len(differences) > 6 else "")
    raise ConfigError(
        f"run {run_id!r} was begun under another policy; resuming it now would mix two policies "
        f"in one run. Differences (recorded -> now): {shown or 'formatting only'}. Resume with the "
        "same policy, roles and caps, or leave out --run-id to start a new run (calls already paid "
        "for are answered from the store's cache)."
    )


def _load(text: str) -> Any:
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        return {}


def _differences(old: Any, new: Any, prefix: str = "") -> list[str]:
    if isinstance(old, dict) and isinstance(new, dict):
        found: list[str] = []
        for key in sorted(set(old) | set(new), key=str):
            found += _differences(old.get(key), new.get(key), f"{prefix}{key}.")
        return found
    if old != new:
        return [f"{prefix.rstrip('.')}: {old!r} -> {new!r}"]
    return []


def prepare_resume(
    paths: list[Path], settings: RunSettings, store: Any, specs: dict[Role, str]
) -> tuple[RunSettings, list[SlidePlan]]:
    """Before a run begins: its settings with the effective policy, and a plan per path.

    Raises ``ConfigError`` for an unsafe run id or a policy other than the one the run began
    with. ``specs`` are the role specs in force (``OracleSet.specs`` or ``role_specs(...)``);
    ``store`` answers ``run_policy`` and ``finished_slide_hashes``.
    """
    run_id = check_run_id(settings.run_id)
    settings = replace(settings, policy=effective_policy(settings.policy, specs))
    check_same_policy(store.run_policy(run_id), run_id, settings.policy)
    return settings, plan_slides(paths, slide_ids(paths), store.finished_slide_hashes(run_id))
