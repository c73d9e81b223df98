# shellcheck shell=bash
# Sourced by .ci/run before the tests: PostgreSQL, Mosquitto and nats-server (Debian packages, installed when
# missing) on 127.0.0.1, throwaway (data in one temporary folder, stopped and removed when the shell exits), for
# tests/test_index_postgres.py and tests/test_publishers.py. Exports:
#   ICMH_TEST_POSTGRES=postgresql://icmh@127.0.0.1:PORT/postgres   (superuser icmh, trust auth on loopback)
#   ICMH_TEST_MQTT=mqtt://127.0.0.1:PORT                           (anonymous, persistence on)
#   ICMH_TEST_NATS=nats://127.0.0.1:PORT                           (JetStream on)
# Ports: 55432, 1883 and 4222 unless taken, else free ones. Locally: `source .ci/services.sh` (as root, or as a
# user who can run initdb) starts the same servers for this shell.

icmh_free_port() {  # the preferred port if nothing listens there, else one the kernel picks
    python3 - "$1" <<'EOF'
import socket, sys
for port in (int(sys.argv[1]), 0):
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            continue
        print(s.getsockname()[1])
        break
EOF
}

icmh_wait_port() {  # port, what, log file
    for _ in $(seq 100); do
        if (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; then return 0; fi
        sleep 0.1
    done
    echo "services.sh: $2 did not listen on 127.0.0.1:$1" >&2
    cat "$3" >&2 || true
    return 1
}

icmh_services_down() {
    [ -n "${ICMH_SERVICES_DIR:-}" ] || return 0
    [ -n "${ICMH_MOSQUITTO_PID:-}" ] && kill "$ICMH_MOSQUITTO_PID" 2>/dev/null
    [ -n "${ICMH_NATS_PID:-}" ] && kill "$ICMH_NATS_PID" 2>/dev/null
    if [ -f "$ICMH_SERVICES_DIR/pg/data/postmaster.pid" ]; then
        $ICMH_AS_PG "$ICMH_PG_BIN/pg_ctl" -D "$ICMH_SERVICES_DIR/pg/data" -m fast -w stop >/dev/null 2>&1
    fi
    rm -rf "$ICMH_SERVICES_DIR"
    ICMH_SERVICES_DIR=""
}

icmh_services_up() {
    local missing=() started
    started=$(date +%s)
    ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || missing+=(postgresql)
    command -v mosquitto >/dev/null 2>&1 || [ -x /usr/sbin/mosquitto ] || missing+=(mosquitto)
    command -v nats-server >/dev/null 2>&1 || [ -x /usr/sbin/nats-server ] || missing+=(nats-server)
    if [ ${#missing[@]} -gt 0 ]; then
        apt-get update -qq >/dev/null
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
    fi
    PATH="$PATH:/usr/sbin"
    ICMH_PG_BIN=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -n 1)
    ICMH_SERVICES_DIR=$(mktemp -d /tmp/icmh-services.XXXXXX)
    chmod 755 "$ICMH_SERVICES_DIR"
    mkdir -p "$ICMH_SERVICES_DIR"/{pg,mosquitto,nats}
    trap icmh_services_down EXIT

    # PostgreSQL: a cluster of its own (initdb refuses root: run it as the postgres user then)
    ICMH_AS_PG=""
    if [ "$(id -u)" = 0 ]; then
        ICMH_AS_PG="runuser -u postgres --"
        chown postgres: "$ICMH_SERVICES_DIR/pg"
    fi
    local pg_port mqtt_port nats_port
    pg_port=$(icmh_free_port 55432)
    $ICMH_AS_PG "$ICMH_PG_BIN/initdb" -D "$ICMH_SERVICES_DIR/pg/data" -U icmh -A trust -E UTF8 --no-sync \
        >"$ICMH_SERVICES_DIR/pg/initdb.log" 2>&1 || { cat "$ICMH_SERVICES_DIR/pg/initdb.log" >&2; return 1; }
    $ICMH_AS_PG "$ICMH_PG_BIN/pg_ctl" -D "$ICMH_SERVICES_DIR/pg/data" -l "$ICMH_SERVICES_DIR/pg/server.log" -w \
        -o "-c listen_addresses=127.0.0.1 -p $pg_port -k $ICMH_SERVICES_DIR/pg -c max_connections=200" start \
        >/dev/null || { cat "$ICMH_SERVICES_DIR/pg/server.log" >&2; return 1; }

    # Mosquitto: anonymous on loopback, persistent (a restarted broker keeps sessions and retained messages)
    mqtt_port=$(icmh_free_port 1883)
    cat >"$ICMH_SERVICES_DIR/mosquitto/mosquitto.conf" <<EOF
listener $mqtt_port 127.0.0.1
allow_anonymous true
persistence true
persistence_location $ICMH_SERVICES_DIR/mosquitto/
log_dest file $ICMH_SERVICES_DIR/mosquitto/mosquitto.log
EOF
    [ "$(id -u)" = 0 ] && chown -R mosquitto: "$ICMH_SERVICES_DIR/mosquitto"
    mosquitto -c "$ICMH_SERVICES_DIR/mosquitto/mosquitto.conf" &
    ICMH_MOSQUITTO_PID=$!

    # nats-server with JetStream, its store in the temporary folder
    nats_port=$(icmh_free_port 4222)
    nats-server -a 127.0.0.1 -p "$nats_port" -js -sd "$ICMH_SERVICES_DIR/nats" \
        -l "$ICMH_SERVICES_DIR/nats/nats.log" &
    ICMH_NATS_PID=$!

    icmh_wait_port "$mqtt_port" mosquitto "$ICMH_SERVICES_DIR/mosquitto/mosquitto.log" || return 1
    icmh_wait_port "$nats_port" nats-server "$ICMH_SERVICES_DIR/nats/nats.log" || return 1
    export ICMH_TEST_POSTGRES="postgresql://icmh@127.0.0.1:$pg_port/postgres"
    export ICMH_TEST_MQTT="mqtt://127.0.0.1:$mqtt_port"
    export ICMH_TEST_NATS="nats://127.0.0.1:$nats_port"
    echo "services: PostgreSQL :$pg_port, Mosquitto :$mqtt_port, nats-server :$nats_port" \
         "(up in $(( $(date +%s) - started )) s)"
}

icmh_services_up
