# vethguard agent image: Debian bookworm, installed by the same script the README uses
# (scripts/install.sh), so CI's run of that script proves the image's install steps.
#
#   docker build -t vethguard:0.1.0 .
#
# The image runs `vethguard agent` as root with only the capabilities deploy/daemonset.yaml
# grants: the runtime sets those (securityContext there; by hand:
#   docker run --network host --cap-drop ALL --cap-add BPF --cap-add NET_ADMIN --cap-add SYS_ADMIN \
#     --security-opt apparmor=unconfined -v /sys/fs/bpf:/sys/fs/bpf:rslave \
#     -v /lib/modules:/host/lib/modules:ro -v /usr/src:/host/usr/src:ro vethguard:0.1.0 --node NAME)
# and the agent's preflight refuses to start when one is missing, naming it.
# The chained CNI plugin deploy/ installs on nodes: a static binary from the Go standard library
# (cni/), so a node needs nothing but its kernel to run it.
FROM debian:bookworm-slim AS cni
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
RUN apt-get update \
    && apt-get install -y --no-install-recommends golang-go=2:1.19~1 \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /src/cni
COPY cni /src/cni
RUN CGO_ENABLED=0 GOFLAGS=-mod=mod GOPROXY=off go build -trimpath -ldflags=-s -o /out/vethguard-cni .

FROM debian:bookworm-slim

LABEL org.opencontainers.image.title="vethguard" \
      org.opencontainers.image.description="Kubernetes NetworkPolicy enforced by tc BPF programs on pod veths" \
      org.opencontainers.image.version="0.1.0" \
      org.opencontainers.image.licenses="Apache-2.0"

SHELL ["/bin/bash", "-o", "pipefail", "-c"]
WORKDIR /src
# Only what the package build needs: no .git, tests or local caches in the image.
COPY pyproject.toml README.md /src/
COPY scripts /src/scripts
COPY controller /src/controller
COPY bpf /src/bpf
# --image: skip the host-only steps (kernel-headers link, bpffs mount) and the test tools. The
# image keeps Debian's headers for the build's architecture in /usr/src (linux-headers-amd64 or
# linux-headers-arm64: install.sh picks linux-headers-$(dpkg --print-architecture)): the agent
# compiles with them when the node's own headers are not mounted at /host
# (controller/agent/preflight.py).
ENV PIP_NO_CACHE_DIR=1
RUN bash scripts/install.sh --image && rm -rf /var/lib/apt/lists/*
# deploy/'s install-cni init container copies it to the node (vethguard cni-install)
COPY --from=cni /out/vethguard-cni /opt/vethguard/cni/vethguard-cni

# Where deploy/daemonset.yaml mounts the host's /lib/modules and /usr/src (read-only).
ENV VETHGUARD_HOST_ROOT=/host
# /livez /readyz /metrics /status, bound to 127.0.0.1 in the node's network namespace.
EXPOSE 9890/tcp
WORKDIR /
# No USER: the agent is root (bpffs and pinned maps are root's), confined by capabilities.
ENTRYPOINT ["/opt/vethguard/venv/bin/vethguard", "agent"]
