#!/usr/bin/env bash
# One-command GPU check: CUDA tests, inference at 512 (bf16, compiled and not), a short
# training benchmark, cohort throughput, and a two-GPU DDP run when two GPUs are present.
# Prints one JSON object on stdout (progress on stderr); designed to finish in < 5 minutes.
#
#   bash benchmarks/gpu_check.sh                 # from the repository root or anywhere
#   GPU_CHECK_OUT=/tmp/gpu bash benchmarks/gpu_check.sh   # keep every step's raw output
#
# Each step has its own time limit, cut to what is left of a total budget (default 280 s;
# a step that overruns is recorded as timed out, one with no time left as skipped, and
# the check goes on). Environment: PYTHON (default .venv/bin/python if present, else
# python3), GPU_CHECK_OUT (folder for raw outputs; default a temp folder),
# GPU_CHECK_SLICES (default 300), GPU_CHECK_BUDGET_S (default 280),
# GPU_CHECK_SKIP_COMPILE=1 (skip the compiled run).
set -u
cd "$(dirname "$0")/.."
if [ -n "${PYTHON:-}" ]; then PY=$PYTHON
elif [ -x .venv/bin/python ]; then PY=.venv/bin/python
else PY=python3; fi
OUT=${GPU_CHECK_OUT:-$(mktemp -d -t gpu_check.XXXXXX)}
mkdir -p "$OUT"
SLICES=${GPU_CHECK_SLICES:-300}
export NAPARI_COVID_SEG_BENCH_CACHE="$OUT/cache"   # one phantom made, reused by every step
export PYTHONUNBUFFERED=1
T_START=$(date +%s)
DEADLINE=$((T_START + ${GPU_CHECK_BUDGET_S:-280}))

# step NAME LIMIT_S CMD...: run CMD with a time limit; stdout -> NAME.out, stderr -> NAME.err
step() {
    local name=$1 limit=$2
    shift 2
    local t0 t1 rc left
    left=$((DEADLINE - $(date +%s)))
    if [ "$left" -lt 20 ]; then
        echo "{\"rc\": null, \"seconds\": 0, \"skipped\": \"no time left\"}" >"$OUT/$name.meta"
        : >"$OUT/$name.out"; : >"$OUT/$name.err"
        echo "gpu_check: $name skipped (budget spent)" >&2
        return
    fi
    [ "$left" -lt "$limit" ] && limit=$left
    echo "gpu_check: $name (limit ${limit} s) ..." >&2
    t0=$(date +%s.%N)
    timeout --kill-after=10 "$limit" "$@" >"$OUT/$name.out" 2>"$OUT/$name.err"
    rc=$?
    t1=$(date +%s.%N)
    echo "{\"rc\": $rc, \"seconds\": $(awk "BEGIN {print $t1 - $t0}")}" >"$OUT/$name.meta"
    echo "gpu_check: $name rc=$rc" >&2
}

nvidia-smi --query-gpu=name,memory.total,driver_version,compute_cap --format=csv,noheader \
    >"$OUT/gpus.txt" 2>/dev/null || true
NGPU=$("$PY" -c "import torch; print(torch.cuda.device_count())" 2>/dev/null || echo 0)

step cuda_tests 120 "$PY" -m pytest -m cuda tests/unit/test_cuda.py -q -p no:cacheprovider \
    --junitxml="$OUT/cuda_tests.xml"
step inference_bf16 150 "$PY" benchmarks/bench_inference.py --device cuda --sizes 512 \
    --slices "$SLICES" --precision bf16 --batch-size auto --repeats 2 --baseline-slices 32 \
    --from-disk
if [ "${GPU_CHECK_SKIP_COMPILE:-0}" != 1 ]; then
    step inference_bf16_compiled 180 "$PY" benchmarks/bench_inference.py --device cuda \
        --sizes 512 --slices "$SLICES" --precision bf16 --batch-size auto --repeats 2 \
        --baseline-slices 8 --compile
