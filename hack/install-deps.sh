#!/usr/bin/env bash
# Installs the Debian packages edgewire's tests and demo need, once.
# Idempotent: does nothing when everything is present.
set -euo pipefail
want=(iproute2 iptables nftables wireguard-tools conntrack iperf3 iputils-ping tcpdump curl shellcheck util-linux systemd containernetworking-plugins graphviz chromium)
[ "${1:-}" = protoc ] && want=(protobuf-compiler)
missing=()
for p in "${want[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
[ ${#missing[@]} -eq 0 ] && exit 0
if [ "$(id -u)" -ne 0 ]; then
  echo "missing packages: ${missing[*]} (run as root to install them)" >&2
  exit 1
fi
echo "installing: ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
