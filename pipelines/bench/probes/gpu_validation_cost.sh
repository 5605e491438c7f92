#!/usr/bin/env bash
# What validation costs at `paper` width, and how noisy it is: the GPU half of the champion-metric
# question (#18). On a CUDA machine, from the repo root, with a small synth dataset for val scenes:
#
#   bash pipelines/bench/probes/gpu_validation_cost.sh OUT DATA [MINUTES]
#
# 1. trains `paper` (cues on) for MINUTES (default 2.5) on the `flat` family, batch 64, EMA 0.999
#    (the preset's 0.9999 barely leaves the initial weights in a few minutes), evaluating with DDIM-25;
# 2. times a `paper` training step alone on the GPU, fp32 and bf16 (probes/step_cost.py);
# 3. scores that model free-running on 64 val scenes of DATA with validation's sampler (DDIM-25),
#    3 reseeded draws: the champion metric's noise and the seconds one validation costs;
# 4. scores the same first draw's scenes, cut to FULL_SCENES (default 8), with the preset's own sampler
#    (DDPM-1000) and with DDIM-25, scene for scene: what the cheap sampler changes, and the cost ratio.
# PRESET=tiny DEVICE=cpu FULL_STEPS=50 runs the same script on a CPU, to check it before a GPU session.
set -u
out=${1:?usage: gpu_validation_cost.sh OUT DATA [MINUTES]}
data=${2:?usage: gpu_validation_cost.sh OUT DATA [MINUTES]}
minutes=${3:-2.5}
device=${DEVICE:-cuda}
preset=${PRESET:-paper}
full_steps=${FULL_STEPS:-1000}
full_scenes=${FULL_SCENES:-8}
py=${PYTHON:-python3}
mkdir -p "$out/logs" "$out/ckpt"
export PYTHONUNBUFFERED=1 OMP_NUM_THREADS=1
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"  # the GPU machine runs the repository uninstalled
limit=$("$py" -c "print(round($minutes * 60 + 240))")
ddim25=(name=ddim steps=25 eta=0.0)

"$py" -c "import torch; print('torch', torch.__version__, 'cuda', torch.cuda.is_available(),
  torch.cuda.get_device_name() if torch.cuda.is_available() else 'cpu')" | tee "$out/logs/device.txt"
timeout "$limit" "$py" pipelines/bench/learning.py --device "$device" --threads 1 --render-workers 8 \
  --minutes "$minutes" --eval-every "$minutes" --batch 64 --family flat --preset "$preset" \
  --set train.ema_decay=0.999 sampler.name=ddim sampler.steps=25 sampler.eta=0.0 \
  --val-scenes 64 --save "$out/ckpt/$preset" --out "$out/train_$preset.jsonl" >"$out/logs/train.log" 2>&1
tail -n 3 "$out/logs/train.log"
model="$out/ckpt/$preset/checkpoint"
"$py" pipelines/bench/probes/step_cost.py --device "$device" --presets "$preset" --precision fp32 bf16 \
  --batch 64 --warmup 3 --timed 10 --json "$out/step_cost.json" >"$out/logs/step_cost.log" 2>&1
tail -n 2 "$out/logs/step_cost.log"
noise() {  # NAME SIZE DRAWS SAMPLER...
  local name=$1 size=$2 draws=$3
  shift 3
  "$py" pipelines/bench/probes/champion_noise.py --device "$device" --threads 4 --model "$model" --data "$data" \
    --pool 256 --sizes "$size" --draws "$draws" --sampler "$@" --json "$out/$name.json" \
    >"$out/logs/$name.log" 2>&1
  tail -n 1 "$out/logs/$name.log"
}
noise val64_ddim25 64 3 "${ddim25[@]}"
noise full_ddim25 "$full_scenes" 1 "${ddim25[@]}"
noise full_ddpm "$full_scenes" 1 name=ddpm steps="$full_steps" eta=1.0
tar -czf "$out/logs.tar.gz" -C "$out" logs && rm -rf "$out/logs" "$out/ckpt"
