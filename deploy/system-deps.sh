#!/usr/bin/env bash
# Install the Debian packages the test suite needs; a no-op when they are installed.
#   dovecot-imapd  the IMAP server the email channel's tests start on loopback (their own
#                  throwaway configuration; no system service is used or changed)
# Further package names may be given as arguments.
set -eu
wanted=(dovecot-imapd "$@")
need=()
for pkg in "${wanted[@]}"; do
  status="$(dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null || true)"
  [ "$status" = "install ok installed" ] || need+=("$pkg")
done
if [ ${#need[@]} -gt 0 ]; then
  if [ "$(id -u)" -ne 0 ]; then
    echo "missing Debian packages: ${need[*]} (run as root, or install them)" >&2
    exit 1
  fi
  echo "installing Debian packages: ${need[*]}"
  apt-get update -qq
  # Where nothing blocks service starts, the package starts its own dovecot on the standard
  # ports; the tests never use it (theirs runs on a free loopback port with its own config).
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}"
fi
