"""Ed25519 identity keys: signatures, and storing keys on disk safely."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from securefed.crypto.identity import (
    PUBLIC_KEY_SIZE,
    SIGNATURE_SIZE,
    SigningKey,
    load_public_key_pem,
    verify,
)
from securefed.errors import InvalidParameter, InvalidShare

MESSAGE = b"round 7: my X25519 keys"


@pytest.fixture(scope="module")
def key() -> SigningKey:
    return SigningKey.generate()


def _private_raw(key: SigningKey) -> bytes:
    return key._key.private_bytes(serialization.Encoding.Raw, serialization.PrivateFormat.Raw, serialization.NoEncryption())


def _flip(data: bytes, index: int, bit: int = 0x01) -> bytes:
    return data[:index] + bytes([data[index] ^ bit]) + data[index + 1 :]


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


# --- sign / verify ----------------------------------------------------------------


def test_sign_verify_round_trip(key: SigningKey) -> None:
    signature = key.sign(MESSAGE)
    assert len(signature) == SIGNATURE_SIZE
    assert len(key.public_bytes) == PUBLIC_KEY_SIZE
    verify(key.public_bytes, signature, MESSAGE)  # raises on failure


def test_empty_message_round_trip(key: SigningKey) -> None:
    verify(key.public_bytes, key.sign(b""), b"")


@pytest.mark.parametrize("bit", [0x01, 0x80])
def test_any_flipped_signature_byte_is_rejected(key: SigningKey, bit: int) -> None:
    signature = key.sign(MESSAGE)
    for index in range(len(signature)):
        with pytest.raises(InvalidShare):
            verify(key.public_bytes, _flip(signature, index, bit), MESSAGE)


@pytest.mark.parametrize("bit", [0x01, 0x80])
def test_any_flipped_message_byte_is_rejected(key: SigningKey, bit: int) -> None:
    signature = key.sign(MESSAGE)
    for index in range(len(MESSAGE)):
        with pytest.raises(InvalidShare):
            verify(key.public_bytes, signature, _flip(MESSAGE, index, bit))


def test_extended_or_truncated_message_is_rejected(key: SigningKey) -> None:
    signature = key.sign(MESSAGE)
    for message in (MESSAGE + b"\x00", MESSAGE[:-1], b""):
        with pytest.raises(InvalidShare):
            verify(key.public_bytes, signature, message)


def test_wrong_public_key_is_rejected(key: SigningKey) -> None:
    other = SigningKey.generate()
    with pytest.raises(InvalidShare):
        verify(other.public_bytes, key.sign(MESSAGE), MESSAGE)


def test_flipped_public_key_is_rejected(key: SigningKey) -> None:
    signature = key.sign(MESSAGE)
    for index in range(PUBLIC_KEY_SIZE):
        with pytest.raises(InvalidShare):
            verify(_flip(key.public_bytes, index), signature, MESSAGE)


@pytest.mark.parametrize(("public_len", "signature_len"), [(31, 64), (33, 64), (32, 63), (32, 65), (0, 0)])
def test_wrong_lengths_are_rejected(key: SigningKey, public_len: int, signature_len: int) -> None:
    public = (key.public_bytes * 2)[:public_len]
    signature = (key.sign(MESSAGE) * 2)[:signature_len]
    with pytest.raises(InvalidShare):
        verify(public, signature, MESSAGE)


def test_repr_hides_private_key(key: SigningKey) -> None:
    private_hex = _private_raw(key).hex()
    for text in (repr(key), str(key)):
        assert private_hex[:16] not in text
        assert key.public_bytes.hex()[:16] in text


# --- storage ---------------------------------------------------------------------


def test_save_load_round_trip_with_mode_0600(key: SigningKey, tmp_path: Path) -> None:
    path = tmp_path / "identity.pem"
    key.save(path)
    assert _mode(path) == 0o600
    loaded = SigningKey.load(path)
    assert loaded.public_bytes == key.public_bytes
    assert _private_raw(loaded) == _private_raw(key)
    verify(key.public_bytes, loaded.sign(MESSAGE), MESSAGE)


def test_save_tightens_mode_of_existing_file(key: SigningKey, tmp_path: Path) -> None:
    path = tmp_path / "identity.pem"
    path.write_bytes(b"old")
    path.chmod(0o644)
    key.save(path)
    assert _mode(path) == 0o600
    assert SigningKey.load(path).public_bytes == key.public_bytes


def test_save_leaves_no_temporary_files(key: SigningKey, tmp_path: Path) -> None:
    key.save(tmp_path / "identity.pem")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["identity.pem"]


@pytest.mark.parametrize("mode", [0o644, 0o640, 0o604, 0o660])
def test_load_refuses_key_readable_by_others(key: SigningKey, tmp_path: Path, mode: int) -> None:
    path = tmp_path / "identity.pem"
    key.save(path)
    os.chmod(path, mode)
    with pytest.raises(InvalidParameter):
        SigningKey.load(path)


def test_load_refuses_missing_file(tmp_path: Path) -> None:
    with pytest.raises(InvalidParameter):
        SigningKey.load(tmp_path / "absent.pem")


def _write_private(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    path.chmod(0o600)
    return path


@pytest.mark.parametrize(
    "data",
    [b"", b"not a key at all\n", b"-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n"],
    ids=["empty", "text", "bad-pem-body"],
)
def test_load_refuses_non_pem(tmp_path: Path, data: bytes) -> None:
    path = _write_private(tmp_path / "identity.pem", data)
    with pytest.raises(InvalidParameter):
        SigningKey.load(path)


def test_load_refuses_x25519_key(tmp_path: Path) -> None:
    pem = X25519PrivateKey.generate().private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    path = _write_private(tmp_path / "identity.pem", pem)
    with pytest.raises(InvalidParameter):
        SigningKey.load(path)


def test_load_refuses_encrypted_key(tmp_path: Path) -> None:
    pem = Ed25519PrivateKey.generate().private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.BestAvailableEncryption(b"passphrase"),
    )
    path = _write_private(tmp_path / "identity.pem", pem)
    with pytest.raises(InvalidParameter):
        SigningKey.load(path)


def test_public_key_pem_round_trip(key: SigningKey, tmp_path: Path) -> None:
    path = tmp_path / "identity.pub.pem"
    key.save_public(path)
    assert _mode(path) == 0o644
    assert load_public_key_pem(path.read_bytes()) == key.public_bytes


def test_load_public_key_pem_refuses_other_keys() -> None:
    x25519_pem = (
        X25519PrivateKey.generate()
        .public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    for data in (x25519_pem, b"", b"garbage"):
        with pytest.raises(InvalidParameter):
            load_public_key_pem(data)
