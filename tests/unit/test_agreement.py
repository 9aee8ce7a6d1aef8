"""X25519 agreement, HKDF-SHA256 and the context encoding bound into ``info``.

Known-answer vectors come from RFC 7748 §6.1 (X25519) and RFC 5869 A.1 (HKDF).
"""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from securefed.crypto._encoding import encode_fields
from securefed.crypto.agreement import (
    KEY_SIZE,
    AgreementKeyPair,
    agree,
    derive_key,
    hkdf_sha256,
    kdf_info,
)
from securefed.errors import InvalidParameter, InvalidShare

# RFC 7748, section 6.1.
ALICE_PRIVATE = bytes.fromhex("77076d0a7318a57d3c16c17251b26645df4c2f87ebc0992ab177fba51db92c2a")
ALICE_PUBLIC = bytes.fromhex("8520f0098930a754748b7ddcb43ef75a0dbf3a0d26381af4eba4a98eaa9b4e6a")
BOB_PRIVATE = bytes.fromhex("5dab087e624a8a4b79e17f8b83800ee66f3bb1292618b6fd1c2f8b27ff88e0eb")
BOB_PUBLIC = bytes.fromhex("de9edb7d7b7dc1b4d35b61c2ece435373f8343c85b78674dadfc7e146f882b4f")
SHARED_SECRET = bytes.fromhex("4a5d9d5ba4ce2de1728e3bf480350f25e07e21c947d19e3376f09b3c1e161742")

# Points of small order on Curve25519 (and non-canonical encodings of them):
# agreeing with any of them yields the all-zero secret.
LOW_ORDER_POINTS = [
    bytes(32),  # u = 0
    (1).to_bytes(32, "little"),  # u = 1
    bytes.fromhex("e0eb7a7c3b41b8ae1656e3faf19fc46ada098deb9c32b1fd866205165f49b800"),  # order 8
    bytes.fromhex("5f9c95bca3508c24b1d0b1559c83ef5b04445cc4581c8e86d8224eddd09f1157"),  # order 8
    bytes.fromhex("ecffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f"),  # u = p - 1
    bytes.fromhex("edffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f"),  # u = p (= 0)
    bytes.fromhex("eeffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f"),  # u = p + 1 (= 1)
]

CONTEXT = {"purpose": "mask", "task": "mnist", "round_id": 7, "party_a": 3, "party_b": 11, "context": b"model-hash"}


# --- X25519 ------------------------------------------------------------------


def test_rfc7748_public_keys() -> None:
    assert AgreementKeyPair.from_private_bytes(ALICE_PRIVATE).public_bytes == ALICE_PUBLIC
    assert AgreementKeyPair.from_private_bytes(BOB_PRIVATE).public_bytes == BOB_PUBLIC


def test_rfc7748_shared_secret_both_directions() -> None:
    assert agree(ALICE_PRIVATE, BOB_PUBLIC) == SHARED_SECRET
    assert agree(BOB_PRIVATE, ALICE_PUBLIC) == SHARED_SECRET


def test_generated_pairs_agree() -> None:
    alice, bob = AgreementKeyPair.generate(), AgreementKeyPair.generate()
    assert alice.public_bytes != bob.public_bytes
    assert len(alice.private_bytes) == len(alice.public_bytes) == KEY_SIZE
    assert agree(alice.private_bytes, bob.public_bytes) == agree(bob.private_bytes, alice.public_bytes)


@pytest.mark.parametrize("point", LOW_ORDER_POINTS, ids=lambda p: p.hex()[:8])
def test_agree_rejects_low_order_peer_key(point: bytes) -> None:
    with pytest.raises(InvalidShare):
        agree(ALICE_PRIVATE, point)


@pytest.mark.parametrize("length", [0, 31, 33, 64])
def test_agree_rejects_wrong_length_peer_key(length: int) -> None:
    with pytest.raises(InvalidShare):
        agree(ALICE_PRIVATE, bytes(range(length)))


@pytest.mark.parametrize("length", [0, 31, 33])
def test_from_private_bytes_rejects_wrong_length(length: int) -> None:
    with pytest.raises(InvalidParameter):
        AgreementKeyPair.from_private_bytes(bytes(length))


def test_keypair_repr_hides_private_key() -> None:
    pair = AgreementKeyPair.from_private_bytes(ALICE_PRIVATE)
    for text in (repr(pair), str(pair)):
        assert ALICE_PRIVATE.hex()[:16] not in text
        assert ALICE_PUBLIC.hex()[:16] in text


# --- HKDF ----------------------------------------------------------------------


def test_rfc5869_test_case_1() -> None:
    okm = hkdf_sha256(
        bytes([0x0B] * 22),
        info=bytes.fromhex("f0f1f2f3f4f5f6f7f8f9"),
        length=42,
        salt=bytes.fromhex("000102030405060708090a0b0c"),
    )
    assert okm == bytes.fromhex("3cb25f25faacd57a90434f64d0362f2a2d2d0a90cf1a5a4c5db02d56ecc4c5bf34007208d5b887185865")


def test_hkdf_default_length_is_key_size() -> None:
    assert len(hkdf_sha256(SHARED_SECRET, b"info")) == KEY_SIZE


