"""Service configuration: YAML in, validated dataclasses out.

Every error names the path of the bad field, e.g.
``streams[0].adapters[1].share: must be in (0, 1), got 2``, so a user can fix a config
without reading code. ``streamweights validate FILE`` runs exactly this.

Every invalid config is a :class:`ConfigError` with a one-line message, never another
exception: the YAML is read within bounds (:mod:`streamweights.config_yaml`: size,
nesting, alias expansion, UTF-8, duplicate keys), integers are bounded (at most
:data:`MAX_INTEGER`, sizes that allocate memory less, see :data:`STAGE_INTEGER_LIMITS`),
numbers that must be real numbers must be finite, and an adapter's constructor failing
in any way is reported against the stage's path.
"""

from __future__ import annotations

import inspect
import math
import os
import pathlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from streamweights.adapters import Adapter, Chain, build_adapter
from streamweights.adapters.base import _REGISTRY as ADAPTER_TYPES
from streamweights.adapters.base import constructor_signature
from streamweights.adapters.validation import short_repr
from streamweights.config_env import EnvironmentReferenceError, expand_environment
from streamweights.config_yaml import ConfigYamlError, read_yaml

TASKS = ("classification", "regression")
#: Stages that take the K deployed models' outputs; every chain starts with one.
ENSEMBLE_TYPES = ("Hedge", "FixedShare", "OnlineStacking", "Portfolio")
#: What a classification stream runs when its config names no ``adapters`` (the chain of
#: ``configs/demo.yaml`` too): candidate chains mixed online, then the drift watch.
DEFAULT_CLASSIFICATION_ADAPTERS: tuple[dict[str, Any], ...] = (
    {"type": "Portfolio"},
    {"type": "DriftMemory", "capacity": 64, "detector": "adwin"},
)
#: Regression streams take one ensemble stage: the portfolio of the three ensembles.
DEFAULT_REGRESSION_ADAPTERS: tuple[dict[str, Any], ...] = ({"type": "Portfolio"},)
#: Stages that take and return class probabilities; they follow the ensemble.
PROBABILITY_STAGES = ("OnlinePlatt", "OnlineBetaScaling", "Calibeating", "OnlineTemperature",
                      "PriorShift", "DriftMemory", "FeatureCorrection")
SOURCE_KINDS = ("replay", "jsonl", "csv", "parquet", "kafka")
#: Table sources: a user's labelled CSV or Parquet file replayed through deployed models.
TABLE_KINDS = ("csv", "parquet")
#: How a table's labels arrive after their predictions (``source.label_delay``).
LABEL_DELAYS = ("exponential", "fixed", "column")
#: Largest integer any setting takes: 2**53 - 1, the largest a JSON reader (and a float)
#: holds exactly; a count beyond it is a typo, and larger ones crash deep in the run
#: (``islice``, numpy's int64) instead of here.
MAX_INTEGER = 2**53 - 1
#: Most classes a classification stream may have (adapters allocate C x C matrices).
MAX_CLASSES = 10_000
#: Upper bounds for adapter options that size memory allocated at construction; every
#: other integer adapter option is at most :data:`STAGE_INTEGER_MAXIMUM`.
STAGE_INTEGER_LIMITS = {"capacity": 100_000, "n_bins": 100_000, "n_features": 4_096,
                        "seed": 2**32 - 1}
STAGE_INTEGER_MAXIMUM = 1_000_000


class ConfigError(ValueError):
    """A configuration value that cannot be used; the message starts with its path.

    The message is kept to one line of at most :data:`MESSAGE_LIMIT` characters (a
    quoted value may be a 10,000-character string)."""

    MESSAGE_LIMIT = 500

    def __init__(self, message: str) -> None:
        text = " ".join(str(message).split())
        if len(text) > self.MESSAGE_LIMIT:
            text = f"{text[:self.MESSAGE_LIMIT]}... ({len(text):,} characters)"
        super().__init__(text)


#: The checkpoint cadence in Kafka mode when the config gives none (configs/kafka.yaml's):
#: a transaction every 100 ms (Kafka Streams' commit interval under exactly-once) or every
#: 10,000 records. The embedded default (30 s) would outlive the producer's transaction
#: timeout (10 s): at a rate that never leaves the input quiet but takes longer than that
#: to reach the record cadence, the broker would roll every cycle back before its commit.
KAFKA_CHECKPOINT_RECORDS = 10_000
KAFKA_CHECKPOINT_SECONDS = 0.1
#: The Kafka runtime's defaults for ``checkpoint.spread_above`` / ``spread_over``: its
#: commits come ~300 times as often as the embedded checkpoints, so each writes fewer
#: streams and a changed stream waits more of them. With the embedded 256 / 8 a commit of
#: 1,000 changed streams writes 256 (~130 ms, past the 0.1 s cadence), so ``max_share``
#: still holds the loop at half its time, as writing every one did. Measured with 1,000
#: streams in one replica (``bench/kafka.py --streams 1000 --events 120 --spread-variants
#: 256/1 256/8``, forty-seventh session, two rounds): 54,239-56,214 records/s at 32 / 40,
#: against 37,525-41,746 at 256 / 8 and 37,533-39,223 writing every changed stream. Up to
#: 32 x ``spread_over`` changed streams a commit writes 32, so ``spread_over`` only
#: matters past that: with 10,000 streams 32 / 40 writes 250 a commit and ``max_share``
#: binds again. 160 writes ~63 and each stream within ~160 commits: ``bench/kafka.py
#: --streams 10000 --distinct 500 --events 150 --spread-variants 32/160 32/640 --restore``
#: (forty-ninth session, 2,992,880 records): 41,412 records/s at 32 / 160 against 32,383
#: at 32 / 40 and 39,581 at 32 / 640; stopped at 60% and restored by a new replica, 25.0 s
#: (432,318 logged records replayed) against 28.3 s (197,741) and 34.5 s (1,000,305): the
#: ~25 s of loading 10,000 streams' records dominates until the replay passes ~1M records
#: (alternated on one broker, 100 events a stream: 16.4-18.6 s at 160, 18.1-18.3 s at 40).
KAFKA_SPREAD_ABOVE = 32
KAFKA_SPREAD_OVER = 160


