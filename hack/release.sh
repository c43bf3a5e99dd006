#!/usr/bin/env bash
# Builds the release binaries: every cmd/ binary for linux/amd64,
# linux/arm64 and linux/arm (GOARM=7), static (CGO_ENABLED=0) and stamped
# with the version (internal/buildinfo), into dist/ with a SHA256SUMS file.
# Then checks each with file(1): the architecture it was built for and
# statically linked; and that the binary this host runs prints the commit
# in `version`. Any mismatch fails the build.
#
# Usage: hack/release.sh   (make release passes VERSION, REVISION, DIRTY,
# BINARIES and DIST)
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
: "${VERSION:=$(git describe --tags --always --dirty 2>/dev/null || echo dev)}"
: "${REVISION:=$(git rev-parse HEAD 2>/dev/null || true)}"
if [ -z "${DIRTY+x}" ]; then
	DIRTY=
	if [ -n "$(git status --porcelain 2>/dev/null)" ]; then
		DIRTY=true
	fi
fi
: "${BINARIES:=edgewire-coordinator edgewire-agent edgewire-relay edgewire}"
: "${DIST:=$root/dist}"
GO=${GO:-go}
buildinfo=github.com/edgewire/edgewire/internal/buildinfo
ldflags="-s -w -X $buildinfo.Version=$VERSION -X $buildinfo.Revision=$REVISION -X $buildinfo.Dirty=$DIRTY"

command -v file >/dev/null || { echo "file(1) not found (Debian package file; hack/install-deps.sh installs it)" >&2; exit 1; }

# platform  suffix  what file(1) says of it
platforms=(
	"amd64 - amd64 x86-64"
	"arm64 - arm64 ARM aarch64"
	"arm 7 armv7 ARM, EABI5"
)

rm -rf "$DIST"
mkdir -p "$DIST"
for p in "${platforms[@]}"; do
	read -r arch goarm suffix want <<<"$p"
	for b in $BINARIES; do
		out="$DIST/$b-linux-$suffix"
		goenv=(GOOS=linux GOARCH="$arch" CGO_ENABLED=0)
		if [ "$goarm" != - ]; then
			goenv+=(GOARM="$goarm")
		fi
		env "${goenv[@]}" "$GO" build -trimpath -ldflags "$ldflags" -o "$out" "./cmd/$b"
		desc=$(file -b "$out")
		case "$desc" in
		*"$want"*"statically linked"*) ;;
		*)
			echo "$out: file says \"$desc\"; want $want, statically linked" >&2
			exit 1
			;;
		esac
		echo "$(basename "$out"): $desc"
	done
done

(cd "$DIST" && sha256sum -- * >SHA256SUMS && sha256sum --quiet -c SHA256SUMS)

# The binary for this host must say which commit it is.
case $(uname -m) in
x86_64) native=amd64 ;;
aarch64) native=arm64 ;;
armv7l) native=armv7 ;;
*) native= ;;
esac
if [ -n "$native" ] && [ -n "$REVISION" ]; then
	v=$("$DIST/edgewire-agent-linux-$native" version)
	case "$v" in
	*"${REVISION:0:12}"*) echo "edgewire-agent version: $v" ;;
	*)
		echo "dist/edgewire-agent-linux-$native version printed \"$v\"; want the commit ${REVISION:0:12}" >&2
		exit 1
		;;
	esac
fi
echo "release $VERSION in $DIST"
