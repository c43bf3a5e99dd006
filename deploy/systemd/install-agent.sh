#!/usr/bin/env bash
# Installs the edgewire agent on an edge host as a systemd service: the
# binary, /etc/edgewire/agent.env, the join token in
# /etc/edgewire/join-token (root only; the agent deletes it once the node
# is enrolled), the unit, then enables and starts it. Safe to run again:
# unchanged files are left alone, the service is restarted only when
# something changed, and a setting not given again (--coordinator,
# --name, --agent-args) keeps what the last run wrote. The agent applies
# a changed name, routes or coordinator at its restart.
#
#   install-agent.sh --coordinator coord.example.com:8443 --token-file token.txt \
#       (--binary ./edgewire-agent | --url https://.../edgewire-agent --sha256 HEX)
#
# Run with --help for every option.
set -euo pipefail

# Test seams: a staging root for every installed path and a stand-in for
# systemctl. Operators leave both unset.
root=${EDGEWIRE_INSTALL_ROOT:-}
systemctl=${EDGEWIRE_SYSTEMCTL:-systemctl}

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
bin_path=$root/usr/local/bin/edgewire-agent
env_path=$root/etc/edgewire/agent.env
# The token file's path as the agent sees it (agent args) and as staged.
token_path=/etc/edgewire/join-token
token_dest=$root$token_path
unit_path=$root/etc/systemd/system/edgewire-agent.service
state_dir=$root/var/lib/edgewire/agent

usage() {
	cat <<'EOF'
Usage: install-agent.sh [--coordinator HOST:PORT] [--token TOKEN | --token-file FILE]
                        [--binary PATH | --url URL --sha256 HEX]
                        [--name NODE] [--agent-args "ARGS"] [--unit PATH] [--no-start]

  --coordinator HOST:PORT  the coordinator's agent port (TCP 8443 by default);
                           needed at the first install, then kept
  --token TOKEN            join token (edgewire token create); also read from
                           $EDGEWIRE_TOKEN. Not needed once the node has joined
                           or while /etc/edgewire/join-token still holds one.
                           It goes into /etc/edgewire/join-token (mode 0600),
                           which the agent deletes once the node is enrolled.
  --token-file FILE        read the join token from FILE (keeps it out of ps)
  --binary PATH            install this edgewire-agent binary
  --url URL                download edgewire-agent from URL (http or https);
                           needs --sha256
  --sha256 HEX             expected SHA-256 of the binary (required with --url)
  --name NODE              node name (default: the hostname at the first
                           install, then kept)
  --agent-args "ARGS"      more edgewire-agent run flags, e.g.
                           "--advertise-routes 10.42.3.0/24 --relay-region 2";
                           replaces the last run's ("" clears them), else kept
  --unit PATH              unit file to install (default: edgewire-agent.service
                           beside this script)
  --no-start               install and enable, but do not start or restart

Without --binary or --url an already installed /usr/local/bin/edgewire-agent is kept.
EOF
}

die() {
	echo "install-agent: $*" >&2
	exit 1
}

usage_error() {
	echo "install-agent: $*" >&2
	echo "Try 'install-agent.sh --help'." >&2
	exit 2
}

need_value() {
	if [ $# -lt 2 ] || [ -z "$2" ]; then
		usage_error "$1 needs a value"
	fi
}

coordinator='' token=${EDGEWIRE_TOKEN:-} token_file='' binary='' url='' sha256='' name='' agent_args='' start=yes
agent_args_set=no
unit_src=$here/edgewire-agent.service
while [ $# -gt 0 ]; do
	case $1 in
	--coordinator) need_value "$@"; coordinator=$2; shift 2 ;;
	--token) need_value "$@"; token=$2; shift 2 ;;
	--token-file) need_value "$@"; token_file=$2; shift 2 ;;
	--binary) need_value "$@"; binary=$2; shift 2 ;;
	--url) need_value "$@"; url=$2; shift 2 ;;
	--sha256) need_value "$@"; sha256=$2; shift 2 ;;
	--name) need_value "$@"; name=$2; shift 2 ;;
	--agent-args) [ $# -ge 2 ] || usage_error "--agent-args needs a value"; agent_args=$2; agent_args_set=yes; shift 2 ;;
	--unit) need_value "$@"; unit_src=$2; shift 2 ;;
	--no-start) start=no; shift ;;
	-h | --help) usage; exit 0 ;;
	*) usage_error "unknown argument: $1" ;;
	esac
