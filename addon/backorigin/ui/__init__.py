"""What people and tools see: the mitmweb view, the commands, the metrics, the miss ledger."""
