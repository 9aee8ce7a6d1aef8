"""Whose fault an error is decides its class (securefed.errors), and only a peer's fault blames a peer.

- a data, model or key file the operator gave: DataError (an InvalidParameter);
- a damaged securefed state file: StorageError;
- an error the protocol's own checks did not foresee while processing a peer's message: the message is
  dropped as "unprocessable", and the sender is *not* named a culprit;
- securefed misusing itself (LocalProtocolError) inside a round: the node says "local-error", never
  "authentication-failure" or anything that points at the coordinator.
"""

from __future__ import annotations

import sqlite3

import numpy as np
import pytest

import securefed.errors as errors
from securefed.crypto.identity import SigningKey
from securefed.errors import (
    DataError,
    InvalidParameter,
    LocalProtocolError,
    RemoteProtocolError,
    SecureFedError,
    StorageError,
)
from securefed.federation.messages import Refusal
from securefed.federation.store import CoordinatorStore
from securefed.learning.data import load_local_dataset
from securefed.learning.export import read_model
from securefed.secagg import client as client_module
from securefed.secagg import server as server_module
from securefed.secagg.messages import AdvertiseKeys, Stage, UnmaskShares
from securefed.wire.keys import CurveKeyPair
from tests.inprocess import InProcessFederation
from tests.secagg_harness import HonestRound


def test_every_error_class_is_a_securefed_error_and_documented() -> None:
    for name in errors.__all__:
        cls = getattr(errors, name)
        assert issubclass(cls, SecureFedError) and cls.__doc__, name
    assert issubclass(DataError, InvalidParameter)  # callers that catch InvalidParameter keep working


# --- files the operator gave -----------------------------------------------------------------


def test_a_malformed_data_file_is_a_data_error_naming_the_file(tmp_path) -> None:
    path = tmp_path / "site.csv"
    path.write_text("a,b,label\n1,2,0\n3,oops,1\n")
    with pytest.raises(DataError, match=r"site\.csv.*'oops'"):
        load_local_dataset(path, label_column="label", features=["a", "b"], classes=[0, 1])


def test_a_damaged_model_file_is_a_data_error(tmp_path) -> None:
    path = tmp_path / "model.npz"
    path.write_bytes(b"PK\x03\x04" + b"\x00" * 64)
    with pytest.raises(DataError, match=r"model\.npz"):
        read_model(path)


def test_unreadable_key_files_are_data_errors(tmp_path) -> None:
    bad = tmp_path / "identity.pem"
    bad.write_text("not a key\n")
    bad.chmod(0o600)
    with pytest.raises(DataError, match="not an unencrypted PEM private key"):
        SigningKey.load(bad)
    curve = tmp_path / "curve.key"
    curve.write_text("junk\n")
    curve.chmod(0o600)
    with pytest.raises(DataError, match="not a CURVE secret key file"):
        CurveKeyPair.load(curve)


# --- securefed's own state -------------------------------------------------------------------


def test_a_damaged_unmasking_state_is_a_storage_error(tmp_path) -> None:
    store = CoordinatorStore(tmp_path / "c.sqlite")
    try:
        aggregation = store.next_aggregation(2, "train")  # a running attempt, as a crash leaves it
        store.save_unmask_state(aggregation, 2, "train", {"server": {}}, b"\x01\x02\x03\x04")
    finally:
        store.close()
    db = sqlite3.connect(tmp_path / "c.sqlite")
    db.execute("UPDATE unmask_state SET masked_sum = ?", (b"\x09\x02\x03\x04",))
    db.commit()
    db.close()
    store = CoordinatorStore(tmp_path / "c.sqlite")
    try:
        with pytest.raises(StorageError, match=f"aggregation {aggregation} fails its checksum"):
            store.pending_unmask_state()
    finally:
        store.close()


# --- a peer's message that the checks did not foresee -----------------------------------------


def _raise(exc: BaseException):
    def validator(*_args: object) -> object:
        raise exc

    return validator


def test_the_server_drops_an_unprocessable_message_without_blaming_its_sender(monkeypatch) -> None:
    r = HonestRound(5)
    adverts = r.start()
    monkeypatch.setitem(server_module._VALIDATORS, AdvertiseKeys, _raise(KeyError("a bug here")))
    with pytest.raises(RemoteProtocolError) as caught:
        r.server.receive(adverts[0])
    assert caught.value.reason == "unprocessable" and "sender not blamed" in str(caught.value)


@pytest.mark.parametrize(
    ("raised", "blamed"),
    [(KeyError("a bug here"), False), (RemoteProtocolError("bad share", reason="bad-share"), True)],
)
def test_only_the_checks_own_refusals_name_an_unmasking_sender(monkeypatch, raised: BaseException, blamed: bool) -> None:
    r = HonestRound(10, 7, silent={10: Stage.MASKED_INPUT})
    outbox = r.start()
    while not any(isinstance(m, UnmaskShares) for m in outbox):
        outbox = r.to_clients(r.to_server(outbox))
    answer = next(m for m in outbox if isinstance(m, UnmaskShares))
    monkeypatch.setitem(server_module._VALIDATORS, UnmaskShares, _raise(raised))
    with pytest.raises(RemoteProtocolError):
        r.server.receive(answer)
    assert (answer.sender in r.server._malformed_unmask) is blamed


def test_a_client_that_cannot_process_a_message_does_not_call_it_malformed(monkeypatch) -> None:
    r = HonestRound(5)
    adverts = r.start()
    key_lists = r.to_server(adverts)
    monkeypatch.setitem(client_module._HANDLERS, type(key_lists[0].message), _raise(IndexError("a bug here")))
    with pytest.raises(RemoteProtocolError) as caught:
        r.clients[key_lists[0].to].receive(key_lists[0].message)
    assert caught.value.reason == "unprocessable"


# --- a node that fails on its own ------------------------------------------------------------


def test_a_node_reports_its_own_bug_as_its_own_not_as_an_authentication_failure(tmp_path, monkeypatch) -> None:
    fed = InProcessFederation(tmp_path, ["a", "b", "c", "d"], rounds=1)
    original = client_module.ClientProtocol.receive

    def broken(self, message):
        if type(message).__name__ == "SeedRevealList":
            raise LocalProtocolError("state misuse planted by the test")
        return original(self, message)

    monkeypatch.setattr(client_module.ClientProtocol, "receive", broken)
    fed.run_until(lambda f: any(f.said(name, Refusal) for name in f.names), max_steps=400)
    reasons = {body.reason for name in fed.names for _, body in fed.said(name, Refusal)}
    assert reasons == {"local-error"}
    assert not fed.coordinator.excluded_for_run  # nobody is blamed for a node's own bug
    assert not np.any([r.participants for r in fed.store.rounds()])
