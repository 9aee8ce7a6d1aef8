"""The coordinator daemon: ``securefed coordinator --config coordinator.toml``.

A thin shell around :class:`securefed.federation.coordinator.Coordinator`:
config file, keys, sockets, signals, logging and a status file.
"""
