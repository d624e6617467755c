#!/usr/bin/env bash
# Runs the rebuilt prequal-testbed over policies x scenarios x seeds (see README.md). Env: SEEDS, FAILING, LOAD, RUNS, OUT, LOG.
set -u
bin=/tmp/target-prequal-rs/release/prequal-testbed
out=${OUT:-/tmp/prequal-rs/out/grid.csv}
log=${LOG:-/tmp/prequal-rs/out/grid.log}
for seed in ${SEEDS:-1}; do
  for failing in ${FAILING:-0 2}; do
    while IFS= read -r run; do
      [ -z "$run" ] && continue
      echo "== $(date +%T) seed=$seed failing=$failing $run | $(cut -d' ' -f1-3 /proc/loadavg)" >> "$log"
      $bin $run --load ${LOAD:-0.9} --seed $seed --failing-servers $failing --csv "$out" 2>>"$log" | tail -1 >> "$log"
    done <<< "${RUNS:-"--policy p2c-ewma
--policy prequal
--policy prequal --probes-per-query 0.5 --piggyback"}"
  done
done
echo "DONE $(date +%T)" >> "$log"
