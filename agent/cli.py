"""The ``tissue-oracle`` command line: one entry point, one module per command.

Commands are listed here as data (name -> ``module:attribute``) and imported when the CLI
starts; each command module keeps its heavy imports inside the command body, so ``--help``
stays fast. The ``demo``, ``synth`` and ``bench`` commands live in ``bench/`` beside what they
drive: this table is the one place where the entry point reaches down to them.
"""

from __future__ import annotations

import gc
import importlib

import typer

app = typer.Typer(
    name="tissue-oracle",
    help="Find the tissue in whole-slide images with VLM oracles, under a budget, with every call audited.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)

#: name -> "module:attribute"; the attribute is a command function or a typer sub-app.
COMMANDS: dict[str, str] = {
    "audit": "tissue_oracle.agent.cmd_audit:app",
    "segment": "tissue_oracle.agent.cmd_segment:segment",
    "report": "tissue_oracle.agent.cmd_report:report",
    "probe": "tissue_oracle.agent.cmd_probe:probe",
    "demo": "tissue_oracle.bench.cmd_demo:demo",
    "distil": "tissue_oracle.agent.cmd_distil:distil",
    "bench": "tissue_oracle.bench.evaluation.cmd_bench:bench",
    "synth": "tissue_oracle.bench.synth.cmd_synth:synth",
}


def _register(name: str, target: str) -> None:
    module_name, _, attribute = target.partition(":")
    obj = getattr(importlib.import_module(module_name), attribute)
    if isinstance(obj, typer.Typer):
        app.add_typer(obj, name=name)
    else:
        app.command(name)(obj)


for _name, _target in COMMANDS.items():
    _register(_name, _target)


def main() -> None:
    try:
        app()
    finally:
        # The process ends here, with stores and files closed: spare the garbage collector's last
        # sweeps over every object the run created (with torch loaded they cost about half a second).
        gc.freeze()


if __name__ == "__main__":
    main()