fi
step train 60 "$PY" benchmarks/bench_train.py --device cuda --steps 20 --warmup 3 --size 256
if [ "$NGPU" -ge 2 ]; then
    step ddp_1gpu 60 "$PY" benchmarks/bench_ddp.py --device cuda --epochs 2
    step ddp_2gpu 90 "$PY" -m torch.distributed.run --standalone --nproc_per_node 2 \
        benchmarks/bench_ddp.py --device cuda --epochs 2
fi
step cohort 90 "$PY" benchmarks/bench_cohort.py --device cuda --size 512 --slices "$SLICES" \
    --cases 4 --repeats 1

"$PY" - "$OUT" "$NGPU" "$T_START" <<'EOF'
import json, sys, time
from pathlib import Path
import xml.etree.ElementTree as ET

out, ngpu, t_start = Path(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3])


def last_json(text):
    """The last JSON object in a step's stdout (benchmarks print one, maybe indented)."""
    text = text.strip()
    for start in [i for i, c in enumerate(text) if c == "{"]:
        try:
            return json.loads(text[start:])
        except ValueError:
            continue
    return None


report = {
    "gpus": [ln.strip() for ln in (out / "gpus.txt").read_text().splitlines() if ln.strip()]
    if (out / "gpus.txt").is_file() else [],
    "gpu_count": ngpu,
    "raw_outputs": str(out),
    "steps": {},
}
for meta in sorted(out.glob("*.meta")):
    name = meta.stem
    info = json.loads(meta.read_text())
    info["timed_out"] = info["rc"] in (124, 137)
    if info.get("skipped"):
        report["steps"][name] = info
        continue
    stdout = (out / f"{name}.out").read_text(errors="replace")
    stderr = (out / f"{name}.err").read_text(errors="replace")
    if name == "cuda_tests":
        try:
            suite = ET.parse(out / "cuda_tests.xml").getroot()
            suite = suite.find("testsuite") if suite.tag == "testsuites" else suite
            info["result"] = {k: int(suite.get(k, 0)) for k in ("tests", "failures", "errors", "skipped")}
        except (OSError, ET.ParseError):
            info["result"] = None
        info["tail"] = stdout.strip().splitlines()[-15:]
    else:
        info["result"] = last_json(stdout)
        if info["result"] is None or info["rc"] != 0:
            info["tail"] = (stdout + stderr).strip().splitlines()[-15:]
    report["steps"][name] = info

# headline numbers against the issue's targets (H100/H200: >= 5,000 slices/s at 512,
# 300 x 512 x 512 volume to mask in <= 0.1 s of compute)
head = {}
for name in ("inference_bf16", "inference_bf16_compiled"):
    res = (report["steps"].get(name) or {}).get("result") or {}
    rec = (res.get("records") or [{}])[0]
    if rec and "error" not in rec:
        head[name] = {
            "model_slices_per_s": rec.get("model_slices_per_s"),
            "volume_slices_per_s": rec.get("slices_per_s"),
            "volume_seconds": rec.get("volume_seconds"),
            "batch_size": rec.get("batch_size"),
            "peak_device_memory_mb": rec.get("peak_device_memory_mb"),
            "disk": rec.get("disk"),
        }
train = (report["steps"].get("train") or {}).get("result") or {}
for key in ("cuda_fast", "cuda_fast_auto", "cuda_paper"):
    if key in train.get("results", {}):
        head[f"train_{key}_samples_per_s"] = train["results"][key]["samples_per_s"]
cohort = (report["steps"].get("cohort") or {}).get("result") or {}
if cohort:
    head["cohort_volumes_per_s"] = [r["volumes_per_s"] for r in cohort.get("records", [])]
    head["cohort_prefetch_speedup"] = cohort.get("prefetch_speedup")
one = (report["steps"].get("ddp_1gpu") or {}).get("result") or {}
two = (report["steps"].get("ddp_2gpu") or {}).get("result") or {}
if one and two:
    head["ddp_scaling_2gpu"] = round(two["samples_per_s"] / one["samples_per_s"], 3)
    head["ddp_weights_identical"] = two.get("weights_identical")
report["headline"] = head
report["total_seconds"] = round(time.time() - t_start, 1)
print(json.dumps(report, indent=2))
EOF
