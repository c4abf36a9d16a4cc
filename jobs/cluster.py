"""``ray job submit`` entry point for ``icas cluster``.

    ray job submit --working-dir . --runtime-env-json '{"pip": ["icas-ray[cluster]"]}' \
        -- python jobs/cluster.py s3://bucket/images --output s3://bucket/clustered --method imagehash

Takes the same arguments as ``icas cluster``; connects to the cluster the job runs on
(``--address auto`` unless given). Exits non-zero on failure.
"""

import sys

from icas_ray.cli import main

if __name__ == "__main__":
    args = sys.argv[1:]
    if "--address" not in args:
        args += ["--address", "auto"]
    main(["cluster", *args])
