"""python -m jobs.plan MODEL [--gpu-memory 2GiB] [--ram 16GiB]: the device plan, printed without loading weights."""

import sys

from vlray.model.plan_command import main

if __name__ == "__main__":
    sys.exit(main())
