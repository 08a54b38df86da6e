"""``python -m kd_compile``: the ``kd-compile`` command."""

from .cli import main

main()
