# Builds docpipe and its local embedding service on Debian 12. curl is in
# the image for docker-compose.yml's healthchecks (/readyz, /health).
FROM debian:12 AS build
RUN apt-get update && apt-get install -y --no-install-recommends \
      build-essential cmake pkg-config librdkafka-dev libavro-dev \
      libcurl4-openssl-dev libcriterion-dev libmicrohttpd-dev libjansson-dev \
      libssl-dev libpq-dev && rm -rf /var/lib/apt/lists/*
COPY . /src
RUN cmake -S /src -B /build -DCMAKE_BUILD_TYPE=RelWithDebInfo && cmake --build /build -j

FROM debian:12
RUN apt-get update && apt-get install -y --no-install-recommends \
      librdkafka1 libavro23 libcurl4 libmicrohttpd12 libjansson4 libpq5 \
      ca-certificates curl && rm -rf /var/lib/apt/lists/*
COPY --from=build /build/docpipe /build/tools/docpipe-embedserver /usr/local/bin/
COPY --from=build /src/schemas /usr/share/docpipe/schemas
ENV DOCPIPE_SCHEMA_DIR=/usr/share/docpipe/schemas
