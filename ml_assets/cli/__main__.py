"""`python -m ml_assets.cli`: the same as the `ml-assets` command."""

from ml_assets.cli.main import main

raise SystemExit(main())
