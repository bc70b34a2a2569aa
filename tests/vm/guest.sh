#!/bin/sh
# Runs inside the test VM (tests/vm/init starts it): the checker, with the host's
# Python, writing its report and logs to the writable share at /run/out.
echo "vm-guest: starting the checker"
exec "$VM_PYTHON" "$VM_REPO/tests/vm/guest_check.py" --modules "$VM_MODULES" --out /run/out