@dataclass(frozen=True)
class StreamConfig:
    """One stream: its deployed models, its adapter chain, its join and publishing."""

    name: str
    task: str
    n_classes: int | None
    models: tuple[str, ...]
    adapters: tuple[dict[str, Any], ...]
    max_pending: int = 100_000
    ttl_seconds: float = 3_600.0
    #: A record whose event time is further than this ahead of the stream's newest one
    #: is dead-lettered (``event_time_skew``): one far-future ``ts`` would otherwise
    #: expire every pending prediction and stop time-based publishing for good.
    max_event_time_skew_seconds: float = 86_400.0
    publish_every_labels: int = 1_000
    publish_every_seconds: float = 60.0
    react_to_drift: bool = True
    #: The stream's ``torch:`` block (a deployed torch model the service runs and adapts,
    #: see ``streamweights.adapters.torch.stream_model``), validated; ``None`` if absent.
    torch: dict[str, Any] | None = None
    #: The stream's ``conformal:`` block, normalised (``{"alpha": [...], "method": ...,
    #: options}``); ``None``: no prediction sets or intervals.
    conformal: dict[str, Any] | None = None
    #: The stream's ``performance_estimate:`` block (``{"window": n}``); ``None``: off.
    performance_estimate: dict[str, Any] | None = None
    #: Length of each prediction's ``features`` (the stream's ``features:`` key; a table
    #: source's ``feature_columns``); ``None``: not declared. A default ``Portfolio`` of a
    #: classification stream then adds its feature-aware candidate, and a prediction
    #: without features is a dead letter ``missing_features``.
    n_features: int | None = None

    def build_chain(self) -> Chain:
        """A fresh adapter chain for this stream (already validated at load time)."""
        return Chain([_build_stage(spec, self, f"streams[{self.name}].adapters[{i}]")
                      for i, spec in enumerate(self.adapters)])


@dataclass(frozen=True)
class SourceConfig:
    kind: str = "replay"
    scenario: str = "agrawal-recurring"
    #: Prediction events to replay; ``None``: a built-in scenario's
    #: ``DEFAULT_SCENARIO_EVENTS``, a table's every row.
    events: int | None = None
    seed: int = 7
    path: str | None = None
    label_column: str | None = None
    timestamp_column: str | None = None
    feature_columns: tuple[str, ...] | None = None
    stream: str = "demo"
    #: A table's class labels in class-index order; ``None``: every label in the file.
    classes: tuple[Any, ...] | None = None
    #: A table's row-id column (not a feature); ``None``: ``id`` if the file has one.
    id_column: str | None = None
    label_delay: str = "exponential"
    #: The mean (``exponential``) or the delay (``fixed``) of a label, in seconds.
    label_delay_seconds: float = 20.0
    #: The column holding each label's arrival time (``label_delay: column``).
    label_time_column: str | None = None
    #: Rows of a table the deployed models train on before the replay starts.
    train_rows: int = 3_000


#: ``kafka.security_protocol`` values (kafka-python's names).
SECURITY_PROTOCOLS = ("PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL")
#: ``kafka.sasl_mechanism`` values that take a user name and password.
SASL_MECHANISMS = ("PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512")


@dataclass(frozen=True)
class KafkaSecurity:
    """How the clients authenticate and encrypt (``kafka.security_protocol`` and the
    ``sasl_*`` / ``ssl_*`` keys beside it). The password comes from ``sasl_password``
    (write ``"${KAFKA_PASSWORD}"`` to take it from the environment) or from the file
    named by ``sasl_password_file`` (a mounted Kubernetes secret); it is kept out of
    ``repr`` so it never reaches a log line."""

    security_protocol: str = "PLAINTEXT"
    sasl_mechanism: str | None = None
    sasl_username: str | None = None
    sasl_password: str | None = field(default=None, repr=False)
    ssl_cafile: str | None = None
    ssl_certfile: str | None = None
    ssl_keyfile: str | None = None
    ssl_check_hostname: bool = True

    def client_settings(self) -> dict[str, Any]:
        """The kafka-python client settings these stand for (nothing for PLAINTEXT)."""
        settings: dict[str, Any] = {}
        if self.security_protocol != "PLAINTEXT":
            settings["security_protocol"] = self.security_protocol
        if self.sasl_mechanism:
            settings.update(sasl_mechanism=self.sasl_mechanism,
                            sasl_plain_username=self.sasl_username,
                            sasl_plain_password=self.sasl_password)
        if self.security_protocol in ("SSL", "SASL_SSL"):
            settings["ssl_check_hostname"] = self.ssl_check_hostname
            for key in ("ssl_cafile", "ssl_certfile", "ssl_keyfile"):
                if getattr(self, key):
                    settings[key] = getattr(self, key)
        return settings


