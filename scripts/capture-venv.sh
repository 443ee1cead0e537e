#!/usr/bin/env bash
# Build a virtualenv for the capture tests against one LiteLLM release.
#
#   scripts/capture-venv.sh VERSION DIR [--editable]
#
# LiteLLM releases conflict with each other, so each one gets its own venv: DIR receives
# litellm[proxy]==VERSION, this package (non-editable unless --editable) with its test extras,
# and nothing else. pip's cache is reused between runs. Prints the install time in seconds.
# Then: DIR/bin/pytest -m capture tests/capture
set -euo pipefail

if [[ $# -lt 2 ]]; then
    echo "usage: $0 VERSION DIR [--editable]" >&2
    exit 2
fi
version=$1
dir=$2
mode=${3:-}
repo=$(cd "$(dirname "$0")/.." && pwd)
python=${PYTHON:-python3}

start=$(date +%s)
"$python" -m venv "$dir"
"$dir/bin/python" -m pip install --quiet --upgrade pip
if [[ "$mode" == "--editable" ]]; then
    target=(-e "$repo[test]")
else
    target=("$repo[test]")
fi
# The release under test first; then our package, which must not move litellm.
"$dir/bin/python" -m pip install --quiet "litellm[proxy]==$version"
"$dir/bin/python" -m pip install --quiet "${target[@]}" "litellm[proxy]==$version"
"$dir/bin/python" - <<'PY'
import importlib.metadata as md
print("litellm", md.version("litellm"), "ttft-reconcile", md.version("ttft-reconcile"))
PY
echo "installed in $(( $(date +%s) - start )) s"
