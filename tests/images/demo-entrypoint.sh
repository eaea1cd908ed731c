#!/bin/sh
# Entrypoint of the demo image: proves the entrypoint ran, then runs the command.
export DEMO_ENTRYPOINT=ran
exec "$@"
