"""The `vdetect` command: start any service, or the whole local stack."""
