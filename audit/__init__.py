"""The tamper-evident audit trail. Runs on an auditor's laptop: never imports `gateway`."""
