"""``ray job submit`` entry point for ``icas serve embed`` (same arguments; ``--address auto``).

From the repository root (the working copy carries the package; see jobs/runtime_env.yaml):

    ray job submit --address http://127.0.0.1:8265 --working-dir . \
        --runtime-env jobs/runtime_env.yaml -- \
        python jobs/embed.py s3://bucket/images --checkpoint s3://models/sam_vit_b.pth \
            --model-type vit_b --output s3://bucket/emb
"""

import sys

from icas_ray.cli import main

if __name__ == "__main__":
    args = sys.argv[1:]
    if "--address" not in args:
        args += ["--address", "auto"]
    main(["serve", "embed", *args])
