#!/usr/bin/env bash
# The GPU proof of issue 5 in one call on a lent machine with one NVIDIA GPU:
#   1. installs the carried wheels to /tmp/site;
#   2. tests/gpu: our ComfyUI stand-in on CUDA as a local: target, `qpatch apply --measure`,
#      `qpatch verify --workflow`, `qpatch rollback`, for the grad-on and inference nodes;
#   3. scripts/bench_vram.py at the reference size, in whatever time is left;
#   4. a short summary with the comparison tables.
# Everything lands under $OUT (gpu-tests.log, gpu-tests/, bench.txt, bench.json).
#   needs: the checkout and .whl/ as scripts/prepare-device lays it out (Python 3.12 wheels of
#   what qpatch needs beyond torch, nvidia-ml-py, pytest, click, pyyaml).
#   QPATCH_PROOF_BUDGET_S (default 500): the whole script ends within it; the bench gets
#   what the tests leave, the tests come first because they are the proof.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-$PWD/proof-out}
export OUT
mkdir -p "$OUT"
BUDGET_S=${QPATCH_PROOF_BUDGET_S:-500}
MIN_BENCH_S=60
say() { printf '\n== [%3d s] %s\n' "$SECONDS" "$*"; }

say "wheels"
if compgen -G ".whl/*.whl" >/dev/null; then
  # --no-deps: exactly the carried wheels, nothing resolved against an index we cannot reach
  python3 -m pip install --quiet --disable-pip-version-check --no-index --no-deps \
    --target /tmp/site .whl/*.whl >"$OUT/pip.log" 2>&1 \
    || { echo "gpu_proof: installing .whl failed:"; tail -5 "$OUT/pip.log"; }
fi
export PYTHONPATH="/tmp/site:$PWD${PYTHONPATH:+:$PYTHONPATH}"

say "machine"
nvidia-smi >"$OUT/nvidia-smi.txt" 2>&1
head -12 "$OUT/nvidia-smi.txt"
python3 -c 'import sys, torch; print(f"python {sys.version.split()[0]}, torch {torch.__version__}, cuda {torch.cuda.is_available()}")'

say "tests/gpu (ComfyUI through qpatch apply / verify / rollback)"
# SIGINT at the limit: pytest then rolls the target back and stops ComfyUI (fixture teardown).
tests_limit=$((BUDGET_S - SECONDS - MIN_BENCH_S))
timeout -s INT -k 60 "$((tests_limit > 60 ? tests_limit : 60))" \
  python3 -m pytest tests/gpu -m gpu -s -p no:cacheprovider 2>&1 | tee "$OUT/gpu-tests.log"
tests_rc=${PIPESTATUS[0]}

left=$((BUDGET_S - SECONDS))
bench_rc=skipped
if ((left >= MIN_BENCH_S)); then
  say "scripts/bench_vram.py (reference size on CUDA; ${left} s left)"
  python3 scripts/bench_vram.py --deadline-s "$((left - 15))" --child-timeout 150 \
    --json-file "$OUT/bench.json" 2>&1 | tee "$OUT/bench.txt"
  bench_rc=${PIPESTATUS[0]}
else
  say "scripts/bench_vram.py skipped: ${left} s left"
fi

say "summary"
for f in "$OUT"/gpu-tests/{grad_on-comparison,inference-comparison,floor-vs-patched-grad-on}.txt; do
  [ -f "$f" ] && { cat "$f"; echo; }
done
echo "gpu tests: exit $tests_rc ($(grep -E '^=+ .*(passed|failed|skipped|error)' "$OUT/gpu-tests.log" | tail -1 | tr -d '='))"
if [ -f "$OUT/bench.json" ]; then
  python3 - "$OUT/bench.json" "$bench_rc" <<'PY'
import json, sys
rows = json.load(open(sys.argv[1]))["rows"]
failed = sum("error" in r for r in rows)
skipped = sum("skipped" in r for r in rows)
print(f"bench: exit {sys.argv[2]}, {len(rows) - failed - skipped} of {len(rows)} rows measured, "
      f"{skipped} skipped (time budget), {failed} failed")
PY
else
  echo "bench: $bench_rc"
fi
echo "files in $OUT: $(cd "$OUT" && find . -type f | sort | tr '\n' ' ')"
[ "$tests_rc" = 0 ] && [ "$bench_rc" = 0 ]
