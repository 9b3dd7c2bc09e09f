#!/bin/bash
# make test against the suite of an older commit, in the same window, alternating (#23).
# The host's speed drifts from hour to hour, so the two are timed in pairs.
#
#   bash benchmarks/test_time_paired.sh [OLD_COMMIT] [PAIRS]      (defaults: cb7c8c3, 2)
#
# The old suite runs from a clone in a temporary folder with its own test command
# (pytest -q -n 2 --doctest-modules tests src/refusalstats, as its Makefile had it), this
# checkout's .venv, and PYTHONPATH pointing at the clone's src (refusalstats.inference is
# linked in, as the package-dir mapping does for an install). Run from the repository root.
set -u
old=${1:-cb7c8c3}
pairs=${2:-2}
root=$(pwd)
tmp=$(mktemp -d)
git clone -q "$root" "$tmp/old" && git -C "$tmp/old" checkout -q "$old"
ln -s ../../inference "$tmp/old/src/refusalstats/inference"
echo "| pair | $old | make test | ratio |"
echo "|---|---:|---:|---:|"
for i in $(seq "$pairs"); do
  s=$(date +%s.%N)
  (cd "$tmp/old" && PYTHONPATH="$tmp/old/src" "$root/.venv/bin/python" -m pytest -q -n 2 \
      --doctest-modules tests src/refusalstats > "$tmp/old_$i.log" 2>&1)
  e=$(date +%s.%N); a=$(echo "$e - $s" | bc)
  s=$(date +%s.%N)
  make --no-print-directory -C "$root" test > "$tmp/new_$i.log" 2>&1
  e=$(date +%s.%N); b=$(echo "$e - $s" | bc)
  printf "| %d | %.1f s | %.1f s | %.2f |\n" "$i" "$a" "$b" "$(echo "$b / $a" | bc -l)"
  echo "  old: $(tail -1 "$tmp/old_$i.log")" >&2
  echo "  new: $(tail -1 "$tmp/new_$i.log")" >&2
done
rm -rf "$tmp"
