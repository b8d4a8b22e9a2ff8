# syntax=docker/dockerfile:1
# Build: docker build -t glm-slack-bot .   Run: docker run --env-file .env -p 3000:3000 glm-slack-bot

FROM python:3.11-slim AS build
WORKDIR /src
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python -m venv /opt/venv
COPY pyproject.toml constraints.txt README.md ./
COPY bot ./bot
COPY migrations ./migrations
COPY config ./config
# Installs from the lock; the wheel carries the migrations and the default system prompt.
RUN /opt/venv/bin/pip install -c constraints.txt .

FROM python:3.11-slim
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    DATABASE_URL=sqlite+aiosqlite:////data/bot.db \
    PORT=3000
RUN useradd --system --uid 10001 --home-dir /app --create-home bot \
    && mkdir /data && chown bot /data
COPY --from=build /opt/venv /opt/venv
COPY docker/entrypoint.sh /usr/local/bin/entrypoint
WORKDIR /app
USER bot
VOLUME ["/data"]
EXPOSE 3000
HEALTHCHECK --interval=30s --timeout=5s --start-period=20s --retries=3 \
    CMD python -c "import os, urllib.request; urllib.request.urlopen(f'http://127.0.0.1:{os.environ.get(\"PORT\", \"3000\")}/healthz', timeout=4)"
ENTRYPOINT ["entrypoint"]
CMD ["run"]
