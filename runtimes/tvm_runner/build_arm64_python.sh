#!/usr/bin/env bash
# Build an emulated aarch64 Python that can run `python -m tvm.exec.rpc_server` under
# qemu-user on an x86_64 host (for the RPC deploy-and-run test of the rpi4/rpi5 artefacts).
#
#   runtimes/tvm_runner/build_arm64_python.sh [CACHE]      (default CACHE: ~/.cache/adntn)
#
# Result (what adntn_export.tvm_backend.emulated looks for):
#   CACHE/arm64-python/rootfs/          Debian bookworm arm64 minbase + python3.11 (debootstrap
#                                       --foreign; every downloaded .deb unpacked, nothing run)
#   CACHE/arm64-python/site-packages/   aarch64 cp311 wheels: apache-tvm, apache-tvm-ffi (same
#                                       versions as the host), numpy, ml_dtypes, psutil,
#                                       tornado, cloudpickle, typing_extensions
#   CACHE/arm64-python/runtime-site/    `pip install ./runtimes` for aarch64 (adntn_runtime with
#                                       the aarch64 wheels of numpy, onnx, onnxruntime,
#                                       opt_einsum): the torch-free, TVM-free device runtime
#   CACHE/arm64-python/READY            written last
#
# Run the server with (no chroot, no binfmt_misc needed):
#   TVM_USE_RUNTIME_LIB=1 PYTHONPATH=CACHE/arm64-python/site-packages \
#     qemu-aarch64-static -L CACHE/arm64-python/rootfs \
#     CACHE/arm64-python/rootfs/usr/bin/python3.11 -m tvm.exec.rpc_server ...
#
# Needs: debootstrap, qemu-user-static (apt), network access to a Debian mirror and to the
# Python package index (pip download). Takes a few minutes; ~400 MB on disk.
set -euo pipefail

CACHE="${1:-${ADNTN_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/adntn}}"
OUT="$CACHE/arm64-python"
ROOT="$OUT/rootfs"
SITE="$OUT/site-packages"
MIRROR="${DEBIAN_MIRROR:-http://deb.debian.org/debian}"
PY="${PYTHON:-python3}"

for tool in debootstrap qemu-aarch64-static dpkg-deb; do
  command -v "$tool" >/dev/null || { echo "missing $tool (apt-get install debootstrap qemu-user-static)" >&2; exit 2; }
done

rm -f "$OUT/READY"
mkdir -p "$OUT"
if [ ! -x "$ROOT/usr/bin/python3.11" ]; then
  rm -rf "$ROOT"
  debootstrap --arch=arm64 --foreign --variant=minbase \
    --include=python3.11-minimal,libpython3.11-stdlib,libffi8,libexpat1,zlib1g,libbz2-1.0,liblzma5,libssl3,libsqlite3-0,libuuid1,libncursesw6,libtinfo6,libreadline8 \
    bookworm "$ROOT" "$MIRROR"
  # --foreign only unpacks the base set; unpack the --include'd packages too (no maintainer
  # scripts are run: nothing here needs configuring to run python under qemu-user).
  for deb in "$ROOT"/var/cache/apt/archives/*.deb; do
    dpkg-deb -x "$deb" "$ROOT"
  done
fi

TVM_V="$("$PY" -c 'from importlib.metadata import version; print(version("apache-tvm"))')"
FFI_V="$("$PY" -c 'from importlib.metadata import version; print(version("apache-tvm-ffi"))')"
WHEELS="$OUT/wheels"
mkdir -p "$WHEELS"
"$PY" -m pip download --no-deps --only-binary=:all: --platform manylinux_2_28_aarch64 \
  --platform manylinux2014_aarch64 --platform manylinux_2_17_aarch64 \
  --python-version 3.11 --implementation cp -d "$WHEELS" \
  "apache-tvm==$TVM_V" "apache-tvm-ffi==$FFI_V" "numpy<2.3" ml_dtypes psutil tornado \
  cloudpickle "typing_extensions>=4.13"
rm -rf "$SITE"
mkdir -p "$SITE"
for whl in "$WHEELS"/*.whl; do
  # the TVM compiler library (240 MB) is not needed by an RPC server: runtime only
  "$PY" - "$whl" "$SITE" <<'EOF'
import sys, zipfile
whl, dest = sys.argv[1], sys.argv[2]
with zipfile.ZipFile(whl) as zf:
    names = [n for n in zf.namelist()
             if not n.startswith(("tvm/3rdparty/", "tvm/include/", "tvm/src/"))
             and not n.endswith("libtvm_compiler.so")]
    zf.extractall(dest, names)
EOF
done

# The torch-free runtime as a Pi user installs it (`pip install ./runtimes`), for aarch64:
# host pip resolves and unpacks the aarch64 wheels (the emulated Python has no pip).
REPO="$(cd "$(dirname "$0")/../.." && pwd)"
RT_SITE="$OUT/runtime-site"
rm -rf "$RT_SITE"
echo "installing ./runtimes (adntn_runtime + aarch64 numpy/onnx/onnxruntime) into $RT_SITE"
# onnxruntime >= 1.28 aarch64 wheels die with SIGSEGV at import under qemu-user 7.2 (Debian
# bookworm's qemu-user-static; 1.27.0 imports and runs): the emulated device pins 1.27.0,
# the rest as constraints.txt pins it. A real Pi takes whatever `pip install ./runtimes` picks.
EMU_ORT="${EMULATED_ONNXRUNTIME:-onnxruntime==1.27.0}"
CONSTRAINTS=()
if [ -f "$REPO/constraints.txt" ]; then
  grep -v '^onnxruntime' "$REPO/constraints.txt" > "$OUT/constraints-emulated.txt"
  CONSTRAINTS=(-c "$OUT/constraints-emulated.txt")
fi
"$PY" -m pip install -q --no-compile --target "$RT_SITE" --only-binary=:all: \
  --platform manylinux_2_28_aarch64 --platform manylinux2014_aarch64 \
  --platform manylinux_2_17_aarch64 --python-version 3.11 --implementation cp \
  "${CONSTRAINTS[@]}" numpy onnx "$EMU_ORT" opt_einsum
# (built from a copy: an in-tree build would leave build/ and *.egg-info in the checkout)
RT_SRC="$(mktemp -d)"
cp -r "$REPO/runtimes/pyproject.toml" "$REPO/runtimes/adntn_runtime" "$RT_SRC/"
"$PY" -m pip install -q --no-compile --no-deps --no-build-isolation --upgrade \
  --target "$RT_SITE" "$RT_SRC"
rm -rf "$RT_SRC"

echo "checking: import tvm under qemu-aarch64"
TVM_USE_RUNTIME_LIB=1 PYTHONPATH="$SITE" qemu-aarch64-static -L "$ROOT" "$ROOT/usr/bin/python3.11" \
  -c 'import platform, tvm, tvm.rpc.server; print(platform.machine(), tvm.__version__)'
echo "checking: import adntn_runtime (onnxruntime) under qemu-aarch64"
PYTHONPATH="$RT_SITE" qemu-aarch64-static -L "$ROOT" "$ROOT/usr/bin/python3.11" \
  -c 'import platform, onnxruntime, adntn_runtime; print(platform.machine(), onnxruntime.__version__)'
date -u +%FT%TZ > "$OUT/READY"
echo "ready: $OUT"
