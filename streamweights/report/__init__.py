"""Visual report of a recorded run: what the adapters did, as plots on one HTML page.

A run recorded with :class:`~streamweights.evaluation.trace.TraceRecorder`
(``streamweights run --report DIR`` or ``streamweights evaluate --record DIR``) becomes
``DIR/report.html``: ensemble weights over time with drift marked, rolling loss of the
raw models against the adapted output, reliability diagrams before and after
calibration, the estimated class mix against the true one, pending labels and
throughput. Needs matplotlib (``pip install 'streamweights[report]'``).
"""

from streamweights.report.page import build_report, render_page
from streamweights.report.plots import Plot, stream_plots

__all__ = ["Plot", "build_report", "render_page", "stream_plots"]
