#!/usr/bin/env bash
# Installs the Debian packages edgewire's tests and demo need, once.
# Idempotent: does nothing when everything is present.
set -euo pipefail
# prometheus: for promtool (make check-deploy); file: make release checks
# each binary's architecture; graphviz: `edgewire graph`'s test parses its
# DOT; chromium: the topology page's browser test (e2e).
want=(iproute2 iptables nftables wireguard-tools conntrack iperf3 iputils-ping tcpdump curl shellcheck util-linux systemd containernetworking-plugins prometheus file graphviz chromium)
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
# The prometheus package is here for promtool only: its server must not run
# or start at boot. In a container policy-rc.d keeps postinst from starting
# it; on a host with systemd postinst starts it, so stop it again.
if [[ " ${missing[*]} " == *" prometheus "* ]]; then
  systemctl disable prometheus.service >/dev/null 2>&1 || true
  if [ -d /run/systemd/system ]; then
    systemctl stop prometheus.service || true
  elif [ -x /etc/init.d/prometheus ]; then
    /etc/init.d/prometheus stop >/dev/null 2>&1 || true
  fi
fi
