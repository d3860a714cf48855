#!/usr/bin/env bash
# Build a virtual environment in which the `ddranking` package (PyPI 0.2.0) runs next to our
# torch. Why a second environment: ddranking pins numpy<2 and scipy<1.16, ours has numpy 2.
# Why no torch in it: torch is 5.5 GB and pip would fetch a different build; instead a .pth file
# appends our venv's site-packages to sys.path, so torch/torchvision come from ours while the
# env's own numpy<2, scipy, timm, kornia, pandas (earlier on sys.path) win.
#
# Usage: benchmarks/ddranking/make_env.sh [TARGET [OUR_VENV]]
#        (defaults: .venv-ddranking and .venv next to the repository root)
# Idempotent: when TARGET already imports torch, numpy<2 and ddranking at the pinned versions,
# it does nothing. Needs PyPI (pip's usual index) the first time.
set -euo pipefail
root="$(cd "$(dirname "$0")/../.." && pwd)"
target="${1:-$root/.venv-ddranking}"
ours="${2:-$root/.venv}"
target="$(mkdir -p "$(dirname "$target")" && cd "$(dirname "$target")" && pwd)/$(basename "$target")"

# Pinned so that CI gets what was checked here (scipy<1.16 and numpy<2 are ddranking's pins;
# timm, kornia and ddranking itself go in with --no-deps so that pip never pulls a torch).
PINS=(numpy==1.26.4 scipy==1.15.3 pandas==3.0.6 tqdm==4.70.1 kornia-rs==0.2.0 packaging==26.4
      pyyaml==6.0.4 huggingface-hub==2.5.0 safetensors==0.8.0)
NODEPS=(ddranking==0.2.0 timm==1.0.31 kornia==0.9.2)
STAMP="${PINS[*]} ${NODEPS[*]}"

ours_py="$ours/bin/python"
[ -x "$ours_py" ] || { echo "make_env.sh: no python at $ours_py (run 'make install')" >&2; exit 2; }
ours_site="$("$ours_py" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"

check() {
  [ -x "$target/bin/python" ] && [ "$(cat "$target/.ddranking-stamp" 2>/dev/null)" = "$STAMP" ] &&
    "$target/bin/python" - <<'EOF'
import ddranking, numpy, scipy, timm, torch, torchvision  # noqa: F401
assert numpy.__version__.startswith("1."), numpy.__version__
assert numpy.__file__.startswith(__import__("sys").prefix), numpy.__file__  # its own numpy
a = numpy.arange(6, dtype=numpy.float32).reshape(2, 3)
x = torch.from_numpy(a)  # numpy 1.x <-> torch interop, both ways
assert numpy.array_equal((x @ x.T).numpy(), a @ a.T) and (a @ a.T).sum() == 83.0
EOF
}

if check >/dev/null 2>&1; then
  echo "make_env.sh: $target is ready"
  exit 0
fi

start=$(date +%s)
# the same interpreter as ours (torch's compiled extension is built for that Python)
[ -x "$target/bin/python" ] || "$ours_py" -m venv "$target"
site="$("$target/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
rm -f "$site/zz_prism_torch.pth"   # pip must not see our numpy 2 / torch while resolving
"$target/bin/python" -m pip install -q --disable-pip-version-check "${PINS[@]}"
"$target/bin/python" -m pip install -q --disable-pip-version-check --no-deps "${NODEPS[@]}"
# a plain path line: appended after the env's own site-packages, our .pth files not processed
echo "$ours_site" > "$site/zz_prism_torch.pth"
echo "$STAMP" > "$target/.ddranking-stamp"
check
echo "make_env.sh: built $target in $(( $(date +%s) - start )) s" \
     "($(du -sh "$target" | cut -f1))"
