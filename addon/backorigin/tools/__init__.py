"""The backorigin command: run, demo, the embedded store, and the final sweep (backfill, verify)."""
