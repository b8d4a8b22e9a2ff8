#!/bin/sh
# Container entrypoint: apply migrations (unless MIGRATE_ON_START=false), then run
# `python -m bot <command>` (default: run).
set -eu

# The image sets DATABASE_URL to the /data volume. A relative SQLite path (three slashes, e.g. the
# old .env.example's sqlite+aiosqlite:///data/bot.db) would resolve inside the container's own layer,
# which the next upgrade throws away with every conversation and the usage ledger: the image's
# default wins over it, with a warning. (IMAGE_DATABASE_URL exists for the tests, which run this
# script outside the image.)
image_database_url="${IMAGE_DATABASE_URL:-sqlite+aiosqlite:////data/bot.db}"
case "${DATABASE_URL:-}" in
  sqlite*:////* | sqlite*:///:memory:* | sqlite*://) ;;
  sqlite*:///*)
    echo "warning: DATABASE_URL: the SQLite path '${DATABASE_URL#*:///}' is relative, so the database" \
      "would live in the container and be lost on upgrade; using the /data volume instead" \
      "(${image_database_url}). Give an absolute path to choose another file." >&2
    export DATABASE_URL="$image_database_url"
    ;;
esac

command="${1:-run}"
[ "$#" -gt 0 ] && shift
# MIGRATE_ON_START=false (replicas): `python -m bot migrate` is a separate step, and `run` only checks
# that it has been done. The false spellings are pydantic's, which reads the setting in the bot.
migrate_on_start="$(printf '%s' "${MIGRATE_ON_START:-true}" | tr '[:upper:]' '[:lower:]' | tr -d ' ')"
case "$migrate_on_start" in
  0 | off | f | false | n | no) ;;
  *) [ "$command" = "migrate" ] || python -m bot migrate ;;
esac
exec python -m bot "$command" "$@"
