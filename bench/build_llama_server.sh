#!/usr/bin/env bash
# Build llama.cpp's own server (llama-server) from the llama.cpp sources vendored in the
# llama-cpp-python source distribution on PyPI, for bench/load.py's side-by-side anchor.
#
#   bash bench/build_llama_server.sh DIR          # -> DIR/llama-server (a few minutes on 2 cores)
#   python bench/load.py --llama-server DIR/llama-server
#
# Environment: LLAMA_CPP_PYTHON_VERSION (default 0.3.36), JOBS (default: all cores), NICE (default 19),
# CLASS (default native): the CPU class to build for. native: -march=native (GGML_NATIVE=ON), this machine;
# avx2: AVX2+FMA+F16C, no AVX-512 and no AVX-VNNI (GGML_NATIVE=OFF), the anchor for AVX2-class CPUs.
#
#   CLASS=avx2 bash bench/build_llama_server.sh DIR
set -euo pipefail

DIR=${1:?usage: build_llama_server.sh DIR}
VERSION=${LLAMA_CPP_PYTHON_VERSION:-0.3.36}
JOBS=${JOBS:-$(nproc)}
NICE=${NICE:-19}
PYTHON=${PYTHON:-python3}
CLASS=${CLASS:-native}
case "$CLASS" in
    native) CPU_FLAGS=(-DGGML_NATIVE=ON) ;;
    avx2)   CPU_FLAGS=(-DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON
                       -DGGML_AVX512=OFF -DGGML_AVX_VNNI=OFF) ;;
    *) echo "build_llama_server.sh: CLASS must be native or avx2, not '$CLASS'" >&2; exit 2 ;;
esac

mkdir -p "$DIR"
DIR=$(cd "$DIR" && pwd)
SDIST="$DIR/llama_cpp_python-$VERSION.tar.gz"
SRC="$DIR/llama_cpp_python-$VERSION"
if [ ! -d "$SRC" ]; then
    if [ ! -f "$SDIST" ]; then
        # The source distribution only (build tools for its metadata may come as wheels: building those
        # from source too, as --no-binary :all: would, takes longer than llama.cpp itself).
        nice -n "$NICE" "$PYTHON" -m pip download --no-deps --no-binary llama-cpp-python \
            "llama-cpp-python==$VERSION" -d "$DIR"
    fi
    tar -xzf "$SDIST" -C "$DIR"
fi
cd "$SRC/vendor/llama.cpp"
# A build folder per class (cmake keeps cached options, so a CLASS switch in one folder would not take effect);
# native keeps the folder it always had.
BUILD=build
[ "$CLASS" = native ] || BUILD="build-$CLASS"
nice -n "$NICE" cmake -B "$BUILD" "${CPU_FLAGS[@]}" -DLLAMA_OPENSSL=OFF -DLLAMA_USE_PREBUILT_UI=OFF \
    -DLLAMA_BUILD_UI=OFF -DLLAMA_CURL=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DBUILD_SHARED_LIBS=OFF \
    -DCMAKE_BUILD_TYPE=Release
nice -n "$NICE" cmake --build "$BUILD" --target llama-server -j "$JOBS"
cp "$BUILD/bin/llama-server" "$DIR/llama-server"
"$DIR/llama-server" --version 2>&1 | head -n 3 || true
echo "built $DIR/llama-server (CLASS=$CLASS)"
