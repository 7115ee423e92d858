#!/usr/bin/env bash
# Debian's nginx for the remote shard folder tests (tests/servers.py runs it as a child on a free port,
# with its own config: the system service is not used). `make test` runs this first; it does nothing
# where nginx is already there. Root installs with apt-get; other users through sudo when it needs no
# password; otherwise one line says what to run, and the tests that need nginx are skipped with that reason.
set -euo pipefail
export PATH="$PATH:/usr/sbin:/sbin"  # nginx lives in /usr/sbin, often off a user's PATH

if command -v nginx >/dev/null; then
    exit 0
fi
if ! command -v apt-get >/dev/null; then
    echo "install_nginx: no nginx and no apt-get here: install nginx with your system's packages to run" \
         "the HTTP shard folder tests; they are skipped until then" >&2
    exit 0
fi
if [ "$(id -u)" = 0 ]; then
    SUDO=()
elif command -v sudo >/dev/null && sudo -n true 2>/dev/null; then
    SUDO=(sudo -n)
else
    echo "install_nginx: nginx is not installed and installing it needs root: run" \
         "\`sudo apt-get install nginx-light\` to run the HTTP shard folder tests; they are skipped until then" >&2
    exit 0
fi
echo "install_nginx: installing Debian's nginx-light (a few seconds) for the HTTP shard folder tests" >&2
"${SUDO[@]}" apt-get update -qq
# Only the binary is needed: the tests run their own nginx on a free port, never the system service
"${SUDO[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends nginx-light >/dev/null \
    || "${SUDO[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends nginx >/dev/null
if ! command -v nginx >/dev/null; then
    echo "install_nginx: apt-get installed nginx but the nginx binary is still missing" >&2
    exit 1
fi
