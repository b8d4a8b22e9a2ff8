#!/bin/sh
# Container entrypoint: apply migrations, then run `python -m bot <command>` (default: run).
set -eu
command="${1:-run}"
[ "$#" -gt 0 ] && shift
if [ "$command" != "migrate" ]; then
  python -m bot migrate
fi
exec python -m bot "$command" "$@"
