#!/usr/bin/env bash
# The test command (README): builds the virtualenvs it needs, then runs
#   1. the main suite (job, publish, demo, capture's pure parts) in .venv, and
#   2. the capture suite against each supported LiteLLM release in .venv-litellm-<version>.
#
#   bash tests/run.sh                 # everything
#   bash tests/run.sh --main-only     # skip the LiteLLM releases
#   bash tests/run.sh --capture-only  # only the LiteLLM releases
#   bash tests/run.sh -- -k rollback  # extra pytest arguments (main suite)
#   TTFT_MAIN_MARKERS="not capture and not slow" bash tests/run.sh --main-only   # the quick subset
#
# Services: TEST_DATABASE_URL / TEST_PUSHGATEWAY when set; otherwise the fixtures start an
# embedded Postgres (and a Pushgateway when Debian's prometheus-pushgateway is installed).
set -euo pipefail

repo=$(cd "$(dirname "$0")/.." && pwd)
cd "$repo"
python=${PYTHON:-python3}
releases=${TTFT_LITELLM_RELEASES:-"1.82.3 1.92.2 1.106.12"}
main=1
capture=1
extra=()
while [[ $# -gt 0 ]]; do
    case "$1" in
        --main-only) capture=0 ;;
        --capture-only) main=0 ;;
        --) shift; extra=("$@"); break ;;
        *) extra+=("$1") ;;
    esac
    shift
done

export LITELLM_LOCAL_MODEL_COST_MAP=True AWS_EC2_METADATA_DISABLED=true
if [[ -z "${XDG_RUNTIME_DIR:-}" ]]; then
    XDG_RUNTIME_DIR=$(mktemp -d)
    export XDG_RUNTIME_DIR
    trap 'rm -rf "$XDG_RUNTIME_DIR"' EXIT
fi
chmod 700 "$XDG_RUNTIME_DIR"

status=0
passed_suites=()
failed_suites=()

pytest_rc() {
    # pytest exits 5 when it collected nothing: that is a failure here.
    local rc=$1 name=$2
    if [[ $rc -eq 5 ]]; then echo "$name: no tests ran" >&2; return 1; fi
    return "$rc"
}

if [[ $main -eq 1 ]]; then
    if [[ ! -x .venv/bin/python ]]; then
        "$python" -m venv .venv
        .venv/bin/python -m pip install --quiet --upgrade pip
    fi
    .venv/bin/python -m pip install --quiet -e ".[test,plot]"
    echo "== lint (ruff) and type-check (mypy)"
    if .venv/bin/ruff check $(ls -d ttft_reconcile migrations tests bench 2>/dev/null) && .venv/bin/mypy; then
        passed_suites+=("lint")
    else
        failed_suites+=("lint"); status=1
    fi
    set +e
    .venv/bin/python -m pytest -rfEs -m "${TTFT_MAIN_MARKERS:-not capture}" tests "${extra[@]}"
    rc=$?
    set -e
    if pytest_rc $rc "main suite"; then passed_suites+=("main"); else failed_suites+=("main"); status=1; fi
fi

if [[ $capture -eq 1 ]]; then
    for version in $releases; do
        venv=".venv-litellm-$version"
        if [[ ! -x "$venv/bin/python" ]] || ! "$venv/bin/python" -c "import litellm, ttft_reconcile" 2>/dev/null; then
            rm -rf "$venv"
            bash scripts/capture-venv.sh "$version" "$venv" --editable
        fi
        set +e
        TTFT_LITELLM_VERSION=$version "$venv/bin/python" -m pytest -rfEs -m capture tests/capture
        rc=$?
        set -e
        if pytest_rc $rc "capture suite (litellm $version)"; then
            passed_suites+=("litellm-$version")
        else
            failed_suites+=("litellm-$version"); status=1
        fi
    done
fi

echo "suites passed: ${passed_suites[*]:-none}"
echo "suites failed: ${failed_suites[*]:-none}"
exit $status
