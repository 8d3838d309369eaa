#!/usr/bin/env bash
# Instructions per task of the controller, by part, counted by valgrind's callgrind: a
# measure that does not move with the machine's load, for changes too small to see in
# the throughput of these shared two-CPU machines (one run's noise is ±10%).
#
#   scripts/count-instructions.sh [STORE] [TASKS] [BENCH]
#
# STORE: nodb, dictdb or sqlite (default sqlite); TASKS: tasks per map (default 10000);
# BENCH: the bench binary (default target/release/examples/bench, built if missing).
# Runs `bench --stores STORE` with every process under callgrind (about two minutes at
# 10,000 tasks) and prints, for the controller at hwm 1 and at hwm 0, the instructions per
# task of the whole process, of its main thread (what routing waits on) and of its parts.
# The whole process includes the bench's final check that every task was recorded (for a
# store that records, a `db_query` of every record: a few thousand instructions per task on
# the main thread, none on the store's writer). Counts are of instructions, not time: SHA-256 runs
# without its CPU extensions under valgrind, so signature checks count far more than
# they cost natively; compare builds with each other, not with wall-clock profiles.
# The SQLite writer's count also moves with how many batches it made (timing decides that,
# and each commit costs ~20,000): compare the writer without its commits, printed apart.
# Needs valgrind (`apt-get install valgrind`).
set -euo pipefail

store="${1:-sqlite}"
tasks="${2:-10000}"
bench="${3:-target/release/examples/bench}"

command -v valgrind >/dev/null || {
    echo "valgrind is not installed: apt-get install valgrind" >&2
    exit 1
}
if [[ ! -x "$bench" ]]; then
    cargo build --release --example bench
fi

out="$(mktemp -d)"
trap 'rm -rf "$out"' EXIT
valgrind --tool=callgrind --trace-children=yes --separate-threads=yes \
    --callgrind-out-file="$out/callgrind.%p.out" \
    "$bench" --stores "$store" --tasks "$tasks" --latency 10 --megabytes 1 \
    --bandwidth-rounds 1 --memory-tasks 100 --window 100 --memory-stores nodb \
    --busy-poll-us 0 >"$out/bench.log" 2>&1 || {
    echo "the bench failed under valgrind; its output:" >&2
    cat "$out/bench.log" >&2
    exit 1
}

# The map runs TASKS tasks after a warm-up of min(1000, TASKS).
counted=$((tasks + (tasks < 1000 ? tasks : 1000)))

# The bench runs the store's controller at hwm 1, then at hwm 0: a table for each. Each
# thread has its own profile (`-01` is the main thread: the Hub, the schedulers and the
# relays, which routing waits on; the SQLite store's writer and checkpointer have theirs).
for hwm in 1 0; do
    main="$(grep -l -- "--store $store --hwm $hwm" "$out"/callgrind.*.out-01 | head -1)"
    threads=("${main%-01}"-*)
    for profile in "${threads[@]}"; do
        callgrind_annotate --inclusive=yes --threshold=100 "$profile" >"$profile.txt" 2>/dev/null
    done

    # Instructions per task of the first line matching $1 in each thread's profile, summed.
    per_task() {
        for profile in "${threads[@]}"; do
            { grep -E "$1" "$profile.txt" || true; } | head -1
        done | awk -v n="$counted" '{gsub(",", "", $1); sum += $1} END {if (NR) printf "%d", sum / n}'
    }

    echo "controller at hwm $hwm, store $store, $counted tasks: instructions per task"
    printf '| part | instructions per task |\n|---|---:|\n'
    printf '| whole process | %s |\n' "$(per_task "PROGRAM TOTALS")"
    printf '| main thread (Hub, schedulers, relays) | %s |\n' "$(grep "PROGRAM TOTALS" "$main.txt" | awk -v n="$counted" '{gsub(",", "", $1); printf "%d", $1 / n}')"
    while IFS='|' read -r name pattern; do
        value="$(per_task "$pattern")"
        printf '| %s | %s |\n' "$name" "${value:-—}"
    done <<'PARTS'
Hub loop (recording, registration; queries run in tasks of their own)|hub::run_hub::\{\{closure\}\} \[
task scheduler|run_task_scheduler::\{\{closure\}\} \[
IOPub relay|run_iopub_relay::\{\{closure\}\} \[
signature checks (all)|SigningKey::verify \[
SQLite writer thread|Writer::run \[
SQLite commits (their count follows timing: compare the writer without them)|rusqlite::Connection::execute_batch \[
SQLite checkpointer thread (instructions only; its cost is copying and fsync)|ipp_store_sqlite::checkpoint::checkpoint \[
PARTS
    echo
done
