#!/usr/bin/env bash
# Ask several questions of several scenes; one folder of outputs per pair, a CSV summary on stdout.
# Exit code: 0 if every question was answered, 1 otherwise (errors are reported per line on stderr).
set -uo pipefail
cd "$(dirname "$0")/.."
scenes=(examples/slovenia_s2.tif)
questions=(
  "What percentage of the image is covered by forest?"
  "What is the area of grassland in hectares?"
  "Does the forest border the grassland?"
  "How many forest regions are there?"
)
status=0
echo "scene,question,answer"
for scene in "${scenes[@]}"; do
  for i in "${!questions[@]}"; do
    out="results/$(basename "$scene" .tif)/q$i"
    if json=$(tscope ask "$scene" "${questions[$i]}" --out "$out" --overwrite --json -q); then
      answer=$(python3 -c 'import json,sys; print(json.load(sys.stdin)["answer"])' <<<"$json")
      printf '%s,"%s","%s"\n' "$scene" "${questions[$i]}" "$answer"
    else
      status=1
    fi
  done
done
exit $status
