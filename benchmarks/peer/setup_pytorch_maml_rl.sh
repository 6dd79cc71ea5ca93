#!/usr/bin/env bash
# Recreate the pytorch-maml-rl peer setup from scratch.
#
#   bash benchmarks/peer/setup_pytorch_maml_rl.sh [GIT_SOURCE]
#
# GIT_SOURCE: a clone URL or git dir of pytorch-maml-rl (default
#   https://github.com/tristandeleu/pytorch-maml-rl; on our offline machines the local mirror
#   /work/.mirror/tristandeleu+pytorch-maml-rl/repo).
# PEER (env var, default: benchmarks/peer/build, git-ignored) is where the checkout,
# the venv and the built gym wheel go. Nothing of pytorch-maml-rl is kept in this repository.  Existing PEER/pytorch-maml-rl,
# PEER/venv and PEER/wheels are deleted first.
set -euo pipefail

MIRROR="${1:-https://github.com/tristandeleu/pytorch-maml-rl}"
PEER="${PEER:-$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/build}"
COMMIT=21d4ba1ccd300a403928e6db553c9529bcc3fbdf   # master, 2020-08-31
PYTHON="${PYTHON:-python3}"                        # tested: CPython 3.11.7

mkdir -p "$PEER"
cd "$PEER"
rm -rf pytorch-maml-rl venv wheels

# 1. Checkout.  The mirror lacks the blob of _assets/halfcheetahdir.gif (a
#    README image), so a plain checkout fails half-way; a sparse checkout that
#    leaves out _assets/ gets every other file of the commit.
git clone -q --no-checkout "$MIRROR" pytorch-maml-rl
git -C pytorch-maml-rl sparse-checkout set --no-cone '/*' '!/_assets/'
# (git prints "error: invalid object ... halfcheetahdir.gif" here; harmless)
git -C pytorch-maml-rl checkout -q --detach "$COMMIT"
test "$(git -C pytorch-maml-rl rev-parse HEAD)" = "$COMMIT"

# 2. venv.  torch is the local CPU wheel (pinned; never unpinned).
"$PYTHON" -m venv venv
venv/bin/pip install -q torch==2.13.0

# 3. gym 0.21.0 is an sdist whose setup.py has an extras spec
#    ("opencv-python>=3.") that setuptools>=66 rejects, while torch 2.13
#    requires setuptools>=77 in the venv.  So build its wheel in an isolated
#    PEP 517 build env constrained to setuptools<66 / wheel<0.40, then install
#    the wheel.  (pip 23.2.1, the venv's default on 3.11.7, accepts the
#    resulting legacy metadata; pip>=24.1 would not: keep this pip.)
printf 'setuptools<66\nwheel<0.40\n' > build-constraints.txt
PIP_CONSTRAINT="$PEER/build-constraints.txt" \
    venv/bin/pip wheel -q --use-pep517 --no-deps gym==0.21.0 -w wheels

# 4. The rest, pinned to the versions that were tested.
venv/bin/pip install -q wheels/gym-0.21.0-py3-none-any.whl \
    numpy==1.23.5 cloudpickle==3.1.2 tqdm==4.70.1 PyYAML==6.0.3

# 5. Record versions.
{
    echo "# python: $(venv/bin/python -c 'import sys; print(sys.version.split()[0])')"
    echo "# pip: $(venv/bin/pip --version | cut -d' ' -f2)"
    echo "# pytorch-maml-rl commit: $(git -C pytorch-maml-rl rev-parse HEAD)"
    echo "# gym wheel built locally from the PyPI sdist gym==0.21.0 (setuptools<66, wheel<0.40 build env)"
    venv/bin/pip freeze
} > versions.txt

venv/bin/python -c 'import torch, gym, numpy; print("ok torch", torch.__version__, "gym", gym.__version__, "numpy", numpy.__version__)'
