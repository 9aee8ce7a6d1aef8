"""The node daemon: ``securefed node --config node.toml``.

A thin shell around :class:`securefed.federation.node.Node`: config file,
keys, local data, socket, signals and logging.
"""
