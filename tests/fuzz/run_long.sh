#!/usr/bin/env bash
# The long fuzz runs (not CI): one target at a time, at nice 19, each until RUNS executions
# (default 10^6) or its time budget, whichever comes first. Prints one Markdown row per target
# (the table in benchmarks/RESULTS.md); logs, grown corpora and any crash inputs stay in OUT.
#
#   tests/fuzz/run_long.sh                          # every target, 10^6 runs each, no time limit
#   RUNS=1000000 tests/fuzz/run_long.sh tpk:180 gguf:120   # target:seconds (0 = no limit)
#
# libFuzzer's own bookkeeping grows the RSS by a few KB per execution (the Python heap of the
# target stays flat), so a 10^6 run needs more than its 2 GB default -rss_limit_mb; and the
# wall-clock -timeout only guards against a real hang (the harness checks each input's CPU time
# against 1 s), so at nice 19 beside a build it is raised. FLAGS overrides both.
#
# A crash input found here goes to tests/fuzz/regressions/<target>/ together with the fix
# (tests/test_fuzz_regressions.py replays it). PYTHON: the interpreter with engine + atheris.
set -uo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
py="${PYTHON:-python3}"
runs="${RUNS:-1000000}"
# and the address-space cap of the harness (a size field trusted shows as MemoryError) leaves
# room for that growth
export FUZZ_ADDRESS_SPACE_GB="${FUZZ_ADDRESS_SPACE_GB:-8}"
read -r -a flags <<< "${FLAGS:--rss_limit_mb=6144 -timeout=120}"
out="${OUT:-$(mktemp -d -t ternary-fuzz-long-XXXXXX)}"
specs=("$@")
[ ${#specs[@]} -eq 0 ] && specs=(tpk gguf hf sentencepiece tokenizer_json)

echo "fuzz long runs: up to $runs executions per target; logs in $out" >&2
echo "| target | executions | seconds | exec/s | new corpus units | result |"
echo "|---|---:|---:|---:|---:|---|"
for spec in "${specs[@]}"; do
    target="${spec%%:*}"
    budget=0
    [ "$spec" != "$target" ] && budget="${spec#*:}"
    dir="$out/$target"
    mkdir -p "$dir/corpus" "$dir/artifacts"
    start=$(date +%s)
    nice -n 19 "$py" "$here/fuzz_$target.py" "$dir/corpus" "$here/corpus/$target" \
        -runs="$runs" -max_total_time="$budget" -artifact_prefix="$dir/artifacts/" \
        -print_final_stats=1 "${flags[@]}" > "$dir/log" 2>&1
    rc=$?
    secs=$(( $(date +%s) - start ))
    n=$(grep -o 'number_of_executed_units: *[0-9]*' "$dir/log" | grep -o '[0-9]*$' | tail -1)
    units=$(grep -o 'new_units_added: *[0-9]*' "$dir/log" | grep -o '[0-9]*$' | tail -1)
    crashes=$(ls "$dir/artifacts" | wc -l)
    if [ "$rc" -eq 0 ]; then result="no finding"; else result="exit $rc, $crashes artifact(s) in $dir/artifacts"; fi
    rate=$(( ${n:-0} / (secs > 0 ? secs : 1) ))
    echo "| $target | ${n:-?} | $secs | $rate | ${units:-?} | $result |"
done
