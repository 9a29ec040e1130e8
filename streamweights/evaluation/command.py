"""What ``streamweights evaluate`` and ``bench/quality.py`` do: run the suite with a
progress bar, print the per-stream verdicts, write the results page and (optionally)
record a trace and a visual report per stream."""

from __future__ import annotations

import pathlib
import sys
from typing import TextIO

from streamweights.evaluation.conformal import conformal_rows
from streamweights.evaluation.progress import ProgressBar
from streamweights.evaluation.results_page import render_results
from streamweights.evaluation.suite import SuiteResult, headline, results_table, run_suite


def evaluate(names: list[str] | None = None, *, events: int | None = None,
             train_window: int | None = None, seed: int = 7, jobs: int = 1,
             replicates: int = 1_000, results_path: str | None = None,
             record_dir: str | None = None, notes: dict[str, str] | None = None,
             best_river_note: str | None = None,
             command: str = "streamweights evaluate", out: TextIO | None = None,
             progress: bool = True) -> SuiteResult:
    out = out if out is not None else sys.stdout
    suite = run_suite(names, events=events, train_window=train_window, seed=seed, jobs=jobs,
                      replicates=replicates, record_dir=record_dir,
                      progress=ProgressBar() if progress else None)
    for row in results_table(suite):
        print(f"{row['stream']:<22} {row['metric']:<8} best raw {row['best raw loss']:<10.4g} "
              f"default chain {row['default chain']:<10.4g} vs best raw {row['vs best raw']:<5} "
              f"vs river EWA {row['vs river EWA'] or '-'}", file=out)
    for row in conformal_rows([(r.name, r.conformal) for r in suite.streams if r.conformal]):
        print(f"{row['stream']:<22} conformal: DtACI coverage {row['DtACI cov 0.1']:.4f} / "
              f"{row['DtACI cov 0.05']:.4f} (target 0.9 / 0.95, held {row['held']}), size "
              f"{row['DtACI size 0.1']:.3g} vs best ACI {row['best ACI size 0.1']:.3g}; split "
              f"{row['split cov 0.1']:.4f} / {row['split cov 0.05']:.4f}", file=out)
    top = headline(suite)
    print(f"default chain no worse than the best raw model on {top['no_worse_than_best_raw']} "
          f"of {top['streams']} streams ({100 * top['share_no_worse_than_best_raw']:.0f}%); "
          f"suite ran in {suite.seconds / 60:.1f} min", file=out)
    if results_path:
        path = pathlib.Path(results_path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(render_results(suite, command, notes, best_river_note),
                        encoding="utf-8")
        print(f"wrote {path}", file=out)
    if record_dir:
        from streamweights.report import build_report

        for result in suite.streams:
            page, _ = build_report(pathlib.Path(record_dir) / result.name)
            print(f"wrote {page}", file=out)
    return suite
