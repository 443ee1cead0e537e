"""Alembic migrations of the `ttft_reconcile` schema (shipped as `ttft_reconcile.migrations`)."""
