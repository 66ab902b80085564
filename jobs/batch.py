"""python -m jobs.batch --model M --input I --output O: Qwen3-VL over a table of prompts or a folder of images.

Works the same under `ray job submit --working-dir . -- python -m jobs.batch ...` (it joins the cluster) and
alone (Ray starts an embedded local instance). The job itself is actors/data/batch_job.py.
"""

import sys

from actors.data.batch_job import main

if __name__ == "__main__":
    sys.exit(main())
