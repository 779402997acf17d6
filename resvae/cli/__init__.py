"""The console scripts: resvae-train, -eval, -sample, -analyze, -bench (resvae-report: resvae.sweep)."""