done

# What the last run wrote (agent.env is this script's own format) is
# kept for what this run does not say.
prev_coordinator='' prev_name='' prev_args=''
if [ -r "$env_path" ]; then
	prev_coordinator=$(sed -n 's/^EDGEWIRE_COORDINATOR=//p' "$env_path" | tail -n 1)
	read -r -a prev_words <<<"$(sed -n 's/^EDGEWIRE_AGENT_ARGS="\(.*\)"$/\1/p' "$env_path" | tail -n 1)"
	i=0
	while [ $i -lt ${#prev_words[@]} ]; do
		case ${prev_words[$i]} in
		--name) prev_name=${prev_words[$((i + 1))]:-}; i=$((i + 2)) ;;
		--token-file) i=$((i + 2)) ;;
		*) prev_args+="${prev_args:+ }${prev_words[$i]}"; i=$((i + 1)) ;;
		esac
	done
fi
[ -n "$coordinator" ] || coordinator=$prev_coordinator
[ -n "$name" ] || name=$prev_name
[ "$agent_args_set" = yes ] || agent_args=$prev_args

# Arguments first, so mistakes show before anything needs root.
[ -n "$coordinator" ] || usage_error "--coordinator HOST:PORT is required"
[[ $coordinator =~ ^([A-Za-z0-9.-]+|\[[0-9A-Fa-f:.]+\]):[0-9]{1,5}$ ]] ||
	usage_error "--coordinator $coordinator: want HOST:PORT, e.g. coord.example.com:8443 or [2001:db8::1]:8443"
