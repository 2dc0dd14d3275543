"""The bodies of the commands that `exporter.cli` parses: `run`, `once`, `check`, `demo`, `slo-rules`."""
