#!/usr/bin/env bash
# Installs the ECS clients the end-to-end test drives skiffd with — the AWS CLI and boto3, from
# PyPI, at the versions tests/ecs/requirements.txt pins — into the virtualenv target/ecs-venv.
# Idempotent: does nothing when the virtualenv already has exactly those.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
venv=target/ecs-venv
requirements=tests/ecs/requirements.txt
stamp=$venv/.requirements
if [ -x "$venv/bin/aws" ] && cmp -s "$requirements" "$stamp"; then
    exit 0
fi
echo "ecs-clients: installing the AWS CLI and boto3 into $venv"
rm -rf "$venv"
python3 -m venv "$venv"
"$venv/bin/pip" install -q --disable-pip-version-check -r "$requirements"
"$venv/bin/aws" --version
cp "$requirements" "$stamp"
