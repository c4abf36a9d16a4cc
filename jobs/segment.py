"""``ray job submit`` entry point for ``icas segment run`` (same arguments; ``--address auto``).

From the repository root (the working copy carries the package; see jobs/runtime_env.yaml):

    ray job submit --address http://127.0.0.1:8265 --working-dir . \
        --runtime-env jobs/runtime_env.yaml -- \
        python jobs/segment.py s3://bucket/images --method felzenszwalb
"""

import sys

from icas_ray.cli import main

if __name__ == "__main__":
    args = sys.argv[1:]
    if "--address" not in args:
        args += ["--address", "auto"]
    main(["segment", "run", *args])
