"""Distributed differential privacy in the integer domain (Skellam), accounting, and the node's ledger.

- :mod:`.noise`      — integer noise from a CSPRNG-keyed generator (AES counter mode)
- :mod:`.accountant` — epsilon for Gaussian (via Google's ``dp-accounting``) and Skellam (RDP) mechanisms,
  and calibration from a target epsilon
- :mod:`.mechanism`  — clip, scale, round, add each node's share of Skellam noise; wrap-around check
- :mod:`.ledger`     — the node's durable record of the epsilon it has spent
"""
