"""`python -m molescope.cli <stage> ...`: the same as the `molescope` console command."""

from molescope.cli.app import main

raise SystemExit(main())
