#!/usr/bin/env bash
# benchmarks/gpu_check.py on this project's device machines (see that file's docstring).
#
#   bash benchmarks/gpu_check.sh fetch      # HERE (pip works here): the wheels the GPU machine lacks → .whl/
#   bash benchmarks/gpu_check.sh [ARGS]     # THERE (device tool): install .whl/ into /tmp/site, run gpu_check.py ARGS,
#                                           # copy docs/gpu_check_<card>.json and the full log into $OUT
#
# The device image has python3 3.12 with torch, triton, numpy, scipy, matplotlib, tqdm, ... but not torchrl,
# tensordict, hydra, ogbench, mujoco, dm_control, gymnasium; nothing can be downloaded there. The wheels are
# for CPython 3.12 / manylinux x86-64 (≈ 36 MB; dm_control is repacked without its locomotion and suite
# assets, which OGBench's manipulation envs never load, to stay under the tool's 64 MiB). The package
# itself runs from the working tree (PYTHONPATH), not pip-installed.
set -uo pipefail
cd "$(dirname "$0")/.."

if [ "${1:-}" = fetch ]; then
  set -e
  mkdir -p .whl
  grep -qs '^/.whl/$' .git/info/exclude || echo /.whl/ >> .git/info/exclude
  plat=(--platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_24_x86_64
        --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 --platform manylinux1_x86_64)
  # Versions: those this project is tested with (pyproject.toml / pip freeze here).
  python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp "${plat[@]}" -d .whl \
    torchrl==0.14.1 tensordict==0.14.3 hoptorch==0.1.4 pyvers==0.2.3 orjson importlib_metadata \
    hydra-core==1.3.8 omegaconf==2.3.0 ogbench==1.2.2 mujoco==4.0.0 mujoco-core==4.0.0 \
    dm_control==1.0.50 dm-env dm-tree labmaze glfw pyopengl gymnasium==1.4.0 farama-notifications
  # mujoco-studio (the GUI, 13 MB) is left out on purpose; antlr4 4.9.3 (hydra's pin) exists only as an sdist.
  python3 -m pip wheel -q --no-deps -w .whl antlr4-python3-runtime==4.9.3
  python3 - <<'EOF'
import glob, os, zipfile
src = glob.glob(".whl/dm_control-*.whl")[0]
tmp = src + ".tmp"
with zipfile.ZipFile(src) as zin, zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED) as zout:
    for item in zin.infolist():
        if item.filename.startswith(("dm_control/locomotion/", "dm_control/suite/")):
            continue  # assets OGBench's manipulation envs never load (≈ 50 MB)
        zout.writestr(item, zin.read(item.filename))
os.replace(tmp, src)
EOF
  du -sh .whl
  exit 0
fi

if [ -d .whl ] && ! python3 -c "import torchrl, hydra, ogbench" 2>/dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    || { echo "gpu_check.sh: installing .whl/ failed"; exit 4; }
  export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
fi
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1 MUJOCO_GL=${MUJOCO_GL:-egl}
log=${OUT:-/tmp}/gpu_check_full.log
python3 benchmarks/gpu_check.py --log "$log" --work-dir /tmp/gpu_check_work "$@"
rc=$?
if [ -n "${OUT:-}" ]; then
  cp docs/gpu_check_*.json "$OUT"/ 2>/dev/null
  cp /tmp/gpu_check_work/*.json "$OUT"/ 2>/dev/null   # the stage JSONs (sampler, update_bench, seeds, update_check)
fi
exit $rc
