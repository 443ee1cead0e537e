"""ttft_reconcile: repair time-to-first-token in LiteLLM's SpendLogs from captured stream traces."""

__version__ = "0.1.0"
