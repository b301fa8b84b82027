#!/usr/bin/env bash
# Installs the Docker Compose v2 CLI plugin, built from its Go module (the machines here have
# the docker client and Go, but no compose plugin and no binary downloads). Built once, cached.
set -euo pipefail
version=${COMPOSE_VERSION:-v2.40.3}
cache="${XDG_CACHE_HOME:-$HOME/.cache}/modelstream/compose-$version"
plugin_dir="$HOME/.docker/cli-plugins"
if [ ! -x "$cache/docker-compose" ]; then
  command -v go >/dev/null || { echo "Go is needed to build the compose plugin" >&2; exit 1; }
  echo "==> building docker compose $version from its Go module (once)"
  work=$(mktemp -d)
  trap 'rm -rf "$work"' EXIT
  cd "$work"
  go mod init compose-plugin-build >/dev/null 2>&1
  go mod download -json "github.com/docker/compose/v2@$version" > module.json
  gomod=$(python3 -c "import json; print(json.load(open('module.json'))['GoMod'])")
  # A dependent module ignores upstream replace directives; carry them over so the
  # dependency graph is the one compose is released with.
  { echo; awk '/^replace \(/{f=1} f{print} /^\)/{f=0}' "$gomod"; grep -E '^replace [^(]' "$gomod" || true; } >> go.mod
  go get "github.com/docker/compose/v2/cmd@$version" >/dev/null 2>&1
  mkdir -p "$cache"
  go build -trimpath -o "$cache/docker-compose" github.com/docker/compose/v2/cmd
fi
mkdir -p "$plugin_dir"
ln -sf "$cache/docker-compose" "$plugin_dir/docker-compose"
docker compose version
