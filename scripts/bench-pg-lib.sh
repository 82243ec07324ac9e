# Sourced by bench-collector.sh and bench-history.sh (from the repository root, after the build): a
# scratch directory $WORK removed at exit, with the collector ($SERVER) and PostgreSQL ($PG_PID) stopped,
# and start_postgres. Messages name the sourcing script.
BENCH_NAME="$(basename "$0" .sh)"
WORK="$(mktemp -d "${BENCH_DIR:-/var/tmp}/$BENCH_NAME.XXXXXX")"
chmod 0711 "$WORK"   # the postgres user reaches its data directory inside
SERVER="" PG_PID=""
cleanup() {
  [ -n "$SERVER" ] && kill "$SERVER" 2>/dev/null
  if [ -n "$PG_PID" ]; then kill -INT "$PG_PID" 2>/dev/null; wait "$PG_PID" 2>/dev/null || true; fi
  rm -rf "$WORK"
}
trap cleanup EXIT

# start_postgres [SERVER_ARGS...]: Debian's PostgreSQL from a fresh initdb in $WORK/pg on 127.0.0.1 at a
# free port (as the postgres user when run as root), SERVER_ARGS added to its command line; sets PG_PID
# and PG_PORT.
start_postgres() {
  local bin run=()
  bin="$(compgen -G '/usr/lib/postgresql/*/bin' | sort -V | tail -1)"
  [ -x "$bin/initdb" ] || { echo "$BENCH_NAME: needs PostgreSQL (Debian package postgresql)" >&2; exit 2; }
  mkdir "$WORK/pg"
  if [ "$(id -u)" -eq 0 ]; then
    chown postgres: "$WORK/pg"
    run=(setpriv --reuid=postgres --regid=postgres --init-groups --)
  fi
  (cd "$WORK/pg" && "${run[@]}" "$bin/initdb" -D "$WORK/pg/data" -U postgres --auth=trust --no-instructions >/dev/null)
  PG_PORT="$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
  (cd "$WORK/pg" && exec "${run[@]}" "$bin/postgres" -D "$WORK/pg/data" -h 127.0.0.1 -p "$PG_PORT" \
    -k "$WORK/pg" "$@" >"$WORK/pg.log" 2>&1) &
  PG_PID=$!
  for _ in $(seq 300); do
    "$bin/pg_isready" -q -h 127.0.0.1 -p "$PG_PORT" && return
    sleep 0.1
  done
  echo "$BENCH_NAME: PostgreSQL did not start:" >&2; cat "$WORK/pg.log" >&2; exit 2
}
