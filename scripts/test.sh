#!/usr/bin/env bash
# The test command (README "Set-up"; .ci/run runs exactly that command): installs or
# fetches everything the tests run, then runs pytest with any arguments given
# (`bash scripts/test.sh tests/deploy -x -q`). Every step is idempotent and cached, so on
# a machine that has it all this is a quick check (about a second) before pytest:
#
#   Debian packages  apt-get update + install, only when one of DEBIAN_PACKAGES is missing
#   cargo            must be on PATH or in ~/.cargo/env (one clear line if it is not)
#   .venv            python3 -m venv, pip install -e '.[test]', which builds the native
#                    core with maturin (again when pyproject.toml or native/ changes: a
#                    stamp in .venv keeps their hash)
#   kustomize        kubectl's own where it embeds kustomize v4+ (components need it;
#                    bookworm's kubectl 1.20 embeds v2), else kustomize v5.5.0 built from
#                    the Go module proxy into the ignored .cache/bin (about a minute, once)
#   Kafka jars       Maven Central -> .cache/kafka (tests/kafka/broker.py fetch)
#   Rust unit tests  cargo test on native/ (its own tests of the core's pieces, which
#                    pytest cannot reach: about half a minute once, then a second)
#   pytest           one worker per core (pytest-xdist), each test file whole on one worker
#
# The image test's Debian base (mmdebstrap) is made and cached under .cache/image by the
# test itself (tests/deploy/test_image_build.py), so it stays next to what it checks.
# Needs: Debian bookworm, root or sudo, Python 3.11+, Java 17+, Go 1.22+ (only where
# kubectl lacks kustomize v4+); Debian, PyPI, Maven Central and the Go proxy reachable.
set -euo pipefail
cd "$(dirname "$0")/.."

# Debian packages the tests run. A test that needs a new tool adds its package here
# (never a skip): what is listed gets installed when missing.
DEBIAN_PACKAGES=(
    prometheus      # prometheus and promtool (tests/deploy)
    chromium        # opens the HTML report headless (tests/evaluation/test_report.py)
    buildah         # builds and runs the image (tests/deploy/test_image_build.py)
    mmdebstrap      # makes that image's Debian base (same test)
    iproute2        # ip netns / veth / bridge: the cross-host Kafka faults (tests/kafka/netns.py)
    ethtool         # switches offloads off for the lossy link's forwarder (same harness)
    openssl         # the SASL/TLS broker's CA and certificate (tests/kafka/secure_broker.py)
)
KUSTOMIZE_VERSION=v5.5.0

say() { echo "test.sh: $*" >&2; }
as_root() { if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi; }
installed() { dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q '^install ok installed$'; }

# --- Debian packages -------------------------------------------------------------------
wanted=("${DEBIAN_PACKAGES[@]}")
# What the fresh machine is expected to have, installed too when it does not.
python3 -c 'import ensurepip, venv' 2>/dev/null || wanted+=(python3-venv)
command -v mvn >/dev/null 2>&1 || wanted+=(maven)
command -v java >/dev/null 2>&1 || wanted+=(openjdk-17-jre-headless)
missing=()
for package in "${wanted[@]}"; do
    installed "$package" || missing+=("$package")
done
if [ "${#missing[@]}" -gt 0 ]; then
    say "installing Debian packages: ${missing[*]}"
    as_root apt-get update -qq
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
        "${missing[@]}" >/dev/null
fi

# --- the Rust toolchain (the native core, native/, is built by pip through maturin) -------
if ! command -v cargo >/dev/null 2>&1 && [ -f "$HOME/.cargo/env" ]; then
    # shellcheck disable=SC1091
    . "$HOME/.cargo/env"
fi
if ! command -v cargo >/dev/null 2>&1; then
    say "cargo not found: the native core (native/) needs a Rust toolchain:" \
        "install rustup (https://rustup.rs) or Debian's cargo, then rerun"
    exit 1
fi

# --- the virtualenv with the test extras --------------------------------------------------
# Reinstalled (which rebuilds the native core) when pyproject.toml or native/ changes.
stamp=.venv/.streamweights-test-extras
want_stamp="$( { cat pyproject.toml; find native -path native/target -prune -o -type f \
    -print | LC_ALL=C sort | xargs cat; } | sha256sum | cut -d' ' -f1)"
[ -x .venv/bin/python ] || { say "creating .venv"; python3 -m venv .venv; }
if [ "$(cat "$stamp" 2>/dev/null)" != "$want_stamp" ]; then
    say "installing the package with its test extras into .venv"
    .venv/bin/pip install -q -e '.[test]'
    echo "$want_stamp" > "$stamp"
fi

# --- kustomize ------------------------------------------------------------------------
if ! { command -v kubectl >/dev/null 2>&1 && kubectl version --client 2>/dev/null \
        | grep -Eq 'Kustomize Version: v([4-9]|[1-9][0-9])'; } \
        && [ ! -x .cache/bin/kustomize ]; then
    if ! command -v go >/dev/null 2>&1; then
        say "kustomize v4+ is needed (kubectl's is older or absent) and is built with Go:" \
            "install Go 1.22 or later (https://go.dev/dl) or a kubectl >= 1.21, then rerun"
        exit 1
    fi
    say "building kustomize $KUSTOMIZE_VERSION from the Go module proxy into .cache/bin"
    GOBIN="$PWD/.cache/bin" go install "sigs.k8s.io/kustomize/kustomize/v5@$KUSTOMIZE_VERSION"
fi

# --- the Kafka broker's jars ------------------------------------------------------------
.venv/bin/python -m tests.kafka.broker fetch >/dev/null

# --- the native core's Rust unit tests (a failure stops here, before pytest) -------------
if ! cargo_log="$(cargo test --release --quiet --manifest-path native/Cargo.toml 2>&1)"; then
    echo "$cargo_log" >&2
    say "the native core's Rust unit tests failed (cargo test --release in native/)"
    exit 1
fi

# --- pytest, one worker per core (at most 4) ----------------------------------------------
# Most of the suite's time is spent waiting on brokers, subprocesses and sleeps, or on one
# core while the other idles; two workers on this 2-core kind of machine bring pytest's
# part from ~32 to ~19 minutes (1,902 tests, measured 2026-12-03).
# `--dist loadfile` keeps each test file on one worker, so a file's module fixtures are
# made once and its tests run in their written order; every worker starts its own Kafka
# broker (free ports, its own temp dir) when it first needs one.
# STREAMWEIGHTS_TEST_WORKERS=1 (or `-n 0`) runs everything in this one process, which is
# what a debugger (`--pdb`) needs.
workers="${STREAMWEIGHTS_TEST_WORKERS:-$(nproc 2>/dev/null || echo 1)}"
if ! [[ "$workers" =~ ^[0-9]+$ ]]; then
    say "STREAMWEIGHTS_TEST_WORKERS must be a whole number of workers, not '$workers'"
    exit 2
fi
parallel=()
[ "$workers" -gt 1 ] && parallel=(-n "$((workers > 4 ? 4 : workers))" --dist loadfile)
exec .venv/bin/python -m pytest "${parallel[@]}" "$@"
