"""``ray job submit`` entry point for ``icas train``.

    ray job submit --working-dir . --runtime-env-json '{"pip": ["icas-ray[deep]"]}' \
        -- python jobs/train.py s3://bucket/images --storage s3://bucket/models/ae --gpu --workers 4

Takes the same arguments as ``icas train``; connects to the cluster the job runs on
(``--address auto`` unless given). Exits non-zero on failure.
"""

import sys

from icas_ray.cli import main

if __name__ == "__main__":
    args = sys.argv[1:]
    if "--address" not in args:
        args += ["--address", "auto"]
    main(["train", *args])
