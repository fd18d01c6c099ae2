# syntax=docker/dockerfile:1
# ecdysis: one binary, plus what its features run at runtime (Chromium for /screenshot and
# /record, ffmpeg for /record, bubblewrap for the /run sandbox). See README.md "Deploy".
#
#   docker build -t ecdysis .
#   docker run -p 8080:8080 -e ECDYSIS_ADMIN_TOKEN=... -v ecdysis-data:/data ecdysis

# --- build: the Rust toolchain ----------------------------------------------------------------
FROM rust:1.95-slim-trixie AS build
# nasm: libjpeg-turbo's SIMD code (JPEGs users send are decoded with it; without nasm it is
# built as plain C, slower).
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends nasm \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
# The registry and target directory are cached between builds (BuildKit), so a rebuild after
# a source change compiles ecdysis, not its dependencies.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked --bin ecdysis \
    && cp target/release/ecdysis /usr/local/bin/ecdysis

# --- run: Debian slim with the runtime tools --------------------------------------------------
FROM debian:trixie-slim
# Versions come with the Debian release; security updates arrive by rebuilding.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends \
        ca-certificates \
        chromium \
        ffmpeg \
        bubblewrap \
        fonts-liberation \
        tini \
    && rm -rf /var/lib/apt/lists/* \
    && groupadd --system --gid 10001 ecdysis \
    && useradd --system --uid 10001 --gid 10001 --create-home --home-dir /home/ecdysis ecdysis \
    && mkdir -p /data \
    && chown 10001:10001 /data
COPY --from=build /usr/local/bin/ecdysis /usr/local/bin/ecdysis
# Not root: the sandbox uses unprivileged user namespaces (bubblewrap); Chromium runs headless.
USER 10001:10001
WORKDIR /home/ecdysis
ENV ECDYSIS_DATA_DIR=/data \
    ECDYSIS_CHROMIUM=/usr/bin/chromium \
    PORT=8080
EXPOSE 8080
# tini reaps Chromium's and the sandbox's children and passes SIGTERM on (graceful shutdown).
ENTRYPOINT ["/usr/bin/tini", "--"]
CMD ["ecdysis", "serve"]
