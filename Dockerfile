# vethguard agent image: Debian bookworm, installed by the same script the README uses.
FROM debian:bookworm-slim

SHELL ["/bin/bash", "-o", "pipefail", "-c"]
WORKDIR /src
COPY . /src
# --image: no headers link or bpffs mount at build time; the agent arranges both on the node.
RUN bash scripts/install.sh --image && rm -rf /var/lib/apt/lists/*

# Runs as root with only the capabilities the DaemonSet grants (see deploy/daemonset.yaml).
ENTRYPOINT ["/opt/vethguard/venv/bin/vethguard", "agent"]
