#!/usr/bin/env bash
# Is it the diffusion head that puts an occluded object in layer 0? Three learning probes side by side
# on one GPU, the whole layer-by-layer task on the `flat` family, `tiny` with the cue module, batch 128,
# MINUTES of training each (default 3), then the full free-running evaluation on 128 val scenes:
#
#   bash pipelines/bench/probes/gpu_heads.sh OUT [MINUTES]      # on a CUDA machine, from the repo root
#
#   diffusion      the preset (diffusion head, DDIM-5, ensemble 3): round 5's configuration
#   deterministic  the same UNet and cues, one forward pass per layer (diffusion.mode=deterministic)
#   cue_weight4    the diffusion head with the cue losses weighted 4x (cues.weight=4)
#
# Each writes OUT/NAME.jsonl; logs end in OUT/logs.tar.gz. DEVICE=cpu runs it on a CPU (a dry run).
set -u
out=${1:?usage: gpu_heads.sh OUT [MINUTES]}
minutes=${2:-3}
device=${DEVICE:-cuda}
workers=${RENDER_WORKERS:-4}
py=${PYTHON:-python3}
mkdir -p "$out/logs"
export PYTHONUNBUFFERED=1 OMP_NUM_THREADS=1
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"  # the GPU machine runs the repository uninstalled
limit=$("$py" -c "print(round($minutes * 60 + 150))")

probe() {
  local name=$1
  shift
  timeout "$limit" "$py" pipelines/bench/learning.py --device "$device" --threads 1 \
    --render-workers "$workers" --minutes "$minutes" --eval-every "$minutes" --batch 128 --family flat \
    --preset tiny --quick --val-scenes 128 --out "$out/$name.jsonl" "$@" >"$out/logs/$name.log" 2>&1 &
}

"$py" -c "import torch; print('torch', torch.__version__, 'cuda', torch.cuda.is_available())" \
  | tee "$out/logs/device.txt"
probe diffusion
probe deterministic --set diffusion.mode=deterministic
probe cue_weight4 --set cues.weight=4
wait
tar -czf "$out/logs.tar.gz" -C "$out" logs && rm -rf "$out/logs"
for f in "$out"/*.jsonl; do echo "$(basename "$f" .jsonl): $(tail -n 1 "$f")"; done
