#!/usr/bin/env bash
# Download, on this machine, what the GPU machine's python3 lacks to run `squeezer serve`.
#
#   bash benchmarks/gpu/fetch_wheels.sh
#
# The device has torch, transformers, sentence-transformers, tokenizers, httpx, typer,
# rich, uvloop, h11, click, anyio, idna and numpy, but no web stack, and it reaches no
# package registry. So the web stack travels as cp312 manylinux wheels in .gpu-carry/wheels
# (git-ignored), installed there by benchmarks/gpu/encoders.py with
# `pip install --no-index --no-deps --target /tmp/site`. Each wheel is pinned to the version
# in this checkout's .venv: the versions squeezer's test suite passes with. `--no-deps`
# keeps the list explicit (one version of each, nothing the device already has).
#
# Also, when apt works here: wrk and its LuaJIT as .deb files in .gpu-carry/debs (unpacked
# there with dpkg -x into /tmp, never into /): a Python load generator tops out below what
# the server should reach on a GPU (DESIGN.md, "The HTTP hot path").
set -euo pipefail
cd "$(dirname "$0")/../.."
CARRY=.gpu-carry
PY=${PYTHON:-.venv/bin/python}

# The web stack squeezer imports at serve time (fastapi -> starlette, pydantic,
# opentelemetry-api, annotated-doc; uvicorn + httptools for the fast path; orjson for
# bodies) and the typing packages they need in versions newer than the device may have.
PACKAGES=(
  fastapi starlette pydantic pydantic-core annotated-types annotated-doc
  typing-inspection typing-extensions opentelemetry-api uvicorn httptools orjson
)

pins=()
for name in "${PACKAGES[@]}"; do
  version=$("$PY" -m pip show "$name" 2>/dev/null | awk '/^Version:/ {print $2}')
  pins+=("$name${version:+==$version}")
done

rm -rf "$CARRY/wheels"
mkdir -p "$CARRY/wheels"
echo "downloading: ${pins[*]}"
"$PY" -m pip download --quiet --no-deps --only-binary=:all: \
  --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
  --platform manylinux2014_x86_64 --platform manylinux1_x86_64 \
  -d "$CARRY/wheels" "${pins[@]}" 2> >(grep -v "is ignored: it is neither" >&2)

if command -v apt-get >/dev/null; then
  rm -rf "$CARRY/debs"
  mkdir -p "$CARRY/debs"
  if ! (cd "$CARRY/debs" && apt-get download -q wrk libluajit-5.1-2 libluajit-5.1-common \
        >/dev/null 2>&1); then
    echo "apt-get download failed: no wrk carried (the harness falls back to squeezer bench)"
    rm -rf "$CARRY/debs"
  fi
fi

ls -1 "$CARRY/wheels" "$CARRY/debs" 2>/dev/null || true
du -sh "$CARRY"/wheels "$CARRY"/debs 2>/dev/null || true