@dataclass(frozen=True)
class KafkaConfig:
    """The ``kafka:`` block (``source.kind: kafka``): where the topics are and how to talk
    to the broker. Topic defaults share the ``streamweights.`` prefix; ``None`` for an
    output topic means that output is not written."""

    bootstrap_servers: str
    group_id: str = "streamweights"
    predictions_topic: str = "streamweights.predictions"
    labels_topic: str = "streamweights.labels"
    weights_topic: str | None = "streamweights.weights"
    adapted_topic: str | None = None
    dead_letter_topic: str | None = "streamweights.dead-letter"
    changelog_topic: str = "streamweights.changelog"
    #: Stable per replica (a restart with the same id fences its killed predecessor's
    #: open transaction); default ``<group_id>-<hostname>``, right for a StatefulSet.
    transactional_id: str | None = None
    #: Passed to every kafka-python client that knows the key (SASL/SSL, timeouts ...).
    client: dict[str, Any] = field(default_factory=dict)
    create_topics: bool = True
    partitions: int = 6
    replication_factor: int = 1
    #: Bounded replay: stop once the input read at start-up is processed (tests, bench).
    stop_at_end: bool = False
    #: Live mode: how long a topic read to its end must stay quiet before the other
    #: topic's records of the task may pass it (see ``KafkaSource``).
    max_task_idle_ms: int = 100
    #: When the input goes quiet, pending results are committed at once, but at most
    #: this often (a live input that keeps catching up would otherwise commit after
    #: every small batch and spend its time committing).
    idle_commit_ms: int = 100
    #: A stream record above this fraction of the changelog's message limit is written in
    #: parts of at most that size (``runtime/changelog_parts.py``).
    snapshot_limit_fraction: float = 0.5
    #: The changelog's message limit; ``None`` = ask the broker at start-up.
    max_message_bytes: int | None = None
    #: TLS and SASL settings (``kafka.security_protocol``, ``kafka.sasl_*``, ``kafka.ssl_*``).
    security: KafkaSecurity = field(default_factory=KafkaSecurity)


@dataclass(frozen=True)
class ServiceConfig:
    source: SourceConfig
    streams: tuple[StreamConfig, ...]
    state_dir: str = "./streamweights-state"
    checkpoint_every_records: int = 20_000
    checkpoint_every_seconds: float = 30.0
    #: Past this many streams changed since their last records, a checkpoint writes the
    #: ``1 / checkpoint_spread_over`` of them with the oldest records, and a restore
    #: replays the records since into the others: the input, embedded
    #: (``runtime.service.LocalCheckpoints``); the records each Kafka commit logs in the
    #: changelog (``runtime.commit_spread``). ``spread_over: 1`` writes all, always.
    checkpoint_spread_above: int = 256
    checkpoint_spread_over: int = 8
    #: The most of the loop's time checkpoints may take: after one that took ``d`` s the
    #: next waits for ``d (1 - share) / share`` s of records, at most 1 s, when it wrote
    #: 64 changed streams or more (``runtime.checkpoint_pacing``). 1: never held back.
    checkpoint_max_share: float = 0.5
    http_host: str = "127.0.0.1"
    http_port: int | None = 9108
    #: A file holding the bearer token ``/v1/...`` requires (a mounted Secret); ``None``:
    #: the token comes from ``STREAMWEIGHTS_HTTP_TOKEN`` if set, else no token.
    http_token_file: str | None = None
    adapted_path: str | None = None
    weights_path: str | None = None
    dead_letter_path: str | None = None
    log_format: str = "text"
    progress_every_seconds: float = 5.0
    kafka: KafkaConfig | None = None
    #: Where torch streams' weight files go (``None``: ``<state_dir>/artifacts``) and how
    #: many versions per stream are kept.
    artifacts_dir: str | None = None
    artifacts_retain: int = 10
    extra: dict[str, Any] = field(default_factory=dict)


def load_config(path: str | pathlib.Path,
                environ: Mapping[str, str] | None = None) -> ServiceConfig:
    """Read a YAML config file, expand its ``${NAME}`` references from ``environ``
    (default: the process environment; see :mod:`streamweights.config_env`), validate."""
    try:
        document = read_yaml(pathlib.Path(path))
    except ConfigYamlError as error:
        raise ConfigError(str(error)) from None
    try:
        document = expand_environment(document or {}, os.environ if environ is None else environ)
    except EnvironmentReferenceError as error:
        raise ConfigError(str(error)) from None
    return parse_config(document)


