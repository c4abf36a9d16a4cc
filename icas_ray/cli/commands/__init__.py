"""One module per ``icas`` subcommand; each defines ``command`` (a click command or group)."""
