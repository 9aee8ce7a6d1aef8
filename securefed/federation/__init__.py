"""Federated training over secure aggregation: the coordinator and node objects.

The daemons in the top-level ``coordinator`` and ``node`` packages are thin
shells (config files, process lifecycle) around :class:`Coordinator` and
:class:`Node` from here.
"""