def parse_config(document: Any) -> ServiceConfig:
    """Validate an already-parsed config mapping."""
    root = _Mapping(document, "")
    source = _source(root.sub("source", default={}))
    checkpoint = root.sub("checkpoint", default={})
    http = root.sub("http", default={})
    outputs = root.sub("outputs", default={})
    logging = root.sub("logging", default={})
    artifacts = root.sub("artifacts", default={})
    streams_raw = root.get("streams", list, default=None)
    if not streams_raw:
        raise ConfigError("streams: at least one stream is required")
    validated: set[tuple[Any, ...]] = set()  # stages already built once (see _stream)
    streams = tuple(_stream(item, f"streams[{i}]", validated)
                    for i, item in enumerate(streams_raw))
    seen: set[str] = set()  # one pass: a count per name was quadratic (~1 s at 10,000)
    for stream in streams:
        if stream.name in seen:
            raise ConfigError(f"streams: stream name {stream.name!r} appears twice")
        seen.add(stream.name)
    port = http.get("port", int, default=9108, allow_none=True)
    token_file = http.get("token_file", str, default=None, allow_none=True)
    if token_file is not None and not token_file.strip():
        raise ConfigError("http.token_file: must be a path, got an empty string (remove it "
                          "for no token)")
    if port is not None and not 0 <= port <= 65535:
        raise ConfigError(f"http.port: must be in 0..65535 (0 = any free port), got {port}")
    kafka = None
    if source.kind == "kafka":
        kafka = _kafka(root.sub("kafka") if "kafka" in root.value else None)
    elif "kafka" in root.value:
        root.get("kafka", object)
        raise ConfigError("kafka: only used with source.kind 'kafka'; set source.kind or "
                          "remove the block")
    log_format = logging.get("format", str, default="text")
    if log_format not in ("text", "json"):
        raise ConfigError(f"logging.format: must be 'text' or 'json', got {log_format!r}")
    config = ServiceConfig(
        source=source,
        streams=streams,
        state_dir=root.get("state_dir", str, default="./streamweights-state"),
        checkpoint_every_records=checkpoint.positive_int(
            "every_records", KAFKA_CHECKPOINT_RECORDS if kafka else 20_000),
        checkpoint_every_seconds=checkpoint.positive_float(
            "every_seconds", KAFKA_CHECKPOINT_SECONDS if kafka else 30.0),
        checkpoint_spread_above=checkpoint.positive_int(
            "spread_above", KAFKA_SPREAD_ABOVE if kafka else 256),
        checkpoint_spread_over=checkpoint.positive_int(
            "spread_over", KAFKA_SPREAD_OVER if kafka else 8),
        checkpoint_max_share=_time_share(checkpoint, "max_share", 0.5),
        http_host=http.get("host", str, default="127.0.0.1"),
        http_port=port,
        http_token_file=token_file,
        adapted_path=outputs.get("adapted", str, default=None, allow_none=True),
        weights_path=outputs.get("weights", str, default=None, allow_none=True),
        dead_letter_path=outputs.get("dead_letter", str, default=None, allow_none=True),
        log_format=log_format,
        progress_every_seconds=logging.positive_float("progress_every_seconds", 5.0),
        kafka=kafka,
        artifacts_dir=artifacts.get("dir", str, default=None, allow_none=True),
        artifacts_retain=artifacts.positive_int("retain", 10),
    )
    for mapping in (root, checkpoint, http, outputs, logging, artifacts):
        mapping.reject_unknown()
    return config


def _source(mapping: _Mapping) -> SourceConfig:
    kind = mapping.get("kind", str, default="replay")
    if kind not in SOURCE_KINDS:
        raise ConfigError(f"source.kind: must be one of {', '.join(SOURCE_KINDS)}, got {kind!r}")
    columns = mapping.get("feature_columns", list, default=None, allow_none=True)
    classes = mapping.get("classes", list, default=None, allow_none=True)
    if classes is not None:
        for i, value in enumerate(classes):
            if isinstance(value, (list, dict)) or value is None or (
                    isinstance(value, float) and not math.isfinite(value)):
                raise ConfigError(f"source.classes[{i}]: expected a label (a number or a "
                                  f"string), got {value!r}")
    events = mapping.get("events", int, default=None, allow_none=True)
    if events is not None and events < 1:
        raise ConfigError(f"source.events: must be >= 1, got {events}")
    config = SourceConfig(
        kind=kind,
        scenario=mapping.get("scenario", str, default="agrawal-recurring"),
        events=events,
        seed=mapping.integer("seed", 7),
        path=mapping.get("path", str, default=None, allow_none=True),
        label_column=mapping.get("label_column", str, default=None, allow_none=True),
        timestamp_column=mapping.get("timestamp_column", str, default=None, allow_none=True),
        feature_columns=tuple(str(c) for c in columns) if columns else None,
        stream=mapping.get("stream", str, default="demo"),
        classes=tuple(classes) if classes is not None else None,
        id_column=mapping.get("id_column", str, default=None, allow_none=True),
        label_delay=mapping.get("label_delay", str, default="exponential"),
        label_delay_seconds=mapping.get("label_delay_seconds", float, default=20.0),
        label_time_column=mapping.get("label_time_column", str, default=None, allow_none=True),
        train_rows=mapping.positive_int("train_rows", 3_000),
    )
    if kind in ("jsonl", *TABLE_KINDS) and not config.path:
        raise ConfigError(f"source.path: required for source.kind {kind!r}")
    if kind in TABLE_KINDS:
        if not config.label_column:
            raise ConfigError(f"source.label_column: required for source.kind {kind!r}")
        if config.classes is not None and len(config.classes) < 2:
            raise ConfigError("source.classes: list at least two class labels")
        if config.label_delay not in LABEL_DELAYS:
            raise ConfigError(f"source.label_delay: must be one of {', '.join(LABEL_DELAYS)}, "
                              f"got {config.label_delay!r}")
        if not (math.isfinite(config.label_delay_seconds) and config.label_delay_seconds >= 0):
            raise ConfigError("source.label_delay_seconds: must be a number >= 0, got "
                              f"{config.label_delay_seconds}")
        if (config.label_delay == "column") != (config.label_time_column is not None):
            raise ConfigError("source.label_time_column: set it exactly when "
                              "source.label_delay is 'column'")
        if config.label_time_column is not None and config.timestamp_column is None:
            raise ConfigError("source.timestamp_column: required with source.label_time_column "
                              "(label times are compared with event times)")
    else:
        for key in ("classes", "id_column", "label_time_column", "train_rows", "label_delay",
                    "label_delay_seconds", "label_column", "timestamp_column",
                    "feature_columns"):
            if key in mapping.value:
                raise ConfigError(f"source.{key}: only used with source.kind csv or parquet; "
                                  "remove it or set source.kind")
    mapping.reject_unknown()
    return config


