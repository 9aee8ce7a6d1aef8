"""Thin, typed wrappers over vetted primitives from ``cryptography``.

Safe entry points live here; nothing in this package invents a primitive.

- :mod:`.agreement` — X25519 key pairs, agreement, HKDF-SHA256 with bound ``info``
- :mod:`.identity`  — Ed25519 identity keys: sign, verify, store, load
- :mod:`.aead`      — AES-256-GCM for shares relayed through the coordinator
- :mod:`.prg`       — AES-256-CTR mask expansion and a CSPRNG stream
- :mod:`.shamir`    — Shamir secret sharing over a 257-bit prime field
"""
