"""``ray job submit`` entry point for ``icas train``.

From the repository root (the working copy carries the package; see jobs/runtime_env.yaml):

    ray job submit --address http://127.0.0.1:8265 --working-dir . \
        --runtime-env jobs/runtime_env.yaml -- \
        python jobs/train.py s3://bucket/images --storage s3://bucket/models/ae --gpu --workers 4

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
