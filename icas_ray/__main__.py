"""``python -m icas_ray`` runs the ``icas`` command line."""

from icas_ray.cli import run

run()
