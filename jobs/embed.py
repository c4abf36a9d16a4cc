"""``ray job submit`` entry point for ``icas serve embed`` (same arguments; ``--address auto``)."""

import sys

from icas_ray.cli import main

if __name__ == "__main__":
    args = sys.argv[1:]
    if "--address" not in args:
        args += ["--address", "auto"]
    main(["serve", "embed", *args])