def _time_share(mapping: _Mapping, key: str, default: float) -> float:
    """A share of the loop's time: a number in (0, 1] (1: no limit)."""
    value = mapping.get(key, float, default=default)
    if not (math.isfinite(value) and 0 < value <= 1):
        raise ConfigError(f"{mapping._key_path(key)}: must be a share of the time in (0, 1] "
                          f"(1: never held back), got {value}")
    return value


def _kafka(mapping: _Mapping | None) -> KafkaConfig:
    if mapping is None:
        raise ConfigError("kafka: required for source.kind 'kafka' (at least "
                          "kafka.bootstrap_servers)")

    def topic(key: str, default: str | None, optional: bool = True) -> str | None:
        value = mapping.get(key, str, default=default, allow_none=optional)
        if value is not None and not value.strip():
            raise ConfigError(f"kafka.{key}: must be a topic name, got an empty string")
        return value

    client = mapping.get("client", dict, default={})
    for key in client:
        if not isinstance(key, str):
            raise ConfigError(f"kafka.client: keys must be strings, got {key!r}")
    fraction = mapping.positive_float("snapshot_limit_fraction", 0.5)
    if fraction > 1:
        raise ConfigError(f"kafka.snapshot_limit_fraction: must be in (0, 1], got {fraction}")
    limit = mapping.get("max_message_bytes", int, default=None, allow_none=True)
    if limit is not None and limit > 2**31 - 1:
        raise ConfigError(f"kafka.max_message_bytes: must be < 2**31 (Kafka's limit is an "
                          f"int32), got {limit}")
    if limit is not None and limit < 1024:
        raise ConfigError(f"kafka.max_message_bytes: must be >= 1024, got {limit}")
    config = KafkaConfig(
        bootstrap_servers=mapping.get("bootstrap_servers", str),
        group_id=mapping.get("group_id", str, default="streamweights"),
        predictions_topic=topic("predictions_topic", "streamweights.predictions", False),
        labels_topic=topic("labels_topic", "streamweights.labels", False),
        weights_topic=topic("weights_topic", "streamweights.weights"),
        adapted_topic=topic("adapted_topic", None),
        dead_letter_topic=topic("dead_letter_topic", "streamweights.dead-letter"),
        changelog_topic=topic("changelog_topic", "streamweights.changelog", False),
        transactional_id=mapping.get("transactional_id", str, default=None, allow_none=True),
        client=dict(client),
        create_topics=mapping.get("create_topics", bool, default=True),
        partitions=mapping.positive_int("partitions", 6, maximum=2**31 - 1),
        replication_factor=mapping.positive_int("replication_factor", 1, maximum=2**15 - 1),
        stop_at_end=mapping.get("stop_at_end", bool, default=False),
        max_task_idle_ms=mapping.integer("max_task_idle_ms", 100, minimum=0),
        idle_commit_ms=mapping.integer("idle_commit_ms", 100, minimum=0),
        snapshot_limit_fraction=fraction,
        max_message_bytes=limit,
        security=_kafka_security(mapping, client),
    )
    for key in ("max_task_idle_ms", "idle_commit_ms"):
        if getattr(config, key) < 0:
            raise ConfigError(f"kafka.{key}: must be >= 0, got {getattr(config, key)}")
    mapping.reject_unknown()
    return config


def _kafka_security(mapping: _Mapping, client: dict[str, Any]) -> KafkaSecurity:
    """The ``kafka.security_protocol`` / ``sasl_*`` / ``ssl_*`` keys, checked together so a
    half-configured connection fails here (and in ``validate``), not at the broker."""
    protocol = mapping.get("security_protocol", str, default="PLAINTEXT").upper()
    if protocol not in SECURITY_PROTOCOLS:
        raise ConfigError(f"kafka.security_protocol: must be one of "
                          f"{', '.join(SECURITY_PROTOCOLS)}, got {protocol!r}")
    mechanism = mapping.get("sasl_mechanism", str, default=None, allow_none=True)
    username = mapping.get("sasl_username", str, default=None, allow_none=True)
    password = mapping.get("sasl_password", str, default=None, allow_none=True)
    password_file = mapping.get("sasl_password_file", str, default=None, allow_none=True)
    files = {key: mapping.get(key, str, default=None, allow_none=True)
             for key in ("ssl_cafile", "ssl_certfile", "ssl_keyfile")}
    check_hostname = mapping.get("ssl_check_hostname", bool, default=True)
    sasl = protocol.startswith("SASL_")
    if sasl:
        if mechanism is None or mechanism.upper() not in SASL_MECHANISMS:
            raise ConfigError(f"kafka.sasl_mechanism: must be one of {', '.join(SASL_MECHANISMS)}"
                              f" with security_protocol {protocol}, got {mechanism!r}")
        mechanism = mechanism.upper()
        if not username:
            raise ConfigError(f"kafka.sasl_username: required with sasl_mechanism {mechanism}")
        if (password is None) == (password_file is None):
            raise ConfigError("kafka.sasl_password: give exactly one of sasl_password (e.g. "
                              "\"${KAFKA_PASSWORD}\") and sasl_password_file")
        if password_file is not None:
            try:
                password = pathlib.Path(password_file).read_text(encoding="utf-8")
            except (OSError, UnicodeDecodeError) as error:
                raise ConfigError(f"kafka.sasl_password_file: cannot read {password_file!r} "
                                  f"({getattr(error, 'strerror', None) or error})") from None
            password = password.rstrip("\r\n")
        if not password:
            raise ConfigError("kafka.sasl_password: the password is empty")
    else:
        for key, value in (("sasl_mechanism", mechanism), ("sasl_username", username),
                           ("sasl_password", password), ("sasl_password_file", password_file)):
            if value is not None:
                raise ConfigError(f"kafka.{key}: only used with security_protocol SASL_SSL or "
                                  f"SASL_PLAINTEXT (got {protocol})")
    if protocol in ("SSL", "SASL_SSL"):
        for key, value in files.items():
            if value is not None and not pathlib.Path(value).is_file():
                raise ConfigError(f"kafka.{key}: no such file {value!r}")
    else:
        for key, value in files.items():
            if value is not None:
                raise ConfigError(f"kafka.{key}: only used with security_protocol SSL or "
                                  f"SASL_SSL (got {protocol})")
    taken = {"security_protocol", "sasl_mechanism", "sasl_plain_username",
             "sasl_plain_password", "ssl_cafile", "ssl_certfile", "ssl_keyfile",
             "ssl_check_hostname"} & set(client)
    if taken:
        key = sorted(taken)[0]
        raise ConfigError(f"kafka.client.{key}: set the security settings beside it in the "
                          "kafka block (kafka.security_protocol, kafka.sasl_*, kafka.ssl_*), "
                          "not in kafka.client")
    return KafkaSecurity(security_protocol=protocol, sasl_mechanism=mechanism if sasl else None,
                         sasl_username=username, sasl_password=password if sasl else None,
                         ssl_check_hostname=check_hostname, **files)


