# Tollgate: multi-stage build on Debian bookworm. The runtime image has only the shared
# libraries the binaries link (checked by tests/integration/deploy.test.mjs), runs as a
# non-root user and reads /etc/tollgate/tollgate.yaml (TOLLGATE_CONFIG).
#
#   docker build -t tollgate .
#   docker run -p 8080:8080 -v $PWD/my.yaml:/etc/tollgate/tollgate.yaml:ro tollgate
#
# The image also holds /usr/local/bin/mocknode, the simulated inference node used by the
# Compose demo (deploy/docker-compose.yml).

FROM debian:bookworm-slim AS build
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
      build-essential pkg-config libmicrohttpd-dev libcurl4-gnutls-dev libssh2-1-dev \
      libhiredis-dev libev-dev libjansson-dev libyajl-dev libyaml-dev nettle-dev \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY Makefile VERSION ./
COPY base base
COPY config config
COPY redis redis
COPY net net
COPY openai openai
COPY tenancy tenancy
COPY cache cache
COPY routing routing
COPY metrics metrics
COPY trace trace
COPY gateway gateway
COPY tools/mocknode tools/mocknode
RUN make -j"$(nproc)" all \
 && strip build/tollgate build/mocknode

FROM debian:bookworm-slim
LABEL org.opencontainers.image.title="tollgate" \
      org.opencontainers.image.description="OpenAI-compatible inference gateway: cheapest healthy backend, caching, keys, metrics"
# Runtime libraries, one per library the binaries link: libmicrohttpd.so.12,
# libcurl-gnutls.so.4 (libcurl3-gnutls), libssh2.so.1, libhiredis.so.0.14, libev.so.4,
# libjansson.so.4, libyajl.so.2, libyaml-0.so.2, libnettle.so.8. ca-certificates for https
# backends and price feeds.
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
      libmicrohttpd12 libcurl3-gnutls libssh2-1 libhiredis0.14 libev4 libjansson4 libyajl2 \
      libyaml-0-2 libnettle8 \
      ca-certificates \
 && rm -rf /var/lib/apt/lists/* \
 && groupadd --system --gid 10001 tollgate \
 && useradd --system --uid 10001 --gid 10001 --no-create-home --home-dir /nonexistent \
      --shell /usr/sbin/nologin tollgate \
 && mkdir -p /etc/tollgate
COPY --from=build /src/build/tollgate /usr/local/bin/tollgate
COPY --from=build /src/build/mocknode /usr/local/bin/mocknode
# A placeholder: mount the real config over it (it needs TOLLGATE_DEMO_KEY and real backends).
COPY deploy/tollgate.example.yaml /etc/tollgate/tollgate.yaml
# Numeric, so Kubernetes' runAsNonRoot can verify it. The spool_dir default, /var/tmp, is
# writable by it; with a read-only root file system, mount a volume there.
USER 10001:10001
ENV TOLLGATE_CONFIG=/etc/tollgate/tollgate.yaml
# 8080: the API (listen); 9090: the admin listener with /metrics, when admin_listen is set.
EXPOSE 8080 9090
# Loads the same config (and environment) as the server, then GET /healthz on its listen address.
HEALTHCHECK --interval=10s --timeout=3s --start-period=5s --retries=3 \
  CMD ["/usr/local/bin/tollgate", "--healthcheck"]
# SIGTERM drains: /readyz turns 503, in-flight requests finish within drain_timeout_ms.
# Give the container longer than that to stop (docker stop -t, stop_grace_period).
STOPSIGNAL SIGTERM
ENTRYPOINT ["/usr/local/bin/tollgate"]
