"""``python -m tensorwall_proxy`` → the command line."""

from .cli import main

raise SystemExit(main())
