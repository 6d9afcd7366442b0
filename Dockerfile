# Grapevine's container image (docs/OPERATIONS.md, "Containers").
#
#   docker build -t grapevine .          # the full build: compiles the node (release
#                                        # profile) in a Rust image, ~20-30 min on 2 cores
#   docker run -v "$PWD/home:/data" -p 26656:26656 -p 127.0.0.1:8545:8545 grapevine
#
# The image runs `grapevine run --home /data` as uid 10001: mount a node's home (as
# `grapevine testnet --hosts` or `grapevine init` write it) at /data, writable by that
# uid. Peers on 26656, JSON-RPC on 8545 (publish it on loopback only, or behind a proxy).
#
# Second target, for CI and for machines that already built the node:
#   docker build --target prebuilt -t grapevine DIR   # DIR holds a `grapevine` binary
# copies DIR/grapevine instead of compiling (scripts/docker-test.sh builds it so, with
# RUNTIME_IMAGE=grapevine-base:bookworm, a base image made with debootstrap). The
# binary must be built for glibc 2.36 or older (Debian bookworm) and needs libstdc++,
# which the runtime image has.
#
# The runtime stages come first: the classic builder (no BuildKit) builds every stage
# before the target, so `--target prebuilt` then never touches RUST_IMAGE. BuildKit
# builds only the stages the target needs.

ARG RUST_IMAGE=rust:1-bookworm
ARG RUNTIME_IMAGE=debian:bookworm-slim

# ---- runtime: what both final targets share --------------------------------------
FROM ${RUNTIME_IMAGE} AS runtime
# libstdc++6 (RocksDB) is in every Debian image (apt needs it); nothing to install.
RUN groupadd --system --gid 10001 grapevine \
 && useradd --system --uid 10001 --gid 10001 --home-dir /data --no-create-home \
      --shell /usr/sbin/nologin grapevine \
 && mkdir -p /data \
 && chown 10001:10001 /data
# Wallet and status commands run inside the container talk to this node by default:
#   docker exec NAME grapevine status
ENV GRAPEVINE_RPC=http://127.0.0.1:8545
WORKDIR /data
VOLUME ["/data"]
# 26656: peers (TCP, must be reachable from the other nodes); 8545: JSON-RPC.
EXPOSE 26656 8545
# The node stops cleanly on SIGTERM; give it time (docker stop -t 30, compose's
# stop_grace_period) rather than the default 10 s before SIGKILL.
STOPSIGNAL SIGTERM
# GET /health on the node's RPC: 200 once it has a peer and is within 5 blocks of its
# peers and blocks keep becoming final (docs/RPC.md); 503 with the reason otherwise.
HEALTHCHECK --interval=10s --timeout=5s --start-period=60s --retries=3 \
  CMD ["grapevine", "health"]
USER 10001:10001
ENTRYPOINT ["grapevine"]
CMD ["run", "--home", "/data"]

# ---- prebuilt: copy a binary from the build context ------------------------------
FROM runtime AS prebuilt
# CONTEXT/grapevine. The second pattern is for the classic builder, which builds every
# stage on its way to the default target, this one included, from the repository,
# where there is no binary: a COPY that matches nothing would fail that build. There
# it matches Cargo.toml instead, in a stage the default target does not use.
COPY grapevin[e] Cargo.tom[l] /usr/local/bin/

# ---- build: compile the node -----------------------------------------------------
FROM ${RUST_IMAGE} AS build
# libclang for RocksDB's bindgen; the Rust image already has g++.
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends libclang-dev \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
# .cargo/config.toml (target CPU x86-64-v2) applies here as in every other build.
# The debug info (line tables, mostly RocksDB's) is stripped: 470 MB -> about 20 MB.
RUN cargo build --release --locked -p grapevine-node --bin grapevine \
 && objcopy --strip-debug target/release/grapevine /usr/local/bin/grapevine \
 && /usr/local/bin/grapevine --version

# ---- the default target: the runtime with the binary built above ------------------
FROM runtime AS node
COPY --from=build /usr/local/bin/grapevine /usr/local/bin/grapevine
