#!/usr/bin/env bash
# Set up (idempotent), trace the bundled example clips with the embedded offline model into
# ./demo-store (once), then serve the dashboard on it at http://127.0.0.1:8501.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export HF_HUB_OFFLINE=1
store=${DEMO_STORE:-demo-store}
probe=.venv/bin/probe
if [ -z "$($probe ls --store "$store" --json | .venv/bin/python -c 'import json,sys; print(len(json.load(sys.stdin)) or "")')" ]; then
  $probe run examples/en_fox.flac examples/en_lecture.flac --store "$store"
  $probe run examples/zh_hello.flac --store "$store" --name zh_hello-transcribe
  $probe run examples/zh_hello.flac --store "$store" --task translate --name zh_hello-translate
  $probe run examples/en_lecture.flac --store "$store" --timestamps --num-beams 3 --name en_lecture-beam3-timestamps
else
  $probe ls --store "$store"
fi
[ "${DEMO_NO_DASHBOARD:-0}" = 1 ] && exit 0
exec $probe dashboard --store "$store" --host "${DEMO_HOST:-127.0.0.1}" --port "${DEMO_PORT:-8501}"
