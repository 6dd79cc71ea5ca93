#!/usr/bin/env bash
# Carry an unfinished `metaray bench` between machines through this repository (the machines this
# project is developed on are replaced between sittings; only the repository survives).
#   bash benchmarks/inflight/carry.sh pack SUITE RUNS RESULTS    # RUNS/SUITE/<newest bench> -> benchmarks/inflight/SUITE/<bench>/
#   bash benchmarks/inflight/carry.sh unpack SUITE RUNS RESULTS  # back into RUNS and RESULTS; then
#   metaray bench benchmarks/suites/SUITE.yaml --resume --runs-dir RUNS --results-dir RESULTS
# Packed per trial: config.yaml, progress.jsonl, driver.json/.log, the latest checkpoint, the
# .commits.json (the code of every start) and the last 20 kB of its log; plus the bench's
# suite.json and any finished trial's result file. Tune's own state is not carried: the resumed
# bench finds the bench by its suite.json, finished trials report their files, the others continue
# their run directories. Replay buffers (PEARL) are far too large to carry this way.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
mode=$1 suite=$2 runs=$(realpath -m "$3") results=$(realpath -m "$4")
case $mode in
pack)
  ident=$(ls -t "$runs/$suite" | head -1)
  src=$runs/$suite/$ident dst=$here/$suite/$ident
  rm -rf "$here/$suite"; mkdir -p "$dst"
  cp "$results/$suite/$ident"/*.json "$dst/"
  for trial in "$src"/*/; do
    trial=${trial%/} name=$(basename "$trial")
    [ "$name" = tune ] && continue
    last=$(ls "$trial/checkpoints" 2>/dev/null | grep '^iter-' | sort | tail -1)
    [ -n "$last" ] || continue  # no checkpoint yet: the trial starts over anyway
    mkdir -p "$dst/$name/checkpoints"
    for f in config.yaml progress.jsonl driver.json driver.log; do [ ! -f "$trial/$f" ] || cp "$trial/$f" "$dst/$name/"; done
    cp -r "$trial/checkpoints/$last" "$dst/$name/checkpoints/"
    cp "$src/$name.commits.json" "$dst/"
    tail -c 20000 "$src/$name.log" > "$dst/$name.log"
  done
  du -sh "$dst" ;;
unpack)
  for packed in "$here/$suite"/*/; do
    packed=${packed%/} ident=$(basename "$packed")
    mkdir -p "$runs/$suite/$ident" "$results/$suite/$ident"
    cp -n "$packed"/*.json "$results/$suite/$ident/"
    rm -f "$results/$suite/$ident"/*.commits.json
    cp -rn "$packed"/*/ "$packed"/*.commits.json "$packed"/*.log "$runs/$suite/$ident/"
    echo "$runs/$suite/$ident"
  done ;;
*) echo "carry.sh: pack or unpack, not $mode" >&2; exit 2 ;;
esac
