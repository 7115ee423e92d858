#!/usr/bin/env bash
# Debian's slurm-wlm for the test suite's one-node cluster (tests/slurm/conftest.py starts it on free
# ports). `make test` runs this first; it does nothing where slurmctld and sbatch are already there.
# Root installs with apt-get; other users through sudo when it needs no password; otherwise one line
# says what to run, and the tests that need a cluster are skipped with that reason.
set -euo pipefail
export PATH="$PATH:/usr/sbin:/sbin"  # slurmctld lives in /usr/sbin, often off a user's PATH

have_slurm() { command -v slurmctld >/dev/null && command -v sbatch >/dev/null; }

if have_slurm; then
    exit 0
fi
if ! command -v apt-get >/dev/null; then
    echo "install_slurm: no slurmctld/sbatch and no apt-get here: install Slurm (slurmctld, slurmd, sbatch) with" \
         "your system's packages to run the slurm tests; they are skipped until then" >&2
    exit 0
fi
if [ "$(id -u)" = 0 ]; then
    SUDO=()
elif command -v sudo >/dev/null && sudo -n true 2>/dev/null; then
    SUDO=(sudo -n)
else
    echo "install_slurm: slurm-wlm is not installed and installing it needs root: run" \
         "\`sudo apt-get install slurm-wlm\` to run the slurm tests; they are skipped until then" >&2
    exit 0
fi
echo "install_slurm: installing Debian's slurm-wlm (about 1 minute) for the slurm tests' local cluster" >&2
"${SUDO[@]}" apt-get update -qq
"${SUDO[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq slurm-wlm >/dev/null
if ! have_slurm; then
    echo "install_slurm: apt-get installed slurm-wlm but slurmctld or sbatch is still missing" >&2
    exit 1
fi
