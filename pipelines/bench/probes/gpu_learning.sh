#!/usr/bin/env bash
# The GPU session's learning measurements: what the 2-core CPU cannot run in a session.
#
#   bash pipelines/bench/probes/gpu_learning.sh OUT [MINUTES]      # on a CUDA machine, from the repo root
#
# Four learning probes share the GPU for MINUTES of training each (default 4.5), fed by render
# worker processes (16 cores):
#   minimal_cues / minimal_plain  the model issue's minimal task (2 flat objects, layer 0, deterministic
#                                 head), tiny with and without the occlusion-cue module, batch 128;
#   flat_tiny / flat_small        the whole layer-by-layer diffusion task on the `flat` family at tiny
#                                 and small width, batch 128, with the full free-running evaluation
#                                 at the end;
# then, alone on the GPU, training step cost fp32 vs bf16 (probes/step_cost.py) and sampling cost per
# image (pipelines/bench/sampling.py) for tiny, small and paper (PRESETS=...).
# Each probe writes OUT/NAME.jsonl (one row per evaluation); the logs and the tiny runs' EMA
# checkpoints end in OUT/logs.tar.gz and OUT/checkpoints.tar.gz. The jobs run side by side, so s_per_step is a shared-GPU figure.
# DEVICE=cpu runs the same script on a CPU (to check it before a GPU session).
set -u
out=${1:?usage: gpu_learning.sh OUT [MINUTES]}
minutes=${2:-4.5}
device=${DEVICE:-cuda}
py=${PYTHON:-python3}
mkdir -p "$out/ckpt"
export PYTHONUNBUFFERED=1 OMP_NUM_THREADS=1
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"  # the GPU machine runs the repository uninstalled
limit=$("$py" -c "print(round($minutes * 60 + 150))")  # training + evaluations, then killed
mkdir -p "$out/logs"

probe() {
  local name=$1 workers=$2
  shift 2
  timeout "$limit" "$py" pipelines/bench/learning.py --device "$device" --threads 1 \
    --render-workers "$workers" --minutes "$minutes" --eval-every 1 --batch 128 \
    --out "$out/$name.jsonl" "$@" >"$out/logs/$name.log" 2>&1 &
}

"$py" -c "import torch; print('torch', torch.__version__, 'cuda', torch.cuda.is_available(),
  torch.cuda.get_device_name() if torch.cuda.is_available() else 'cpu')" | tee "$out/logs/device.txt"
probe minimal_cues 2 --minimal --preset tiny --val-scenes 256 --save "$out/ckpt/minimal_cues"
probe minimal_plain 2 --minimal --preset tiny --val-scenes 256 --set cues.enabled=false
probe flat_tiny 3 --family flat --preset tiny --quick --val-scenes 128 --save "$out/ckpt/flat_tiny"
probe flat_small 3 --family flat --preset small --quick --val-scenes 128
wait
presets=${PRESETS:-tiny small paper}
# shellcheck disable=SC2086
"$py" pipelines/bench/probes/step_cost.py --device "$device" --presets $presets --precision fp32 bf16 \
  --batch 64 --warmup 3 --timed 10 --json "$out/step_cost.json" >"$out/logs/step_cost.log" 2>&1
# shellcheck disable=SC2086
"$py" -m pipelines.bench.sampling --device "$device" --presets $presets --images 16 \
  --json "$out/sampling.json" >"$out/logs/sampling.log" 2>&1
# logs and the checkpoints (not the resumable optimiser state) in one archive each
tar -czf "$out/checkpoints.tar.gz" -C "$out" $(cd "$out" && ls -d ckpt/*/checkpoint 2>/dev/null)
tar -czf "$out/logs.tar.gz" -C "$out" logs
rm -rf "$out/ckpt" "$out/logs"
tail -n 2 "$out"/*.jsonl
