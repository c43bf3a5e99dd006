#!/usr/bin/env bash
# Builds the kube-apiserver and etcd that edgewire's tests run (e2e/kube) from
# the Go module proxy into .cache/kube/bin. Idempotent: a stamp file records
# the versions built, and nothing is rebuilt until they change. The first
# build takes 10-15 minutes on 2 cores.
#
# Usage: hack/kube/build.sh [-f]   (-f rebuilds even when the stamp matches)
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
out=${EDGEWIRE_KUBE_BIN:-$root/.cache/kube/bin}
force=${1:-}

cd "$here"
mkdir -p "$out"

# One build at a time: go test runs packages in parallel, and each may ask.
exec 9>"$out/.lock"
flock 9

kube=$(go list -m -f '{{.Version}}' k8s.io/kubernetes)
etcd=$(go list -m -f '{{.Version}}' go.etcd.io/etcd/server/v3)
sum=$(cat go.mod go.sum etcd/main.go build.sh | sha256sum | cut -c1-16)
stamp="kubernetes=$kube etcd=$etcd $(go env GOVERSION) inputs=$sum"

if [ "$force" != -f ] && [ -x "$out/kube-apiserver" ] && [ -x "$out/etcd" ] &&
  [ "$(cat "$out/stamp" 2>/dev/null)" = "$stamp" ]; then
  exit 0
fi

echo "building kube-apiserver $kube and etcd $etcd into $out (10-15 minutes the first time)" >&2
start=$(date +%s)

# The apiserver reports this version at /version (Helm reads it).
minor=$(echo "$kube" | cut -d. -f2)
pkg=k8s.io/component-base/version
ldflags="-s -w -X $pkg.gitVersion=$kube -X $pkg.gitMajor=1 -X $pkg.gitMinor=$minor -X $pkg.gitTreeState=clean"

tmp=$(mktemp -d "$out/.build.XXXXXX")
trap 'rm -rf "$tmp"' EXIT
# One go build for both so shared packages are compiled once.
go build -mod=readonly -buildvcs=false -trimpath -ldflags="$ldflags" -o "$tmp/" \
  k8s.io/kubernetes/cmd/kube-apiserver ./etcd
mv -f "$tmp/kube-apiserver" "$tmp/etcd" "$out/"
echo "$stamp" >"$out/stamp"

echo "built in $(($(date +%s) - start))s: $(cd "$out" && du -h kube-apiserver etcd | tr '\t\n' ': ')" >&2
