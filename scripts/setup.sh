#!/usr/bin/env bash
# Create .venv with the pinned dependency tree (requirements.lock) and the package itself.
# Idempotent: a second run only checks that everything is in place.
set -euo pipefail
cd "$(dirname "$0")/.."

need_apt=()
command -v python3.11 >/dev/null || need_apt+=(python3.11 python3.11-venv)
command -v java >/dev/null || need_apt+=(openjdk-17-jdk-headless)
command -v mvn >/dev/null || need_apt+=(maven)
command -v curl >/dev/null || need_apt+=(curl)
command -v redis-server >/dev/null || need_apt+=(redis-server)  # Celery broker of scripts/demo-distributed.sh
if [ ${#need_apt[@]} -gt 0 ]; then
  echo "installing ${need_apt[*]} from Debian..."
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq && apt-get install -y -qq "${need_apt[@]}" >/dev/null
fi

PY=${KFM_PYTHON:-python3.11}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
stamp=.venv/.kfm-lock-$(sha256sum requirements.lock pyproject.toml | sha256sum | cut -c1-16)
if [ ! -f "$stamp" ]; then
  echo "installing the pinned Python dependencies (requirements.lock)..."
  .venv/bin/python -m pip install -q --disable-pip-version-check uv==0.13.8
  .venv/bin/uv pip install -q --python .venv/bin/python -r requirements.lock
  .venv/bin/uv pip install -q --python .venv/bin/python --no-deps -e .
  rm -f .venv/.kfm-lock-*
  touch "$stamp"
fi
echo "venv ready: .venv ($(.venv/bin/python --version))"
