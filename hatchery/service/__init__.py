"""What every service shares: the gRPC server, TLS and tokens, Prometheus metrics, and
the settings that cross the wire. Sits above the core, below the three services."""
