#!/usr/bin/env bash
# Fresh-machine entry point behind the README's two commands:
#   bash infra/dev.sh up     set up, then `modelstream up --demo breast-cancer`: embedded broker,
#                            topics, every service, real demo traffic and a live view (Ctrl-C
#                            stops everything); extra arguments go to `modelstream up`
#   bash infra/dev.sh test   set up, lint and type-check, start the embedded broker, run the
#                            whole test suite
#   bash infra/dev.sh lint   set up, then ruff check, ruff format --check and mypy only
# "Set up" = a virtualenv in .venv with modelstream[dev], Java + Maven if missing, and the
# Kafka jars (resolved by Maven once, cached under ~/.cache/modelstream).
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"
venv=${MODELSTREAM_VENV:-$root/.venv}
ms="$venv/bin/modelstream"

say() { printf '\033[1m==> %s\033[0m\n' "$*"; }

apt_install() {
  # Debian packages, only when a tool is missing (CI machines start with nothing of ours).
  if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null; then
    echo "missing: $* (install them, then re-run)" >&2
    exit 1
  fi
  if [ -z "${_apt_updated:-}" ]; then
    apt-get update -qq >/dev/null
    _apt_updated=1
  fi
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null
}

setup() {
  python3 -c 'import sys; sys.exit(sys.version_info < (3, 11))' \
    || { echo "modelstream needs Python >= 3.11" >&2; exit 1; }
  command -v java >/dev/null || apt_install openjdk-17-jre-headless
  command -v mvn >/dev/null || apt_install maven
  if [ ! -x "$venv/bin/python" ]; then
    say "creating $venv"
    python3 -m venv "$venv"
  fi
  local stamp="$venv/.modelstream-installed"
  if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
    say "installing modelstream[dev] into $venv"
    "$venv/bin/python" -m pip install -q --upgrade pip
    "$venv/bin/python" -m pip install -q -e ".[dev]"
    touch "$stamp"
  fi
}

ensure_compose() {
  # Tests validate docker-compose.yml with `docker compose config -q`. The docker client
  # ships on these machines without the compose plugin, and no engine runs here.
  if docker compose version >/dev/null 2>&1; then return; fi
  command -v docker >/dev/null || apt_install docker.io
  bash "$root/infra/compose-plugin.sh"
}

ensure_test_tools() {
  # Outside tools the integration tests drive: kcat (a non-Python Kafka client), Prometheus
  # with promtool, and InfluxDB 1.x, all from Debian's packages; Fashion-MNIST (Debian's
  # dataset-fashion-mnist) for the image models.
  command -v kcat >/dev/null || apt_install kcat
  { command -v prometheus >/dev/null && command -v promtool >/dev/null; } || apt_install prometheus
  command -v influxd >/dev/null || apt_install influxdb
  [ -f /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz ] \
    || apt_install dataset-fashion-mnist
}

start_references() {
  # The model libraries the tensor-model tests compare with, in a pinned virtualenv of their
  # own (tests/support/reference.py), built once per machine, meanwhile the lint runs.
  mkdir -p "$root/.modelstream"
  "$venv/bin/python" -m tests.support.reference >"$root/.modelstream/references.log" 2>&1 &
  references_pid=$!
}

wait_references() {
  if ! wait "$references_pid"; then
    echo "building the model libraries' environment failed:" >&2
    tail -40 "$root/.modelstream/references.log" >&2
    exit 1
  fi
}

lint() {
  say "lint: ruff check, ruff format --check, mypy"
  "$venv/bin/ruff" check .
  "$venv/bin/ruff" format --check .
  # mypy checks the package as it is installed: services/ and schemas/ are
  # modelstream.services and modelstream.schemas, so it runs on a tree of links in that shape.
  local tree
  tree=$(mktemp -d)
  mkdir -p "$tree/modelstream"
  for entry in "$root"/modelstream/*; do ln -s "$entry" "$tree/modelstream/"; done
  ln -s "$root/services" "$tree/modelstream/services"
  ln -s "$root/schemas" "$tree/modelstream/schemas"
  (cd "$tree" && "$venv/bin/mypy" --config-file "$root/pyproject.toml" \
     --cache-dir "$root/.mypy_cache" -p modelstream) || { rm -rf "$tree"; return 1; }
  rm -rf "$tree"
}

started_broker=0
start_broker() {
  if [ -n "${MODELSTREAM_BOOTSTRAP_SERVERS:-}" ]; then
    say "using Kafka at $MODELSTREAM_BOOTSTRAP_SERVERS"
    return
  fi
  if ! "$ms" broker status >/dev/null 2>&1; then started_broker=1; fi
  say "starting the embedded Kafka broker"
  "$ms" broker start
}

stop_broker() {
  if [ "$started_broker" = 1 ]; then "$ms" broker stop || true; fi
}

case "${1:-}" in
  up)
    shift
    setup
    # `modelstream up` starts the embedded broker itself and stops it on Ctrl-C.
    exec "$ms" up --demo breast-cancer "$@"
    ;;
  lint)
    setup
    lint
    ;;
  test)
    shift
    setup
    start_references
    lint
    ensure_compose
    ensure_test_tools
    wait_references
    start_broker
    trap stop_broker EXIT
    say "running the test suite"
    "$venv/bin/python" -m pytest -p no:cacheprovider --durations=25 "$@"
    ;;
  *)
    echo "usage: bash infra/dev.sh up [modelstream up args] | test [pytest args] | lint" >&2
    exit 2
    ;;
esac
