"""Cache service and strategies; the write-behind queue (see docs/caching.md)."""
