# Sourced by scripts/demo and scripts/test: makes .venv with the package installed.
# A minimal Debian lacks the venv module (package python3-venv); install it when we may.

as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }

apt_install() {
  as_root apt-get update -qq
  DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -qq --no-install-recommends "$@" >/dev/null
}

make_venv() {  # $1: what to install, e.g. . or .[test]
  if [ ! -x .venv/bin/python ]; then
    if ! python3 -m venv .venv 2>/dev/null; then
      rm -rf .venv
      apt_install python3-venv
      python3 -m venv .venv
    fi
  fi
  # Install only when the dependencies changed since the last install: an editable install
  # picks up source edits by itself, and a reinstall on every run costs seconds and output.
  local stamp=".venv/.installed" wanted
  wanted="$1 $(sha256sum pyproject.toml | cut -d' ' -f1)"
  if [ "$(cat "$stamp" 2>/dev/null)" = "$wanted" ]; then
    return
  fi
  # setuptools prints a banner on every editable build; it says nothing actionable here.
  PYTHONWARNINGS="ignore:Editable installation" PIP_DISABLE_PIP_VERSION_CHECK=1 \
    .venv/bin/python -m pip install -q -e "$1"
  echo "$wanted" > "$stamp"
}
