"""``python -m onlinemdl``: the command line (without arguments, ``demo``)."""
from .cli import main

raise SystemExit(main())
