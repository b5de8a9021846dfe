"""The one command line of every stage and tool: `molescope <stage> [options]` (`molescope.cli.app`)."""
