#!/usr/bin/env bash
# Writes link/hot-functions.txt: the functions `ecdysis serve` runs to start (with its default
# settings, so the sandbox probe too), to answer web chat (commands, an OpenAI-compatible
# model's streamed answers) and Slack events (an Anthropic model's), and to sit idle, recorded
# by valgrind's callgrind on a release build that keeps its symbols. build.rs hands the list to
# the linker, which puts these functions side by side at the front of the code, so a running
# server maps in a few MB of code instead of pages spread over all of it (see README, "The
# release binary").
#
# Run it again after a toolchain or dependency update, and before measuring a release build
# after any change to the code: functions are named with hashes of their crate's version, and
# the local copies LTO makes carry a number (`name.12345`) that shifts whenever the code does.
# Names the linker no longer finds are skipped (the binary still works, with less of its code
# together: 530 stale names of 7,371 took idle RSS after 50 events from 13 to 17-19 MB).
# Needs valgrind, python3 and curl. It links the release binary with its symbols
# (ECDYSIS_KEEP_SYMBOLS=1; a relink, ~8 minutes on 2 cores), or takes such a binary as its
# argument; `cargo build --release` afterwards links the ordered binary.
set -euo pipefail
cd "$(dirname "$0")/.."
work=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$work"' EXIT

if [ $# -ge 1 ]; then
  binary=$1
else
  ECDYSIS_KEEP_SYMBOLS=1 cargo build --release --bin ecdysis
  binary=$work/ecdysis
  cp "${CARGO_TARGET_DIR:-target}/release/ecdysis" "$binary"
fi

fakes_port=18791
port=18792
base=http://127.0.0.1:$port
fakes=http://127.0.0.1:$fakes_port
python3 link/fakes.py "$fakes_port" &

# Start `serve` under callgrind with the given settings, run the workload function, let the
# server idle long enough for its periodic tasks (sweeps, leases, checkpoints), stop it.
record() {
  local name=$1 workload=$2
  shift 2
  rm -rf "$work/data"
  env -i PATH="$PATH" HOME="$work" ECDYSIS_DATA_DIR="$work/data" ECDYSIS_LISTEN="127.0.0.1:$port" \
    RUST_LOG=info "$@" \
    valgrind --tool=callgrind --demangle=no --dump-instr=no \
    --callgrind-out-file="$work/$name.callgrind" "$binary" serve 2>"$work/$name.log" &
  local serve=$!
  for _ in $(seq 600); do
    curl -sf -o /dev/null "$base/readyz" && break
    sleep 0.1
  done
  "$workload"
  sleep 15
  kill -TERM "$serve"
  wait "$serve" || true
}

say() {
  curl -sf -o /dev/null -X POST -H 'content-type: application/json' \
    -d "{\"text\":\"$2\"}" "$base/api/chat/$1"
}

web_chat() {
  for i in $(seq 20); do say "profile-$((i % 4))" "/remember profile note $i"; done
  for conversation in profile-0 profile-1; do
    say "$conversation" "/memory"
    say "$conversation" "/recall note"
    say "$conversation" "/help"
    for i in $(seq 5); do say "$conversation" "what did I note? ($i)"; done
    curl -sf -o /dev/null "$base/api/chat/$conversation/messages"
  done
  curl -sf -o /dev/null "$base/"
}

slack_events() {
  python3 link/slack_events.py "$base/slack/events" profile-secret 30
}

record web web_chat \
  OPENAI_API_KEY=profile OPENAI_BASE_URL="$fakes/v1" ECDYSIS_MODEL=openai/profile
record slack slack_events \
  SLACK_SIGNING_SECRET=profile-secret SLACK_BOT_TOKEN=xoxb-profile SLACK_API_URL="$fakes/api/" \
  ANTHROPIC_API_KEY=profile ANTHROPIC_BASE_URL="$fakes" ECDYSIS_MODEL=anthropic/profile

python3 link/callgrind_functions.py "$binary" "$work/web.callgrind" \
  "$work/slack.callgrind" > link/hot-functions.txt
echo "link/hot-functions.txt: $(wc -l < link/hot-functions.txt) functions"