def _stream(item: Any, path: str,
            validated: set[tuple[Any, ...]] | None = None) -> StreamConfig:
    """One stream's block. Each stage is built once to validate it; ``validated`` holds
    the stages (spec and the sizes the stream implies) already built for an earlier
    stream of this config, which are not built again (10,000 streams of one chain took
    ~4 s to parse, as long as building them for the service)."""
    if validated is None:
        validated = set()
    mapping = _Mapping(item, path)
    name = mapping.get("name", str)
    if not name or name in (".", "..") or not name.isprintable():
        raise ConfigError(f"{path}.name: must be a non-empty printable name other than '.' "
                          f"and '..' (it names folders and URLs), got {name!r}")
    task = mapping.get("task", str, default="classification")
    if task not in TASKS:
        raise ConfigError(f"{path}.task: must be one of {', '.join(TASKS)}, got {task!r}")
    n_classes = None
    if task == "classification":
        n_classes = mapping.integer("classes", 2, minimum=2, maximum=MAX_CLASSES)
    elif mapping.get("classes", object, default=None) is not None:
        raise ConfigError(f"{path}.classes: only classification streams have classes; remove "
                          "it or set task: classification")
    models = mapping.get("models", list)
    if not models or not all(isinstance(m, str) and m for m in models):
        raise ConfigError(f"{path}.models: must be a non-empty list of model names")
    if len(set(models)) != len(models):
        raise ConfigError(f"{path}.models: model names must be unique")
    defaults = DEFAULT_CLASSIFICATION_ADAPTERS if task == "classification" \
        else DEFAULT_REGRESSION_ADAPTERS
    adapters = mapping.get("adapters", list, default=[dict(spec) for spec in defaults])
    join = mapping.sub("join", default={})
    publish = mapping.sub("publish", default={})
    torch_block = mapping.get("torch", dict, default=None, allow_none=True)
    if torch_block is not None:
        torch_block = _torch_block(torch_block, f"{path}.torch", task, tuple(models))
    conformal_block = mapping.get("conformal", dict, default=None, allow_none=True)
    if conformal_block is not None:
        conformal_block = _conformal_block(conformal_block, f"{path}.conformal", n_classes)
    estimate_block = mapping.get("performance_estimate", dict, default=None, allow_none=True)
    if estimate_block is not None:
        estimate_block = _estimate_block(estimate_block, f"{path}.performance_estimate", task)
    n_features = mapping.get("features", int, default=None, allow_none=True)
    if n_features is not None and not 1 <= n_features <= STAGE_INTEGER_LIMITS["n_features"]:
        raise ConfigError(f"{path}.features: the length of each prediction's features, "
                          f"1 to {STAGE_INTEGER_LIMITS['n_features']}, got {n_features}")
    on_drift = mapping.get("on_drift", str, default="react")
    if on_drift not in ("react", "ignore"):
        raise ConfigError(f"{path}.on_drift: must be 'react' or 'ignore', got {on_drift!r}")
    specs = []
    for index, spec in enumerate(adapters):
        stage_path = f"{path}.adapters[{index}]"
        if not isinstance(spec, dict) or "type" not in spec:
            raise ConfigError(f"{stage_path}: expected a mapping with a 'type'")
        if not isinstance(spec["type"], str):
            raise ConfigError(f"{stage_path}.type: expected an adapter name, got "
                              f"{type(spec['type']).__name__} {short_repr(spec['type'])}")
        _check_stage_numbers(spec, stage_path)
        specs.append(dict(spec))
    config = StreamConfig(
        name=name, task=task, n_classes=n_classes, models=tuple(models),
        adapters=tuple(specs),
        max_pending=join.positive_int("max_pending", 100_000),
        ttl_seconds=join.positive_float("ttl_seconds", 3_600.0),
        max_event_time_skew_seconds=join.positive_float("max_event_time_skew_seconds",
                                                        86_400.0),
        publish_every_labels=publish.positive_int("every_labels", 1_000),
        publish_every_seconds=publish.positive_float("every_seconds", 60.0),
        react_to_drift=on_drift == "react",
        torch=torch_block,
        conformal=conformal_block,
        performance_estimate=estimate_block,
        n_features=n_features,
    )
    for mapping_ in (mapping, join, publish):
        mapping_.reject_unknown()
    for index, spec in enumerate(specs):
        stage_path = f"{path}.adapters[{index}]"
        if index == 0 and spec["type"] not in ENSEMBLE_TYPES:
            raise ConfigError(f"{stage_path}.type: the first stage combines the deployed "
                              f"models and must be one of {', '.join(ENSEMBLE_TYPES)}, got "
                              f"{spec['type']!r}")
        if index > 0 and spec["type"] in ENSEMBLE_TYPES:
            raise ConfigError(f"{stage_path}.type: {spec['type']} combines models and can "
                              "only be the first stage")
        if task == "regression" and index > 0:
            raise ConfigError(f"{stage_path}: regression streams take a single ensemble stage")
        if (index > 0 and spec["type"] in ADAPTER_TYPES and spec["type"] != "Chain"
                and spec["type"] not in PROBABILITY_STAGES):
            raise ConfigError(f"{stage_path}.type: after the ensemble come stages that map "
                              f"probabilities to probabilities ({', '.join(PROBABILITY_STAGES)})"
                              f"; got {spec['type']!r}")
        key = _stage_key(spec, config)
        if key is None or key not in validated:
            _build_stage(spec, config, stage_path)
            if key is not None:
                validated.add(key)
    return config


