# Tollgate: multi-stage build on Debian bookworm; the runtime image has only the shared
# libraries it links, runs as a non-root user, and reads /etc/tollgate/tollgate.yaml.
FROM debian:bookworm-slim AS build
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
      build-essential libmicrohttpd-dev libcurl4-openssl-dev libhiredis-dev libev-dev \
      libjansson-dev libyajl-dev libyaml-dev libssl-dev \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY Makefile VERSION ./
COPY gateway gateway
COPY routing routing
COPY metrics metrics
COPY tools/mocknode tools/mocknode
RUN make -j"$(nproc)" all

FROM debian:bookworm-slim
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
      libmicrohttpd12 libcurl4 libhiredis0.14 libev4 libjansson4 libyajl2 libyaml-0-2 libssl3 \
      ca-certificates \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --system --uid 10001 --no-create-home --shell /usr/sbin/nologin tollgate \
 && mkdir -p /etc/tollgate
COPY --from=build /src/build/tollgate /usr/local/bin/tollgate
COPY --from=build /src/build/mocknode /usr/local/bin/mocknode
COPY deploy/tollgate.example.yaml /etc/tollgate/tollgate.yaml
USER 10001:10001
ENV TOLLGATE_CONFIG=/etc/tollgate/tollgate.yaml \
    TOLLGATE_LISTEN=0.0.0.0:8080
EXPOSE 8080
HEALTHCHECK --interval=10s --timeout=3s --start-period=5s --retries=3 \
  CMD ["/usr/local/bin/tollgate", "--healthcheck"]
STOPSIGNAL SIGTERM
ENTRYPOINT ["/usr/local/bin/tollgate"]
