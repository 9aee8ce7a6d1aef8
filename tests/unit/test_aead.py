"""AES-256-GCM for relayed shares: authentication, binding and opaque failure."""

from __future__ import annotations

import os

import pytest
from hypothesis import given
from hypothesis import strategies as st

from securefed.crypto.aead import NONCE_SIZE, TAG_SIZE, open_sealed, seal, share_associated_data
from securefed.errors import InvalidParameter, InvalidShare

KEY = bytes(range(32))
AD = share_associated_data("mnist", 7, sender=3, recipient=11, context=b"model-hash")
PLAINTEXT = b"share"


def _flip(data: bytes, index: int, bit: int) -> bytes:
    return data[:index] + bytes([data[index] ^ bit]) + data[index + 1 :]


@given(
    key=st.binary(min_size=32, max_size=32),
    plaintext=st.binary(max_size=200),
    associated_data=st.binary(max_size=64),
)
def test_round_trip(key: bytes, plaintext: bytes, associated_data: bytes) -> None:
    sealed = seal(key, plaintext, associated_data)
    assert len(sealed) == NONCE_SIZE + len(plaintext) + TAG_SIZE
    assert open_sealed(key, sealed, associated_data) == plaintext


def test_ciphertext_hides_plaintext_and_nonces_are_fresh() -> None:
    plaintext = b"A" * 64
    first, second = seal(KEY, plaintext, AD), seal(KEY, plaintext, AD)
    assert first[:NONCE_SIZE] != second[:NONCE_SIZE]
    assert first != second
    assert plaintext not in first


@pytest.mark.parametrize("bit", [0x01, 0x80, 0xFF])
def test_tampering_any_byte_of_sealed_blob_is_rejected(bit: int) -> None:
    sealed = seal(KEY, PLAINTEXT, AD)
    assert len(sealed) == NONCE_SIZE + len(PLAINTEXT) + TAG_SIZE
    for index in range(len(sealed)):
        with pytest.raises(InvalidShare):
            open_sealed(KEY, _flip(sealed, index, bit), AD)


@pytest.mark.parametrize("bit", [0x01, 0x80])
def test_tampering_any_byte_of_associated_data_is_rejected(bit: int) -> None:
    sealed = seal(KEY, PLAINTEXT, AD)
    for index in range(len(AD)):
        with pytest.raises(InvalidShare):
            open_sealed(KEY, sealed, _flip(AD, index, bit))


def test_extended_or_truncated_associated_data_is_rejected() -> None:
    sealed = seal(KEY, PLAINTEXT, AD)
    for associated_data in (AD + b"\x00", AD[:-1], b""):
        with pytest.raises(InvalidShare):
            open_sealed(KEY, sealed, associated_data)


def test_truncated_blob_is_rejected() -> None:
    sealed = seal(KEY, PLAINTEXT, AD)
    for length in range(len(sealed)):
        with pytest.raises(InvalidShare):
            open_sealed(KEY, sealed[:length], AD)
    with pytest.raises(InvalidShare):
        open_sealed(KEY, sealed[1:], AD)


def test_extended_blob_is_rejected() -> None:
    sealed = seal(KEY, PLAINTEXT, AD)
    with pytest.raises(InvalidShare):
        open_sealed(KEY, sealed + b"\x00", AD)


def test_wrong_key_is_rejected() -> None:
    sealed = seal(KEY, PLAINTEXT, AD)
    with pytest.raises(InvalidShare):
        open_sealed(os.urandom(32), sealed, AD)
    for index in (0, 31):
        with pytest.raises(InvalidShare):
            open_sealed(_flip(KEY, index, 0x01), sealed, AD)


@pytest.mark.parametrize("length", [0, 16, 24, 31, 33])
def test_wrong_key_length_is_rejected_opaquely(length: int) -> None:
    sealed = seal(KEY, PLAINTEXT, AD)
    with pytest.raises(InvalidShare):
        open_sealed(KEY[:length] if length <= 32 else KEY + b"\x00", sealed, AD)


@pytest.mark.parametrize("length", [0, 16, 24, 31, 33])
def test_seal_refuses_wrong_key_length(length: int) -> None:
    with pytest.raises(InvalidParameter):
        seal(bytes(length), PLAINTEXT, AD)


def test_swapping_sender_and_recipient_is_rejected() -> None:
    forward = share_associated_data("mnist", 7, sender=3, recipient=11, context=b"h")
    backward = share_associated_data("mnist", 7, sender=11, recipient=3, context=b"h")
    assert forward != backward
    sealed = seal(KEY, PLAINTEXT, forward)
    with pytest.raises(InvalidShare):
        open_sealed(KEY, sealed, backward)


@pytest.mark.parametrize(
    "changed",
    [
        {"task": "cifar"},
        {"round_id": 8},
        {"sender": 4},
        {"recipient": 12},
        {"context": b"other-model"},
    ],
)
def test_replay_into_another_context_is_rejected(changed: dict) -> None:
    base = {"task": "mnist", "round_id": 7, "sender": 3, "recipient": 11, "context": b"model-hash"}
    sealed = seal(KEY, PLAINTEXT, share_associated_data(**base))
    with pytest.raises(InvalidShare):
        open_sealed(KEY, sealed, share_associated_data(**{**base, **changed}))


def test_failures_are_opaque() -> None:
    sealed = seal(KEY, PLAINTEXT, AD)
    messages = set()
    for key, blob, associated_data in [
        (os.urandom(32), sealed, AD),
        (KEY, _flip(sealed, 0, 1), AD),
        (KEY, sealed[:5], AD),
        (KEY, sealed, b""),
        (KEY[:16], sealed, AD),
    ]:
        with pytest.raises(InvalidShare) as info:
            open_sealed(key, blob, associated_data)
        messages.add(str(info.value))
    assert len(messages) == 1
