#!/usr/bin/env bash
# Idempotent set-up for whisper-probe on a Debian-like machine with Python 3.10+:
#   system packages (ffmpeg and a CJK font; chromium + poppler for the test suite), a virtualenv at .venv,
#   the package with its dependencies, and the embedded offline Whisper model (converted once).
# A second run only checks and returns in seconds.
# Environment: PROBE_SETUP_TESTS=1 also installs test tools; WHISPER_PROBE_KEEP_TORCH=1 never pins torch
# (for GPU users who put their own CUDA torch into .venv first).
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)
with_tests=${PROBE_SETUP_TESTS:-0}

say() { printf 'setup: %s\n' "$*" >&2; }

# --- system packages -------------------------------------------------------------------------
apt_needed=()
command -v ffmpeg >/dev/null 2>&1 || apt_needed+=(ffmpeg)
# fonts for token texts in figures (probe.figures.font_families): CJK with bold (Han, kana, Hangul),
# Arabic and Devanagari (Noto core), emoji as outlines (Symbola; colour emoji fonts are bitmaps Agg cannot draw)
fonts_needed=()
[ -e /usr/share/fonts/opentype/noto/NotoSansCJK-Regular.ttc ] || fonts_needed+=(fonts-noto-cjk)
[ -e /usr/share/fonts/truetype/noto/NotoSansArabic-Regular.ttf ] || fonts_needed+=(fonts-noto-core)
[ -e /usr/share/fonts/truetype/ancient-scripts/Symbola_hint.ttf ] || fonts_needed+=(fonts-symbola)
apt_needed+=("${fonts_needed[@]}")
if [ "$with_tests" = 1 ]; then
  command -v chromium >/dev/null 2>&1 || apt_needed+=(chromium)
  command -v pdftoppm >/dev/null 2>&1 || apt_needed+=(poppler-utils)
fi
if [ ${#apt_needed[@]} -gt 0 ]; then
  sudo=""; [ "$(id -u)" = 0 ] || sudo="sudo"
  say "installing ${apt_needed[*]} with apt-get"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${apt_needed[@]}" >/dev/null
  # matplotlib lists system fonts once and caches the list: forget it so the new fonts are found
  [ ${#fonts_needed[@]} -eq 0 ] || rm -f "${MPLCONFIGDIR:-${XDG_CACHE_HOME:-$HOME/.cache}/matplotlib}"/fontlist-*.json
fi

# --- virtualenv and Python packages ------------------------------------------------------------
[ -x .venv/bin/python ] || { say "creating .venv"; python3 -m venv .venv; }
py=.venv/bin/python
extras="weights"; [ "$with_tests" = 1 ] && extras="weights,test"
stamp=.venv/.whisper-probe-setup
want="$(cat setup.cfg constraints-cpu.txt | sha256sum | cut -c1-16) $extras"
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  constraints=(-c constraints-cpu.txt)
  if [ "${WHISPER_PROBE_KEEP_TORCH:-0}" = 1 ] || $py -c "import torch, sys; sys.exit(0 if torch.version.cuda else 1)" 2>/dev/null; then
    constraints=()   # a CUDA torch is already there (or the user asked): keep it
    say "keeping the installed torch"
  fi
  say "installing whisper-probe and its dependencies into .venv"
  $py -m pip install -q --disable-pip-version-check "${constraints[@]}" -e ".[$extras]"
  if [ "$with_tests" = 1 ]; then
    # reference for the word-timing tests; --no-deps skips its 1 GB triton requirement (GPU only)
    $py -m pip install -q --disable-pip-version-check --no-deps "openai-whisper==20250625"
  fi
  echo "$want" > "$stamp"
fi

# --- embedded offline model (converted once into the cache), and a check that it all imports ----
check='import torch, torchcodec, transformers, probe.cli
from probe.models import embedded_model_dir
embedded_model_dir("base")
print("torch", torch.__version__, "transformers", transformers.__version__)'
if ! versions=$($py -c "$check" 2>/dev/null); then
  rm -f "$stamp"
  if [ -n "${PROBE_SETUP_RETRIED:-}" ]; then
    $py -c "$check"   # show why
    say "set-up failed: the environment still does not import after reinstalling"; exit 1
  fi
  say "the environment does not import cleanly; reinstalling"
  PROBE_SETUP_RETRIED=1 exec bash "$0"
fi
say "ready ($versions)"
