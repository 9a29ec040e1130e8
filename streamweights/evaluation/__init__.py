"""The evaluation suite: how much each adapter helps on real drifting streams.

Every stream of the suite is replayed the way the service meets it: K deployed models
of different families are trained on an initial window and frozen, then every later
event is a prediction (the frozen models' outputs) whose label arrives after a random
delay. Contenders — each raw model, the uniform average, river's own answers to the
problem and ours (each adapter alone and the default chain) — see the same events in
the same order and are scored prequentially (test, then train). Per-stream confidence
intervals come from a circular block bootstrap, which respects the autocorrelation a
drifting stream's losses have; a final table counts wins, ties and losses.

Modules, one idea each: :mod:`.streams` (which streams), :mod:`.episode` (a stream turned
into deployed-model outputs and delayed labels), :mod:`.contenders` (who competes),
:mod:`.metrics` (per-event losses), :mod:`.bootstrap` (intervals and verdicts),
:mod:`.trace` (the time series a report plots), :mod:`.suite` (running it all),
:mod:`.results_page` (the markdown page) and :mod:`.progress` (a progress bar).
"""

from streamweights.evaluation.bootstrap import Comparison, block_bootstrap_means, compare
from streamweights.evaluation.episode import Episode, build_episode
from streamweights.evaluation.streams import SUITE, SuiteStream, suite_streams
from streamweights.evaluation.suite import StreamResult, SuiteResult, evaluate_stream, run_suite

__all__ = [
    "SUITE",
    "Comparison",
    "Episode",
    "StreamResult",
    "SuiteResult",
    "SuiteStream",
    "block_bootstrap_means",
    "build_episode",
    "compare",
    "evaluate_stream",
    "run_suite",
    "suite_streams",
]