def test_hkdf_refuses_empty_info() -> None:
    with pytest.raises(InvalidParameter):
        hkdf_sha256(SHARED_SECRET, b"")


def test_kdf_info_refuses_empty_purpose() -> None:
    with pytest.raises(InvalidParameter):
        kdf_info("", "task", 1, 1, 2)


def test_derive_key_is_equal_on_both_sides() -> None:
    fields = dict(CONTEXT)
    alice_view = derive_key(ALICE_PRIVATE, BOB_PUBLIC, **fields)
    fields["party_a"], fields["party_b"] = fields["party_b"], fields["party_a"]
    bob_view = derive_key(BOB_PRIVATE, ALICE_PUBLIC, **fields)
    assert alice_view == bob_view
    assert len(alice_view) == KEY_SIZE
    assert alice_view != SHARED_SECRET


@pytest.mark.parametrize(
    ("field", "other"),
    [("purpose", "share"), ("task", "cifar"), ("round_id", 8), ("party_a", 4), ("party_b", 12), ("context", b"")],
)
def test_derive_key_changes_with_each_context_field(field: str, other: object) -> None:
    changed = {**CONTEXT, field: other}
    assert derive_key(ALICE_PRIVATE, BOB_PUBLIC, **changed) != derive_key(ALICE_PRIVATE, BOB_PUBLIC, **CONTEXT)


def test_derive_key_rejects_low_order_peer() -> None:
    with pytest.raises(InvalidShare):
        derive_key(ALICE_PRIVATE, bytes(32), **CONTEXT)


# --- kdf_info --------------------------------------------------------------------

_ids = st.integers(min_value=0, max_value=2**64 - 1) | st.integers(min_value=0, max_value=3)
_info_args = st.tuples(
    st.text(alphabet="ab", min_size=1, max_size=3),  # purpose
    st.text(alphabet="ab", max_size=3),  # task
    st.integers(min_value=0, max_value=2),  # round
    _ids,
    _ids,
    st.binary(max_size=2),  # context
)


def _normalised(args: tuple) -> tuple:
    purpose, task, round_id, a, b, context = args
    return (purpose, task, round_id, min(a, b), max(a, b), context)


@given(_info_args)
def test_kdf_info_is_symmetric_in_party_ids(args: tuple) -> None:
    purpose, task, round_id, a, b, context = args
    assert kdf_info(purpose, task, round_id, a, b, context) == kdf_info(purpose, task, round_id, b, a, context)


@given(_info_args, _info_args)
def test_kdf_info_equal_exactly_when_context_equal(first: tuple, second: tuple) -> None:
    # Small alphabets make equal and near-equal pairs common.
    same_info = kdf_info(*first) == kdf_info(*second)
    assert same_info == (_normalised(first) == _normalised(second))


@given(_info_args, st.integers(min_value=0, max_value=5), st.data())
def test_kdf_info_changes_when_any_single_field_changes(args: tuple, index: int, data: st.DataObject) -> None:
    strategies = [
        st.text(min_size=1, max_size=4),
        st.text(max_size=4),
        st.integers(min_value=0, max_value=2**64 - 1),
        _ids,
        _ids,
        st.binary(max_size=4),
    ]
    if index in (3, 4):
        # Replacing one id must change the unordered pair {a, b}.
        a, b = args[3], args[4]
        kept = b if index == 3 else a
        replaced = args[index]
        new = data.draw(_ids.filter(lambda v: sorted((v, kept)) != sorted((replaced, kept))))
    else:
        new = data.draw(strategies[index].filter(lambda v: v != args[index]))
    changed = args[:index] + (new,) + args[index + 1 :]
    assert kdf_info(*changed) != kdf_info(*args)


# --- encode_fields ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("left", "right"),
    [
        (("ab", "c"), ("a", "bc")),
        ((b"ab", b"c"), (b"a", b"bc")),
        (("", "a"), ("a", "")),
        (("a",), (b"a",)),
        (("1",), (1,)),
        ((b"\x00" * 8,), (0,)),
        (("",), ()),
        (("", ""), ("",)),
        ((1, 2), (2, 1)),
    ],
)
def test_encode_fields_separates_tricky_pairs(left: tuple, right: tuple) -> None:
    assert encode_fields(*left) != encode_fields(*right)


_field = st.text(max_size=3) | st.binary(max_size=3) | st.integers(min_value=0, max_value=2**64 - 1)


@given(st.lists(_field, max_size=4), st.lists(_field, max_size=4))
def test_encode_fields_is_injective(left: list, right: list) -> None:
    def key(fields: list) -> list:
        return [(type(field).__name__, field) for field in fields]

    assert (encode_fields(*left) == encode_fields(*right)) == (key(left) == key(right))


@pytest.mark.parametrize("bad", [True, 1.0, None, ["a"]])
def test_encode_fields_rejects_unsupported_types(bad: object) -> None:
    with pytest.raises(TypeError):
        encode_fields(bad)


@pytest.mark.parametrize("bad", [-1, 2**64])
def test_encode_fields_rejects_out_of_range_ints(bad: int) -> None:
    with pytest.raises(ValueError):
        encode_fields(bad)
