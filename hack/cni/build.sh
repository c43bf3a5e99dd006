#!/usr/bin/env bash
# Installs cnitool (github.com/containernetworking/cni, pinned below) into
# .cache/tools: the e2e tests create pods the way a container runtime does,
# by running the CNI plugins through libcni with the configuration the
# agent wrote. The plugins themselves come from Debian's
# containernetworking-plugins (/usr/lib/cni, hack/install-deps.sh).
# Idempotent: nothing is rebuilt while the stamp matches.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
out=${EDGEWIRE_CNI_BIN:-$root/.cache/tools}
version=v1.3.0
stamp="cnitool=$version $(go env GOVERSION)"

mkdir -p "$out"
exec 9>"$out/.cnitool.lock"
flock 9
if [ -x "$out/cnitool" ] && [ "$(cat "$out/cnitool.stamp" 2>/dev/null)" = "$stamp" ]; then
  exit 0
fi
GOBIN="$out" CGO_ENABLED=0 go install "github.com/containernetworking/cni/cnitool@$version"
echo "$stamp" >"$out/cnitool.stamp"
