#!/bin/sh
# Container entrypoint: apply migrations, then run `python -m bot <command>` (default: run).
set -eu

# The image sets DATABASE_URL to the /data volume. A relative SQLite path (three slashes, e.g. the
# old .env.example's sqlite+aiosqlite:///data/bot.db) resolves inside the container's own layer,
# which the next upgrade throws away with every conversation and the usage ledger: refuse it.
case "${DATABASE_URL:-}" in
  sqlite*:////* | sqlite*:///:memory:* | sqlite*://) ;;
  sqlite*:///*)
    echo "error: DATABASE_URL: the SQLite path '${DATABASE_URL#*:///}' is relative, so the database" \
      "would live in the container and be lost on upgrade; leave DATABASE_URL unset to use the" \
      "/data volume, or give an absolute path (sqlite+aiosqlite:////data/bot.db)" >&2
    exit 2
    ;;
esac

command="${1:-run}"
[ "$#" -gt 0 ] && shift
if [ "$command" != "migrate" ]; then
  python -m bot migrate
fi
exec python -m bot "$command" "$@"
