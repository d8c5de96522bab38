"""Device backends: one file per kind against the protocol in devices.base."""
