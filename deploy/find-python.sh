#!/usr/bin/env bash
# Print the path of a Python >= 3.12 interpreter (3.12 preferred: the Teams SDK recipes were proven on it), or explain what to install and fail.
set -u
ok() { "$1" -c 'import sys, venv; sys.exit(0 if sys.version_info >= (3, 12) else 1)' 2>/dev/null; }
candidates=()
[ -n "${GOODBOT_PYTHON:-}" ] && candidates+=("$GOODBOT_PYTHON")
for v in 3.12 3.13 3.14; do
  command -v "python$v" >/dev/null 2>&1 && candidates+=("$(command -v "python$v")")
done
command -v python3 >/dev/null 2>&1 && candidates+=("$(command -v python3)")
if command -v pyenv >/dev/null 2>&1; then
  root="$(pyenv root)"
  for p in $(ls -d "$root"/versions/3.1[2-9]*/bin/python3.1[2-9] 2>/dev/null | sort -V); do candidates+=("$p"); done
fi
for p in "$HOME"/.pyenv/versions/3.1[2-9]*/bin/python3.1[2-9] /usr/local/bin/python3.1[2-9] /usr/bin/python3.1[2-9]; do
  [ -x "$p" ] && candidates+=("$p")
done
for c in "${candidates[@]}"; do
  if ok "$c"; then echo "$c"; exit 0; fi
done
cat >&2 <<'MSG'
goodbot needs Python 3.12 or newer (with the venv module), and none was found.
Install one, for example:
  Debian/Ubuntu:  apt-get install python3.12 python3.12-venv   (or a newer python3)
  pyenv:          pyenv install 3.12
then run make again, or point GOODBOT_PYTHON at the interpreter.
MSG
exit 1
