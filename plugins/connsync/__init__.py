"""connsync: replicate the IPVS connection table between directors (built-in plugin)."""
