#!/usr/bin/env bash
# Installs everything vethguard needs on Debian 12 (bookworm), as root:
#   system packages (bcc, kernel headers, iperf3, sockperf, iproute2 ...), the kernel-headers
#   link bcc looks for, bpffs, and the vethguard package with its Python dependencies in a
#   virtualenv at /opt/vethguard/venv (linked as /usr/local/bin/vethguard and, for
#   `kubectl vethguard`, /usr/local/bin/kubectl-vethguard).
# Used by README.md, .ci/run and the Dockerfile, so CI proves the image's install steps.
#   --image          building a container image: only the agent's packages, and no host-only
#                    steps (headers link, bpffs mount) or test tools
#   --list-packages  print the Debian packages this run would install, and stop (no root needed)
#   --arch=ARCH      with --list-packages: list for this Debian architecture (amd64 or arm64)
#                    instead of this machine's (`dpkg --print-architecture`); the architecture
#                    picks the kernel-headers package (linux-headers-amd64, linux-headers-arm64)
set -euo pipefail

image=0
list=0
arch=
for arg in "$@"; do
  case "$arg" in
    --image) image=1 ;;
    --list-packages) list=1 ;;
    --arch=*) arch=${arg#--arch=} ;;
    *) echo "install.sh: unknown option $arg (use --image, --list-packages, --arch=ARCH)" >&2; exit 2 ;;
  esac
done
if [ -n "$arch" ] && [ "$list" = 0 ]; then
  echo "install.sh: --arch is for --list-packages; an install is for this machine's architecture" >&2
  exit 2
fi
if [ -z "$arch" ]; then
  arch=$(dpkg --print-architecture 2>/dev/null || true)
fi
if [ -z "$arch" ]; then  # no dpkg (listing from another distribution): the kernel's name for it
  case "$(uname -m)" in
    x86_64) arch=amd64 ;;
    aarch64 | arm64) arch=arm64 ;;
    *) arch=$(uname -m) ;;
  esac
fi
# Debian's kernel-headers metapackage is named after the architecture's kernel flavour; for
# amd64 and arm64 that is the architecture itself (linux-headers-amd64, linux-headers-arm64).
case "$arch" in
  amd64 | arm64) headers=linux-headers-$arch ;;
  *) echo "install.sh: no kernel headers package known for architecture $arch (amd64 and arm64 are)" >&2; exit 2 ;;
esac
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
venv=/opt/vethguard/venv

# The agent's packages (all the image gets), then the host's: the lab, benchmarks and tests.
# scripts/packages.tsv names the programs the code starts from each package and who needs it;
# tests/unit/test_install_programs.py fails when these lists and that table disagree.
agent_packages=(
  python3 python3-venv python3-pip python3-bpfcc libbpfcc "$headers" ca-certificates
  coreutils dash mount
)
host_packages=(
  bash iproute2 util-linux procps nftables dnsmasq-base libc-bin curl wget
  iperf3 sockperf linux-perf iptables ipset python3-matplotlib git gcc golang-go libc6-dev
  chromium chromium-driver
)
packages=("${agent_packages[@]}")
[ "$image" = 1 ] || packages+=("${host_packages[@]}")
if [ "$list" = 1 ]; then
  printf '%s\n' "${packages[@]}"
  exit 0
fi

if [ "$(id -u)" != 0 ]; then
  echo "install.sh: run as root (it installs system packages and mounts bpffs)" >&2
  exit 1
fi

echo "==> system packages"
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends "${packages[@]}" >/dev/null

if [ "$image" = 0 ]; then
  echo "==> kernel headers for bcc"
  kver=$(uname -r)
  mods=/lib/modules/$kver
  # Debian splits headers: generated ones in build (-amd64/-arm64), kconfig.h and the rest in source (-common)
  if [ -e "$mods/build/include/generated/autoconf.h" ] \
     && { [ -e "$mods/build/include/linux/kconfig.h" ] || [ -e "$mods/source/include/linux/kconfig.h" ]; }; then
    echo "    /lib/modules/$kver/build already has headers"
  else
    hdr=$(ls -d "/usr/src/linux-headers-"*"-$arch" 2>/dev/null | sort -V | tail -n 1)
    common=$(ls -d /usr/src/linux-headers-*-common 2>/dev/null | sort -V | tail -n 1)
    if [ -z "$hdr" ] || [ -z "$common" ]; then
      echo "install.sh: $headers installed no /usr/src/linux-headers-*-$arch and -common" >&2
      exit 1
    fi
    mkdir -p "/lib/modules/$kver"
    ln -sfn "$hdr" "/lib/modules/$kver/build"
    ln -sfn "$common" "/lib/modules/$kver/source"
    echo "    linked /lib/modules/$kver/{build,source} -> $hdr, $common"
  fi
  echo "==> bpffs"
  if ! mountpoint -q /sys/fs/bpf; then
    mount -t bpf bpf /sys/fs/bpf
  fi
fi

echo "==> vethguard in $venv"
if [ ! -x "$venv/bin/python" ]; then
  # Debian's python3 with system site packages: bcc's Python bindings come from python3-bpfcc.
  /usr/bin/python3 -m venv --system-site-packages "$venv"
fi
"$venv/bin/pip" install -q --upgrade pip >/dev/null
# The image needs only the agent; a host (README, CI) also gets the test tools.
extras="[test]"
[ "$image" = 1 ] && extras=""
# A developer's editable install of this same checkout stays editable: re-running is harmless.
mode=()
if "$venv/bin/python" - "$repo" 2>/dev/null <<'EOF'; then mode=(-e); fi
import importlib.metadata as md, json, sys
url = json.loads(md.distribution("vethguard").read_text("direct_url.json") or "{}")
sys.exit(0 if url.get("dir_info", {}).get("editable") and url.get("url") == "file://" + sys.argv[1] else 1)
EOF
"$venv/bin/pip" install -q "${mode[@]}" "$repo$extras"
ln -sfn "$venv/bin/vethguard" /usr/local/bin/vethguard
# kubectl finds plugins on PATH: `kubectl vethguard ...` runs kubectl-vethguard
ln -sfn "$venv/bin/kubectl-vethguard" /usr/local/bin/kubectl-vethguard
# shell completion, generated from the command line's parser (vethguard completion bash|zsh)
if [ "$image" = 0 ]; then
  mkdir -p /etc/bash_completion.d /usr/share/zsh/vendor-completions
  "$venv/bin/vethguard" completion bash > /etc/bash_completion.d/vethguard
  "$venv/bin/vethguard" completion zsh > /usr/share/zsh/vendor-completions/_vethguard
fi
"$venv/bin/python" -c "import bcc, pyroute2, kubernetes, controller" \
  || { echo "install.sh: the virtualenv cannot import its dependencies" >&2; exit 1; }
echo "==> done: $(command -v vethguard)"
