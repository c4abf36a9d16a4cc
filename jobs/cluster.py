"""``ray job submit`` entry point for ``icas cluster``.

From the repository root (icas-ray is on no package registry: ``--working-dir .`` uploads the
working copy, and the runtime_env installs the dependencies from jobs/requirements-cluster.txt):

    ray job submit --address http://127.0.0.1:8265 --working-dir . \
        --runtime-env jobs/runtime_env.yaml -- \
        python jobs/cluster.py s3://bucket/images --output s3://bucket/clustered --method imagehash

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
