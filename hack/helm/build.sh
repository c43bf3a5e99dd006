#!/usr/bin/env bash
# Builds the helm CLI (helm.sh/helm/v4, pinned in go.mod) and yaml2json into
# .cache/tools, for rendering and linting deploy/helm/edgewire and for
# regenerating deploy/kubernetes (deploy/render.sh). Idempotent: a stamp file
# records the inputs, and nothing is rebuilt until they change.
#
# Usage: hack/helm/build.sh [-f]   (-f rebuilds even when the stamp matches)
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
out=${EDGEWIRE_HELM_BIN:-$root/.cache/tools}
force=${1:-}

cd "$here"
mkdir -p "$out"

# One build at a time: go test runs packages in parallel, and each may ask.
exec 9>"$out/.helm.lock"
flock 9

helm=$(go list -m -f '{{.Version}}' helm.sh/helm/v4)
sum=$(cat go.mod go.sum yaml2json/main.go build.sh | sha256sum | cut -c1-16)
stamp="helm=$helm $(go env GOVERSION) inputs=$sum"

if [ "$force" != -f ] && [ -x "$out/helm" ] && [ -x "$out/yaml2json" ] &&
  [ "$(cat "$out/helm.stamp" 2>/dev/null)" = "$stamp" ]; then
  exit 0
fi

echo "building helm $helm and yaml2json into $out (a few minutes the first time)" >&2
start=$(date +%s)
pkg=helm.sh/helm/v4/internal/version
tmp=$(mktemp -d "$out/.helm-build.XXXXXX")
trap 'rm -rf "$tmp"' EXIT
# One go build for both so shared packages are compiled once. The version
# ldflag makes `helm version` report the pinned release.
go build -mod=readonly -buildvcs=false -ldflags="-s -w -X $pkg.version=$helm" -o "$tmp/" \
  helm.sh/helm/v4/cmd/helm ./yaml2json
mv -f "$tmp/helm" "$tmp/yaml2json" "$out/"
echo "$stamp" >"$out/helm.stamp"
echo "built in $(($(date +%s) - start))s" >&2
