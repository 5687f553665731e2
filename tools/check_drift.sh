#!/usr/bin/env bash
# Drift check, for whoever bumps the pins (never part of CI): install the NEWEST releases of the peers
# the tests and benchmarks compare against (vector-quantize-pytorch, faiss-cpu, triton) beside the
# locked rest in a scratch venv, run the parity tests and the quick benchmarks against them, and print
# what changed: versions, the peer's source diff, failing tests, benchmark medians.
#
#   bash tools/check_drift.sh                  # scratch venv in a temporary folder
#   DRIFT_DIR=/some/dir bash tools/check_drift.sh
#
# To bump: edit the versions in requirements/test.lock and the test/bench extras of pyproject.toml
# together (tests/test_packaging.py checks they agree), then make the parity tests pass again.
set -uo pipefail
cd "$(dirname "$0")/.."
peers="vector-quantize-pytorch faiss-cpu triton"
scratch=${DRIFT_DIR:-$(mktemp -d)}
echo "== scratch venv: $scratch"
python3 -m venv "$scratch/venv"
py="$scratch/venv/bin/python"
grep -v -E '^(vector-quantize-pytorch|faiss-cpu|triton)==' requirements/test.lock > "$scratch/rest.lock"
"$py" -m pip install -q -c "$scratch/rest.lock" torch==2.13.0 setuptools wheel ninja || exit 1
"$py" -m pip install -q -c "$scratch/rest.lock" --no-build-isolation -e ".[test,bench]" || exit 1
# shellcheck disable=SC2086
"$py" -m pip install -q -U -c "$scratch/rest.lock" $peers || exit 1

echo "== versions (pinned -> newest)"
for p in $peers; do
  pinned=$(grep -E "^$p==" requirements/test.lock | cut -d= -f3)
  newest=$("$py" -c "import importlib.metadata as m; print(m.version('$p'))")
  mark=$([ "$pinned" = "$newest" ] && echo "same" || echo "CHANGED")
  echo "  $p: $pinned -> $newest  ($mark)"
  if [ "$p" = vector-quantize-pytorch ] && [ "$pinned" != "$newest" ]; then
    mkdir -p "$scratch/src/old" "$scratch/src/new"
    "$py" -m pip download -q --no-deps "$p==$pinned" -d "$scratch/src/old" && \
      (cd "$scratch/src/old" && python3 -m zipfile -e ./*.whl .)
    "$py" -m pip download -q --no-deps "$p==$newest" -d "$scratch/src/new" && \
      (cd "$scratch/src/new" && python3 -m zipfile -e ./*.whl .)
    echo "  source diff of vector_quantize_pytorch/ ($pinned -> $newest), full diff in $scratch/peer.diff:"
    diff -ru "$scratch/src/old/vector_quantize_pytorch" "$scratch/src/new/vector_quantize_pytorch" > "$scratch/peer.diff"
    diffstat "$scratch/peer.diff" 2>/dev/null || grep -c '^[-+][^-+]' "$scratch/peer.diff" | sed 's/^/    changed lines: /'
  fi
done

echo "== parity tests against the newest peers"
SGCVQ_PEERS_UNPINNED=1 "$py" -m pytest -q -p no:cacheprovider tests/test_compat_vq.py tests/test_compat.py \
  tests/test_quantizer_parity.py tests/test_triton.py 2>&1 | tail -25

echo "== quick benchmarks against the newest peers"
# every provider of the two files (ours beside the peers), so the ratios can be read off side by side
SGCVQ_PEERS_UNPINNED=1 SGCVQ_BENCH_QUICK=1 "$py" -m pytest -q -p no:cacheprovider benchmarks/test_bench_quantizer.py \
  benchmarks/test_bench_ops.py --benchmark-columns=median 2>&1 | grep -v "^WARNING" | tail -120
echo "== done: scratch venv and diffs in $scratch"