def _stage_key(spec: dict[str, Any], stream: StreamConfig) -> tuple[Any, ...] | None:
    """What building stage ``spec`` for ``stream`` depends on (the spec and the sizes
    :func:`_build_stage` fills in), or ``None`` when the spec holds anything but plain
    YAML values (str keys; str, int, float, bool, None, lists, mappings), whose ``repr``
    could not stand for it."""
    if not _plain(spec):
        return None
    return repr(spec), len(stream.models), stream.n_classes, stream.n_features


def _plain(value: Any) -> bool:
    kind = type(value)
    if kind is dict:
        return all(type(k) is str and _plain(v) for k, v in value.items())
    if kind is list:
        return all(_plain(v) for v in value)
    return kind in (str, int, float, bool, type(None))


def _conformal_block(block: dict[str, Any], path: str,
                     n_classes: int | None) -> dict[str, Any]:
    """Validate a stream's ``conformal:`` block (online prediction sets / intervals)."""
    from streamweights.adapters.conformal import check_conformal_config

    try:
        return check_conformal_config(block, path, n_classes)
    except ValueError as error:
        raise ConfigError(str(error)) from None


def _estimate_block(block: dict[str, Any], path: str, task: str) -> dict[str, Any]:
    """Validate a stream's ``performance_estimate:`` block (label-free estimates)."""
    if task != "classification":
        raise ConfigError(f"{path}: label-free estimates need class probabilities "
                          "(classification streams only); remove the block")
    unknown = sorted(set(block) - {"window"})
    if unknown:
        raise ConfigError(f"{path}.{unknown[0]}: unknown key (known: window)")
    window = block.get("window", 500)
    if isinstance(window, bool) or not isinstance(window, int) or window < 1:
        raise ConfigError(f"{path}.window: must be an integer >= 1, got {window!r}")
    return {"window": window}


def _torch_block(block: dict[str, Any], path: str, task: str,
                 models: tuple[str, ...]) -> dict[str, Any]:
    """Validate a stream's ``torch:`` block (structure only: torch is imported when the
    pipeline loads the model)."""
    from streamweights.adapters.torch.stream_model import check_torch_config

    if task != "classification":
        raise ConfigError(f"{path}: torch models are supported on classification streams")
    try:
        return check_torch_config(block, path, models)
    except ValueError as error:
        raise ConfigError(str(error)) from None


def _build_stage(spec: dict[str, Any], stream: StreamConfig, path: str) -> Adapter:
    """Build one adapter, filling in the sizes the stream already knows."""
    options = {k: v for k, v in spec.items() if k != "type"}
    kind = spec["type"]
    if kind not in ADAPTER_TYPES or kind == "Chain":
        known = ", ".join(sorted(set(ADAPTER_TYPES) - {"Chain"}))
        raise ConfigError(f"{path}.type: unknown adapter {kind!r}; known: {known}")
    parameters = constructor_signature(ADAPTER_TYPES[kind]).parameters
    implied: dict[str, Any] = {"n_models": len(stream.models), "n_classes": stream.n_classes}
    if kind == "Portfolio" and stream.n_features is not None:
        implied["n_features"] = stream.n_features  # its feature candidate's input
    for name, value in implied.items():
        if name in options:
            raise ConfigError(f"{path}.{name}: set by the stream; remove it")
        if name in parameters:
            options[name] = value
    if kind in ("OnlinePlatt", "OnlineBetaScaling", "Calibeating") and stream.n_classes != 2:
        raise ConfigError(f"{path}.type: {kind} calibrates binary streams; use "
                          "OnlineTemperature for more classes")
    if kind == "Calibeating" and isinstance(options.get("base"), str):
        options["base"] = {"adapter": options["base"], "config": {}}
    unknown = sorted(set(options) - set(parameters), key=str)
    if unknown:
        raise ConfigError(f"{path}.{unknown[0]}: unknown option for {kind} (options: "
                          f"{', '.join(p for p in parameters if p not in implied)})")
    required = [name for name, parameter in parameters.items()
                if parameter.default is inspect.Parameter.empty and name not in options
                and parameter.kind in (parameter.POSITIONAL_OR_KEYWORD, parameter.KEYWORD_ONLY)]
    if required:
        raise ConfigError(f"{path}.{required[0]}: required option for {kind}")
    try:
        return build_adapter({"adapter": kind, "config": options})
    except ValueError as error:  # adapters name the field first: "share: must be ..."
        raise ConfigError(f"{path}.{_one_line(error)}") from None
    except TypeError as error:
        raise ConfigError(f"{path}: {_one_line(error)}") from None
    except MemoryError:
        raise ConfigError(f"{path}: {kind} with these options needs more memory than there "
                          "is; use smaller sizes") from None
    except Exception as error:  # a constructor's surprise is still a config error
        raise ConfigError(f"{path}: {kind} refused these options ({type(error).__name__}: "
                          f"{_one_line(error)})") from None


