"""``tissue-oracle probe SPEC``: a preflight of one model endpoint before a run spends money.

Checks reachability and the key, structured output, how many images one prompt may carry, the
model's coordinate convention (from a synthetic image with a known box), whether thinking and the
answer's cap leave room for an answer, and the price per call against the USD cap. Every probe
request is one row of the audit store (slide ``probe``); the result is cached per endpoint and
model, and ``segment`` then uses the coordinate profile it found. Exit code 0 when every check
passed, 1 when one failed, 2 on a configuration error.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

if TYPE_CHECKING:
    from tissue_oracle.oracles.probe import ProbeReport


def probe(
    spec: Annotated[
        str, typer.Argument(help="Backend spec to probe, e.g. openai:Qwen/Qwen2.5-VL-7B-Instruct.")
    ],
    base_url: Annotated[
        list[str] | None,
        typer.Option(
            "--base-url",
            help="Server URL (as for segment: a bare URL is for openai:, gemini=URL for Gemini).",
        ),
    ] = None,
    policy: Annotated[
        str, typer.Option(help="Policy whose settings the probe sends (temperature, thinking, caps).")
    ] = "default",
    role: Annotated[
        str, typer.Option(help="Role whose settings apply: oracle, classifier or reviewer.")
    ] = "oracle",
    max_usd: Annotated[float | None, typer.Option(help="The USD cap you plan to run under.")] = None,
    self_hosted: Annotated[
        bool, typer.Option("--self-hosted", help="The openai: server is yours: price it $0.")
    ] = False,
    db: Annotated[Path, typer.Option("--db", help="Audit store the probe's calls are written to.")] = Path(
        "probe/audit.duckdb"
    ),
    as_json: Annotated[bool, typer.Option("--json", help="Print the report as JSON.")] = False,
) -> None:
    """Probe a model endpoint: reach, key, structured output, images per prompt, coordinates, caps, price."""
    from tissue_oracle.tools.errors import TissueOracleError

    try:
        report, cached = run_probe_command(
            spec,
            base_urls=base_url,
            policy_name=policy,
            role=role,
            max_usd=max_usd,
            self_hosted=self_hosted,
            db=db,
        )
    except TissueOracleError as exc:
        from tissue_oracle.agent.safe_text import plain

        typer.echo(f"error: {plain(exc)}", err=True)
        raise typer.Exit(2) from exc
    if as_json:
        typer.echo(json.dumps(report.as_json() | {"cache": str(cached), "audit": str(db)}, indent=2))
    else:
        print_report(report, cached, db)
    raise typer.Exit(0 if report.ok else 1)


def run_probe_command(
    spec: str,
    *,
    base_urls: list[str] | None,
    policy_name: str,
    role: str,
    max_usd: float | None,
    self_hosted: bool,
    db: Path,
) -> tuple[ProbeReport, Path]:
    """Build the spec's oracle as segment would, probe it, record every call in ``db``, cache the result."""
    from tissue_oracle.agent.cmd_segment import build_policy
    from tissue_oracle.agent.oracle_setup import VLM_BACKENDS, base_url_for, build_one, parse_base_urls
    from tissue_oracle.oracles.probe import Prober, endpoint_of, run_probe, save_probe
    from tissue_oracle.oracles.vlm import VLMOracle
    from tissue_oracle.policies.prices import split_spec
    from tissue_oracle.store.audit_store import AuditStore
    from tissue_oracle.tools.errors import ConfigError
    from tissue_oracle.tools.oracle_protocol import CallContext
    from tissue_oracle.tools.schemas import RunRecord

    backend, model = split_spec(spec)
    if backend not in VLM_BACKENDS:
        raise ConfigError(
            f"probe checks model servers; {spec!r} is not one ({', '.join(sorted(VLM_BACKENDS))}:MODEL)."
        )
    if role not in ("oracle", "classifier", "reviewer"):
        raise ConfigError(f"--role {role!r}: use oracle, classifier or reviewer.")
    policy = build_policy(policy_name, max_usd=None, max_calls=None, self_hosted=self_hosted)
    urls = parse_base_urls(base_urls)
    oracle, price = build_one(spec, policy, role=role, base_urls=urls)  # type: ignore[arg-type]
    assert isinstance(oracle, VLMOracle)
    endpoint = endpoint_of(backend, base_url_for(spec, urls))
    run_id = f"probe-{model.rsplit('/', 1)[-1]}-{int(__import__('time').time())}"
    db.parent.mkdir(parents=True, exist_ok=True)
    needed = max(2, policy.classify.batch_size + 2 * policy.autocontext.top_k)
    with AuditStore.open(db) as store:
        store.begin_run(
            RunRecord(
                run_id=run_id,
                policy_name=policy.name,
                policy_yaml=policy.to_yaml(),
                policy_hash=policy.policy_hash,
                tool_version=_version(),
                command_line=f"tissue-oracle probe {spec}",
            )
        )

        def ctx_for(stage: Any) -> CallContext:
            return CallContext(
                run_id=run_id,
                slide_id="probe",
                stage=stage,
                role=role,  # type: ignore[arg-type]
                recorder=store.recorder,
            )

        prober = Prober(
            transport=oracle.transport,
            backend=backend,
            model=model,
            ctx_for=ctx_for,
            price=price,
            temperature=oracle.temperature,
            thinking=oracle.thinking,
            answer_tokens=oracle.max_tokens,
            timeout_s=oracle.timeout_s,
        )

        async def main() -> ProbeReport:
            try:
                return await run_probe(prober, images_needed=needed, max_usd=max_usd, endpoint=endpoint)
            finally:
                await oracle.aclose()

        report = asyncio.run(main())
        store.finish_run(run_id, "finished" if report.ok else "failed")
    return report, save_probe(report)


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("tissue-oracle")
    except PackageNotFoundError:
        return "unknown"


def print_report(report: ProbeReport, cached: Path, db: Path) -> None:
    """The checks as a table, then where the result and the calls were written."""
    from rich.table import Table

    from tissue_oracle.agent.console import make_console
    from tissue_oracle.agent.safe_text import cell

    table = Table(title=cell(f"probe {report.spec} at {report.endpoint}"))
    for column in ("check", "result", "detail"):
        table.add_column(column, overflow="fold")
    marks = {True: "[green]ok[/]", False: "[red]FAILED[/]", None: "[dim]skipped[/]"}
    for check in report.checks:
        table.add_row(cell(check.name), marks[check.ok], cell(check.detail))  # details quote the endpoint
    console = make_console()
    console.print(table)
    console.print(cell(f"cached for segment: {cached}\naudited calls: {db} (slide 'probe')"))
