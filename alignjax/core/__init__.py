"""Base utilities every layer uses: paths and file I/O (local and gs://), configuration
parsing, errors, hardware facts, the sharding rules table and log quieting."""
