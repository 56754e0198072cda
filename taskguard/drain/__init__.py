"""The drain pool: moves write-behind records from Redis into a store."""
