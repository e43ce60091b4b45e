"""lrkv.orchestrator: the service side — the `lrkv` command line (and, with the sweep service, specs,
studies and scheduling)."""
