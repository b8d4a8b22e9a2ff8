# syntax=docker/dockerfile:1
# Build: docker build -t glm-slack-bot .
# Run:   docker run --env-file .env -p 3000:3000 -v glm-data:/data --stop-timeout 40 glm-slack-bot
# The base is an exact Python release on a fixed Debian and every package comes from a lock with
# hashes, so a rebuild gets the same bytes (README: Dependencies and the image).

FROM python:3.11.15-slim-bookworm AS build
WORKDIR /src
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
COPY requirements.lock ./
RUN python -m venv /opt/venv \
    && /opt/venv/bin/pip install --require-hashes --no-deps -r requirements.lock
COPY pyproject.toml README.md ./
COPY bot ./bot
COPY migrations ./migrations
COPY config ./config
# The bot itself, built offline by the locked setuptools; the wheel carries the migrations and the prompt.
RUN /opt/venv/bin/pip install --no-deps --no-build-isolation --no-index .

FROM python:3.11.15-slim-bookworm
# DATABASE_URL: the /data volume. A relative SQLite path would land in the container's own layer and
# be lost on upgrade, so the entrypoint puts this default back (with a warning). USAGE_SPOOL_DIR: ledger rows that wait out a
# database outage live on the volume too, so a recreated container still replays them.
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    DATABASE_URL=sqlite+aiosqlite:////data/bot.db \
    USAGE_SPOOL_DIR=/data/spool \
    PORT=3000
RUN useradd --system --uid 10001 --home-dir /app --create-home bot \
    && mkdir /data && chown bot /data
COPY --from=build /opt/venv /opt/venv
COPY docker/entrypoint.sh /usr/local/bin/entrypoint
WORKDIR /app
USER 10001
VOLUME ["/data"]
EXPOSE 3000
# Liveness, not readiness: Docker (and orchestrators acting on its status) must not restart the bot
# because the database is away. Load balancers use /readyz.
HEALTHCHECK --interval=30s --timeout=5s --start-period=30s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen(f'http://127.0.0.1:{os.environ.get(\"PORT\", \"3000\")}/livez', timeout=4)"]
ENTRYPOINT ["entrypoint"]
CMD ["run"]
