"""``python -m policytrim.cli``: the same as the `policytrim` command."""

from policytrim.cli import main

raise SystemExit(main())
