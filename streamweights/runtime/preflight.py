"""What ``run`` checks at start-up, without starting anything: ``streamweights validate``.

Why: a config that validates must not then fail at ``run``'s start-up. Beyond the
config's own rules (:mod:`streamweights.config`), start-up builds objects whose
constructors refuse settings: every stream's pipeline (adapter chains, the join, a
torch model), the source (a replay scenario, a readable input file), the check that the
replay's stream is configured, the HTTP token. :func:`check_startup` builds exactly
those, and checks that the folders and files ``run`` writes can be created, but opens
no sink, binds no port and connects to no broker (Kafka's reachability is a run-time
matter, reported by ``run``).
"""

from __future__ import annotations

import os
import pathlib
from collections.abc import Mapping

from streamweights.config import ServiceConfig
from streamweights.pipeline import Pipeline
from streamweights.runtime.exceptions import RuntimeSetupError
from streamweights.runtime.http import load_http_token
from streamweights.runtime.sources import ReplaySource, make_source


def check_startup(config: ServiceConfig, environ: Mapping[str, str] | None = None, *,
                  objects: bool = True) -> None:
    """Raise ``ConfigError`` / ``RuntimeSetupError`` (one line each) for whatever ``run``
    would refuse at start-up; return quietly otherwise. ``objects=False`` skips building
    the pipeline and the source (``run`` builds them right after, with the same code)."""
    if objects:
        pipeline = Pipeline(config.streams)
        if config.source.kind != "kafka":
            source = make_source(config.source)
            check_source_matches_streams(source, pipeline)
    load_http_token(config.http_token_file, os.environ if environ is None else environ)
    _check_creatable(config.state_dir, "state_dir", directory=True)
    if config.artifacts_dir is not None:
        _check_creatable(config.artifacts_dir, "artifacts.dir", directory=True)
    for field, path in (("outputs.adapted", config.adapted_path),
                        ("outputs.weights", config.weights_path),
                        ("outputs.dead_letter", config.dead_letter_path)):
        if path is not None and path != "-":
            _check_creatable(path, field, directory=False)


def check_source_matches_streams(source: object, pipeline: Pipeline) -> None:
    """A replay emits one stream with fixed models: both must be configured; a table
    replay is of classifiers, with as many classes as the stream is configured for."""
    if isinstance(source, ReplaySource):
        stream = pipeline.streams.get(source.stream)
        if stream is None:
            raise RuntimeSetupError(f"source.stream: the replay emits stream "
                                    f"{source.stream!r}, which is not configured "
                                    f"(streams: {', '.join(pipeline.streams)})")
        if tuple(stream.config.models) != tuple(source.models):
            raise RuntimeSetupError(f"streams[{stream.name}].models: the replay's deployed "
                                    f"models are {list(source.models)}")
        table = source.replay.table
        if table is not None and stream.config.task != "classification":
            raise RuntimeSetupError(f"streams[{stream.name}].task: a table source replays "
                                    "classifiers; set task: classification")
        if table is not None and stream.config.n_classes != len(table.classes):
            raise RuntimeSetupError(
                f"streams[{stream.name}].classes: {stream.config.n_classes}, but "
                f"{table.path} has {len(table.classes)} classes {table.classes}; set "
                f"streams[{stream.name}].classes to {len(table.classes)} (or list the "
                "labels in source.classes)")
        declared = stream.config.n_features
        if table is not None and declared is not None and declared != len(table.features):
            raise RuntimeSetupError(
                f"streams[{stream.name}].features: {declared}, but {table.path} has "
                f"{len(table.features)} feature columns {table.features}; set "
                f"streams[{stream.name}].features to {len(table.features)} (or list the "
                "columns in source.feature_columns)")


def _check_creatable(path: str, field: str, *, directory: bool) -> None:
    """``path`` exists as the right kind (and writable), or its nearest existing
    ancestor is a folder (so ``run`` can create it)."""
    target = pathlib.Path(path)
    if target.exists():
        if directory and not target.is_dir():
            raise RuntimeSetupError(f"{field}: {path} exists and is not a folder")
        if not directory and target.is_dir():
            raise RuntimeSetupError(f"{field}: {path} is a folder; give a file path")
        if not os.access(target, os.W_OK):
            raise RuntimeSetupError(f"{field}: {path} is not writable by this user")
        return
    # Permissions of folders still to be made are the deploying machine's matter (a
    # k8s config names /var/lib/...), so only a file standing where a folder must go is
    # refused here.
    ancestor = target.absolute().parent
    while not ancestor.exists() and ancestor != ancestor.parent:
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        raise RuntimeSetupError(f"{field}: cannot create {path}: {ancestor} is not a folder")
