#!/usr/bin/env bash
# TRAK's projector for the LESS baseline of grad_throughput.py: `traker` and its CUDA extension
# `fast_jl`, built from their PyPI sdists into a folder to put on PYTHONPATH.
#
#   bash benchmarks/build_fast_jl.sh FILES TARGET [PYTHON]
#
# FILES: a folder holding the sdists and CUDA 13.0 toolchain wheels below; whatever is missing is
# fetched with `pip download` (so run it once where PyPI is reachable, then carry FILES to a
# machine that has none). TARGET: where fast_jl and trak are installed. PYTHON: the interpreter
# whose torch (a CUDA build) the extension is built against (default python3).
#
# fast_jl 0.1.3 is an sdist only, and its setup.py pins TORCH_CUDA_ARCH_LIST="7.0+PTX", which
# CUDA 13 cannot target: the build uses $TORCH_CUDA_ARCH_LIST (default 9.0, H100/H200). No CUDA
# toolkit is needed: nvcc, cicc and the compiler's headers come from NVIDIA's PyPI wheels (about
# 100 MB), the runtime, cuBLAS, cuSPARSE, cuSOLVER and cuRAND headers (which torch's CUDA headers
# include) from the nvidia packages a pip-installed CUDA torch already has.
set -euo pipefail
files=$(realpath -m "$1"); target=$(realpath -m "$2"); python=${3:-python3}
wheels=("fast-jl==0.1.3" "traker==0.3.2" "nvidia-cuda-nvcc==13.0.88" "nvidia-nvvm==13.0.88" "nvidia-cuda-crt==13.0.88"
        "nvidia-cuda-cccl==13.0.85")
mkdir -p "$files" "$target"
for spec in "${wheels[@]}"; do
  stem=$(echo "${spec%%==*}" | tr - _); version=${spec##*==}
  ls "$files"/"$stem"-"$version"[.-]* >/dev/null 2>&1 && continue
  if [[ $stem == fast_jl || $stem == traker ]]; then  # sdists: pip download would try to build them
    url=$(curl -fsS "https://pypi.org/simple/${spec%%==*}/" | grep -o "https://[^\"#]*/$stem-$version.tar.gz" | head -1)
    curl -fsS -o "$files/$stem-$version.tar.gz" "$url"
  else
    "$python" -m pip download -q --no-deps -d "$files" "$spec"
  fi
done
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
"$python" -m pip install -q --no-deps --target "$work/tk" "$files"/nvidia_*.whl
home=$work/tk/nvidia/cu13                      # bin/nvcc, nvvm/bin/cicc, include: becomes a CUDA_HOME
torch_cuda=$("$python" -c "import os, nvidia; print(os.path.join(list(nvidia.__path__)[0], 'cu13'))")
[[ -f $torch_cuda/include/cusparse.h && -f $torch_cuda/lib/libcudart.so.13 ]] || {
  echo "no CUDA 13 headers and runtime beside $python's torch ($torch_cuda)" >&2; exit 1; }
cp -rn "$torch_cuda/include/." "$home/include/"
mkdir -p "$home/lib64"                         # where torch's extension builder looks for libcudart
ln -sf "$torch_cuda/lib/libcudart.so.13" "$home/lib64/libcudart.so"
tar xzf "$files/fast_jl-0.1.3.tar.gz" -C "$work"
sed -i 's/^environ\[.TORCH_CUDA_ARCH_LIST.\]=.*$//' "$work/fast_jl-0.1.3/setup.py"
CUDA_HOME=$home PATH=$home/bin:$PATH TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-9.0} MAX_JOBS=${MAX_JOBS:-4} \
  "$python" -m pip install -q --no-deps --no-build-isolation --target "$target" "$work/fast_jl-0.1.3"
"$python" -m pip install -q --no-deps --no-build-isolation --target "$target" "$files/traker-0.3.2.tar.gz"
ls "$target"/fast_jl*.so
echo "built: PYTHONPATH=$target"
