"""``python -m tissue_oracle.bench.soak --slides 200 --work DIR``: run the soak and print its report."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from tissue_oracle.bench.soak.run import SoakConfig, report_text, run_soak, write_report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tissue_oracle.bench.soak", description=__doc__)
    parser.add_argument("--slides", type=int, default=200, help="tiny synthetic slides (default 200)")
    parser.add_argument("--size", type=int, default=1024, help="slide side in pixels (default 1024)")
    parser.add_argument("--seed", type=int, default=12)
    parser.add_argument(
        "--work", type=Path, default=Path("soak"), help="working folder (slides, outputs, report)"
    )
    parser.add_argument("--kill-at", type=float, default=0.5, help="fraction of slides finished at the kill")
    args = parser.parse_args(argv)
    config = SoakConfig(
        slides=args.slides, size=args.size, seed=args.seed, work=args.work, kill_at=args.kill_at
    )
    report = run_soak(config)
    write_report(report, args.work / "soak-report.json")
    print(report_text(report))
    return 0 if report.passed else 1


if __name__ == "__main__":
    sys.exit(main())
