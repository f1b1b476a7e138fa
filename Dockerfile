# kefu container image: `docker build -t kefu .` then
#   docker run -p 1883:1883 -p 8083:8083 -p 18083:18083 -v kefu-data:/var/lib/kefu kefu
# Attach mode (devices stay on your broker) and a config of your own:
#   docker run -v $PWD/kefu.toml:/etc/kefu/kefu.toml:ro -e KEFU_BROKER_PASSWORD=... kefu
# docs/deploy.md describes the layouts. The image runs as an unprivileged user (uid 10001)
# and reports healthy only while /readyz does (storage, desk, and in attach mode the
# external broker).

FROM python:3.11-slim AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY broker broker
COPY bridge bridge
COPY config config
COPY kefu kefu
COPY nlp nlp
COPY storage storage
RUN python -m venv /opt/kefu \
 && /opt/kefu/bin/pip install --no-cache-dir --upgrade pip \
 && /opt/kefu/bin/pip install --no-cache-dir .

FROM python:3.11-slim
RUN groupadd --system --gid 10001 kefu \
 && useradd --system --uid 10001 --gid kefu --home-dir /var/lib/kefu --create-home --shell /usr/sbin/nologin kefu
COPY --from=build /opt/kefu /opt/kefu
COPY deploy/kefu.toml /etc/kefu/kefu.toml
ENV PATH=/opt/kefu/bin:$PATH \
    PYTHONUNBUFFERED=1
USER kefu:kefu
WORKDIR /var/lib/kefu
VOLUME ["/var/lib/kefu"]
# MQTT (embedded mode only), MQTT over WebSocket and /chat, HTTP (API, console, widget, /readyz)
EXPOSE 1883 8083 18083
STOPSIGNAL SIGTERM
HEALTHCHECK --interval=10s --timeout=3s --start-period=60s --retries=3 \
  CMD ["python", "-c", "import sys, urllib.request; sys.exit(urllib.request.urlopen('http://127.0.0.1:18083/readyz', timeout=2).status != 200)"]
ENTRYPOINT ["kefu"]
CMD ["serve", "--config", "/etc/kefu/kefu.toml"]