def _check_stage_numbers(spec: dict[str, Any], path: str) -> None:
    """Bound an adapter's numeric options before its constructor sees them: integers
    within :data:`STAGE_INTEGER_LIMITS` / :data:`STAGE_INTEGER_MAXIMUM` (sizes allocate
    memory at construction), real numbers finite. Nested options (``detector_options``)
    are checked too."""
    def check(value: Any, where: str, key: str) -> None:
        if isinstance(value, bool):
            return
        if isinstance(value, int):
            limit = STAGE_INTEGER_LIMITS.get(key, STAGE_INTEGER_MAXIMUM)
            if abs(value) > limit:
                raise ConfigError(f"{where}: must be at most {limit:,}, got "
                                  f"{short_repr(value)}")
        elif isinstance(value, float) and not math.isfinite(value):
            raise ConfigError(f"{where}: must be a finite number, got {value}")
        elif isinstance(value, dict):
            for name, item in value.items():
                check(item, f"{where}.{name}", str(name))
        elif isinstance(value, list):
            for index, item in enumerate(value):
                check(item, f"{where}[{index}]", key)

    for name, value in spec.items():
        if name != "type":
            check(value, f"{path}.{name}", str(name))


def _one_line(error: BaseException, limit: int = 300) -> str:
    """An exception's message on one line, cut to ``limit`` characters (an adapter's
    message may quote a 10,000-character value)."""
    text = " ".join(str(error).split())
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text):,} characters)"


class _Mapping:
    """A YAML mapping being validated: typed lookups that know their path."""

    def __init__(self, value: Any, path: str) -> None:
        if not isinstance(value, dict):
            raise ConfigError(f"{path or 'config'}: expected a mapping, got "
                              f"{type(value).__name__}")
        for key in value:
            if not isinstance(key, str):
                where = f"{path}." if path else ""
                raise ConfigError(f"{where}{short_repr(key)}: setting names are text, got "
                                  f"{type(key).__name__} {short_repr(key)}")
        self.value = value
        self.path = path
        self.seen: set[str] = set()

    def _key_path(self, key: str) -> str:
        return f"{self.path}.{key}" if self.path else key

    def get(self, key: str, kind: type, default: Any = ..., allow_none: bool = False) -> Any:
        self.seen.add(key)
        if key not in self.value:
            if default is ...:
                raise ConfigError(f"{self._key_path(key)}: required")
            return default
        value = self.value[key]
        if value is None and allow_none:
            return None
        if kind is float and isinstance(value, int) and not isinstance(value, bool):
            try:
                value = float(value)
            except OverflowError:
                raise ConfigError(f"{self._key_path(key)}: must be a finite number, got "
                                  f"{short_repr(value)}") from None
        if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
            hint = ""
            if kind in (int, float) and isinstance(value, str) and _looks_numeric(value):
                hint = (" (YAML reads it as text: write the digits for an integer, or a "
                        "float with a dot, e.g. 1.0e+6)")
            raise ConfigError(f"{self._key_path(key)}: expected {kind.__name__}, got "
                              f"{type(value).__name__} {short_repr(value)}{hint}")
        if kind is int and abs(value) > MAX_INTEGER:
            raise ConfigError(f"{self._key_path(key)}: must be at most {MAX_INTEGER:,} "
                              f"(2**53 - 1), got {short_repr(value)}")
        return value

    def sub(self, key: str, default: Any = ...) -> _Mapping:
        value = self.get(key, dict, default=default)
        return _Mapping(value, self._key_path(key))

    def positive_int(self, key: str, default: int, maximum: int = MAX_INTEGER) -> int:
        return self.integer(key, default, minimum=1, maximum=maximum)

    def integer(self, key: str, default: int, minimum: int = -MAX_INTEGER,
                maximum: int = MAX_INTEGER) -> int:
        """An integer setting within ``[minimum, maximum]``."""
        value = self.get(key, int, default=default)
        if value < minimum:
            raise ConfigError(f"{self._key_path(key)}: must be >= {minimum}, got {value}")
        if value > maximum:
            raise ConfigError(f"{self._key_path(key)}: must be at most {maximum:,}, got "
                              f"{short_repr(value)}")
        return value

    def positive_float(self, key: str, default: float) -> float:
        value = self.get(key, float, default=default)
        if not (math.isfinite(value) and value > 0):
            raise ConfigError(f"{self._key_path(key)}: must be a positive number, got {value}")
        return value

    def reject_unknown(self) -> None:
        """Refuse a setting nobody asked for (a typo would otherwise be ignored)."""
        unknown = sorted(set(self.value) - self.seen, key=str)
        if unknown:
            raise ConfigError(f"{self._key_path(unknown[0])}: unknown setting")


def _looks_numeric(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True