[ -z "$binary" ] || [ -z "$url" ] || usage_error "give --binary or --url, not both"
[ -z "$sha256" ] || [ -n "$url$binary" ] || usage_error "--sha256 needs --binary or --url"
[ -z "$sha256" ] || [[ $sha256 =~ ^[0-9a-fA-F]{64}$ ]] || usage_error "--sha256: want 64 hex digits"
[ -z "$url" ] || [[ $url =~ ^https?:// ]] || usage_error "--url $url: want an http(s) URL"
# The binary runs as root: whoever can answer the download (a proxy, a
# mirror, anyone on the path of an http URL) would own the host.
[ -z "$url" ] || [ -n "$sha256" ] ||
	usage_error "--url needs --sha256 HEX: a downloaded binary is checked against a checksum from a source you trust (or download it yourself and pass --binary PATH)"
[ -z "$binary" ] || [ -f "$binary" ] || usage_error "--binary $binary: no such file"
[ -z "$token" ] || [ -z "$token_file" ] || usage_error "give --token or --token-file, not both"
if [ -n "$token_file" ]; then
	[ -r "$token_file" ] || usage_error "--token-file $token_file: not readable"
	token=$(tr -d ' \t\r\n' <"$token_file")
	[ -n "$token" ] || usage_error "--token-file $token_file is empty"
fi
[ -z "$token" ] || [[ $token =~ ^ewt1\.[A-Za-z0-9._~+/=-]+$ ]] ||
	usage_error "the join token must look like ewt1.… (from 'edgewire token create')"
[ -z "$name" ] || [[ $name =~ ^[a-z0-9]([a-z0-9.-]{0,61}[a-z0-9])?$ ]] ||
	usage_error "--name $name: want lower-case letters, digits, '-' and '.', at most 63 characters"
# agent.env is read by systemd, which expands $ and treats quotes and
# backslashes specially: keep extra flags to plain words.
[[ $agent_args =~ ^[A-Za-z0-9\ ._,:/=@+-]*$ ]] ||
	usage_error "--agent-args may hold only letters, digits, spaces and . _ , : / = @ + -"
# A token there would stay in agent.env for good.
! [[ " $agent_args" =~ \ --token(-file)?(=|\ |$) ]] ||
	usage_error "--agent-args: pass the join token with --token or --token-file, not among the agent's flags"
[ -f "$unit_src" ] || usage_error "unit file $unit_src not found (pass --unit)"

[ "$(id -u)" -eq 0 ] || die "must run as root (it installs into /usr/local/bin, /etc and systemd)"
command -v "$systemctl" >/dev/null || die "$systemctl not found: this script needs systemd"
if [ -z "$root" ] && [ ! -d /run/systemd/system ]; then
	die "systemd is not running on this host (no /run/systemd/system)"
fi
[ -n "$root" ] || [ -c /dev/net/tun ] ||
	echo "install-agent: warning: /dev/net/tun is missing; the agent needs the tun module (modprobe tun)" >&2

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
changed=no

# install_file SRC DEST MODE: copies SRC over DEST atomically when the
# contents differ, so a re-run changes nothing and a running binary is
# replaced, never written in place.
install_file() {
	local src=$1 dest=$2 mode=$3
	if [ -f "$dest" ] && cmp -s "$src" "$dest"; then
		chmod "$mode" "$dest"
		return
	fi
	mkdir -p "$(dirname "$dest")"
	# umask: no moment where the copy (a token, say) is readable by others.
	(umask 077 && install -m "$mode" "$src" "$dest.new")
	mv -f "$dest.new" "$dest"
	echo "installed $dest"
	changed=yes
}

# The binary.
if [ -n "$url" ]; then
	echo "downloading $url"
	if command -v curl >/dev/null; then
		curl -fsSL --retry 3 -o "$tmp/edgewire-agent" "$url" || die "download $url failed"
	elif command -v wget >/dev/null; then
		wget -q -O "$tmp/edgewire-agent" "$url" || die "download $url failed"
	else
		die "--url needs curl or wget"
	fi
	binary=$tmp/edgewire-agent
fi
if [ -n "$binary" ]; then
	if [ -n "$sha256" ]; then
		got=$(sha256sum "$binary" | cut -d' ' -f1)
		[ "${got,,}" = "${sha256,,}" ] || die "SHA-256 of $binary is $got, want $sha256"
	fi
	head -c 4 "$binary" | grep -q 'ELF' || die "$binary is not an executable (ELF) file"
	install_file "$binary" "$bin_path" 0755
elif [ ! -x "$bin_path" ]; then
	usage_error "no agent at $bin_path: pass --binary PATH or --url URL"
fi

# The join token. It goes into its own root-only file, never into
# agent.env: the agent reads it with --token-file and deletes it once the
# node is enrolled, so it does not stay on disk. A token file the agent
# has not used yet is kept unless a new token is given. (Installs before
# this one kept the token in agent.env; it moves out of there now, or is
# dropped if the node has joined.)
joined=no
[ -z "$(ls -A "$state_dir" 2>/dev/null)" ] || joined=yes
if [ -z "$token" ] && [ ! -f "$token_dest" ] && [ "$joined" = no ] && [ -f "$env_path" ]; then
	token=$(sed -n 's/^EDGEWIRE_TOKEN=//p' "$env_path" | tail -n 1)
	[ -z "$token" ] || [[ $token =~ ^ewt1\.[A-Za-z0-9._~+/=-]+$ ]] || token=''
fi
if [ -z "$token" ] && [ ! -f "$token_dest" ] && [ "$joined" = no ]; then
	usage_error "this node has not joined yet: pass --token or --token-file"
fi
mkdir -p "$(dirname "$env_path")"
chmod 0755 "$(dirname "$env_path")"
if [ -n "$token" ]; then
	(umask 077 && echo "$token" >"$tmp/join-token")
	install_file "$tmp/join-token" "$token_dest" 0600
fi

# agent.env.
args=$agent_args
[ ! -f "$token_dest" ] || args="--token-file $token_path${args:+ $args}"
[ -z "$name" ] || args="--name $name${args:+ $args}"
{
	echo "# Written by install-agent.sh; read by edgewire-agent.service."
	echo "EDGEWIRE_COORDINATOR=$coordinator"
	echo "EDGEWIRE_AGENT_ARGS=\"$args\""
} >"$tmp/agent.env"
install_file "$tmp/agent.env" "$env_path" 0600

# The unit.
install_file "$unit_src" "$unit_path" 0644

"$systemctl" daemon-reload
"$systemctl" enable edgewire-agent.service
if [ "$start" = no ]; then
	echo "edgewire-agent is installed and enabled; start it with: systemctl start edgewire-agent"
elif [ "$changed" = yes ]; then
	"$systemctl" restart edgewire-agent.service ||
		die "edgewire-agent did not start; see: journalctl -u edgewire-agent"
	echo "edgewire-agent (re)started; check it with: systemctl status edgewire-agent, edgewire status"
else
	"$systemctl" start edgewire-agent.service ||
		die "edgewire-agent did not start; see: journalctl -u edgewire-agent"
	echo "edgewire-agent is up to date and running"
fi
