#!/usr/bin/env python3
"""Generate the SOS protocol v1 test vectors with an independent Fernet implementation.

Requires the `cryptography` package (pip install cryptography). Writes v1.json beside this file.
The Rust tests in shared/tests/vectors.rs check that sos-shared opens every datagram and
encodes every message to exactly the same plaintext.
"""
import base64, hashlib, json, os
from cryptography.fernet import Fernet

RAW_KEY = bytes(range(32))                      # 00 01 02 ... 1f
KEY = base64.urlsafe_b64encode(RAW_KEY).decode()
KEY_ID = hashlib.sha256(b"SOS key id v1\x00" + RAW_KEY).digest()[:8]
TIMESTAMP = 1700000000                          # 2023-11-14 22:13:20 UTC
IV = bytes(range(0xa0, 0xb0))                   # a0 a1 ... af
ALERT = "0123456789abcdef0123456789abcdef"

def enc(obj):
    # serde_json's compact form: no spaces, fields in declaration order, UTF-8 unescaped.
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False).encode()

messages = [
    ("sos", {"kind": "sos", "alert_id": ALERT, "test": False, "triggered_at": 1699999998,
             "attempt": 0, "user": "alice", "host": "desk-12", "ip": "10.0.0.12",
             "location": "Building A, floor 2, reception", "message": "aggressive visitor",
             "agent": "sos-agent/0.1.0"}),
    ("sos_test_retry", {"kind": "sos", "alert_id": ALERT, "test": True, "triggered_at": 1699999998,
             "attempt": 3, "user": "José", "host": "desk-12", "ip": "fe80::1",
             "location": "", "message": "", "agent": "sos-agent/0.1.0"}),
    ("sos_ack", {"kind": "sos_ack", "alert_id": ALERT, "status": "stored", "server_time": 1700000001}),
    ("sos_ack_duplicate", {"kind": "sos_ack", "alert_id": ALERT, "status": "duplicate", "server_time": 1700000001}),
    ("cancel", {"kind": "cancel", "alert_id": ALERT, "reason": "pressed by accident"}),
    ("cancel_ack", {"kind": "cancel_ack", "alert_id": ALERT, "server_time": 1700000001}),
    ("heartbeat", {"kind": "heartbeat", "user": "alice", "host": "desk-12", "ip": "10.0.0.12",
                   "pad": "0" * 64, "responder": False}),
    ("heartbeat_responder", {"kind": "heartbeat", "user": "sam", "host": "sec-desk", "ip": "10.0.0.40",
                   "pad": "0" * 64, "responder": True}),
    ("heartbeat_ack", {"kind": "heartbeat_ack", "server_time": 1700000001, "notices": [
        {"alert_id": ALERT, "event": "acknowledged", "responder": "Sam (security)", "note": "on my way",
         "at": 1700000000}]}),
    ("responder_notice", {"kind": "responder_notice", "alert_id": ALERT, "event": "acknowledged",
                          "responder": "Sam (security)", "note": "on my way", "at": 1700000000}),
    ("responder_notice_unanswered", {"kind": "responder_notice", "alert_id": ALERT, "event": "unanswered",
                          "responder": "", "note": "", "at": 1700000060}),
    ("alert_broadcast", {"kind": "alert_broadcast", "alert_id": ALERT, "test": False,
                         "triggered_at": 1699999998, "user": "alice", "host": "desk-12",
                         "ip": "10.0.0.12", "location": "Building A, floor 2, reception",
                         "message": "aggressive visitor", "state": "open", "responder": "", "note": "",
                         "seq": 1, "reminder": False}),
    ("alert_broadcast_acknowledged", {"kind": "alert_broadcast", "alert_id": ALERT, "test": True,
                         "triggered_at": 1699999998, "user": "alice", "host": "desk-12",
                         "ip": "10.0.0.12", "location": "Building A, floor 2, reception",
                         "message": "", "state": "acknowledged", "responder": "Sam (security)",
                         "note": "on my way", "seq": 3, "reminder": False}),
    ("respond", {"kind": "respond", "alert_id": ALERT, "note": "on my way", "pad": "0" * 20}),
    ("respond_ack", {"kind": "respond_ack", "alert_id": ALERT, "status": "acknowledged", "server_time": 1700000001}),
    ("respond_ack_already", {"kind": "respond_ack", "alert_id": ALERT, "status": "already", "server_time": 1700000001}),
    ("broadcast_receipt", {"kind": "broadcast_receipt", "alert_id": ALERT, "seq": 3}),
    ("notice_receipt", {"kind": "notice_receipt", "alert_id": ALERT, "event": "acknowledged"}),
    ("time_hint", {"kind": "time_hint", "server_time": 1700000000, "token_time": 1699999400}),
    ("forward_sos", {"kind": "forward_sos", "alert_id": ALERT, "test": False, "triggered_at": 1699999998,
                     "user": "alice", "host": "desk-12", "ip": "10.0.0.12",
                     "location": "Building A, floor 2, reception", "message": "aggressive visitor",
                     "agent": "", "sender": "Reception desk 12", "sender_host": "desk-12"}),
    ("forward_update", {"kind": "forward_update", "alert_id": ALERT, "event": "acknowledged",
                        "responder": "Sam (security)", "note": "on my way", "pad": "0" * 8}),
    ("forward_update_ack", {"kind": "forward_update_ack", "alert_id": ALERT, "event": "acknowledged",
                            "server_time": 1700000001}),
]

f = Fernet(KEY)
header = b"SOS" + bytes([1]) + KEY_ID
vectors = []
for name, obj in messages:
    plaintext = enc(obj)
    token = f._encrypt_from_parts(plaintext, TIMESTAMP, IV)
    datagram = header + token
    assert len(datagram) <= 1200
    vectors.append({"name": name, "plaintext": plaintext.decode(), "datagram_hex": datagram.hex(),
                    "datagram_len": len(datagram)})

out = {
    "comment": "SOS protocol v1 test vectors; generated by generate.py with Python cryptography's Fernet",
    "key": KEY, "key_id_hex": KEY_ID.hex(), "timestamp": TIMESTAMP, "iv_hex": IV.hex(),
    "header_hex": header.hex(), "vectors": vectors,
}
with open(os.path.join(os.path.dirname(os.path.abspath(__file__)), "v1.json"), "w") as fh:
    json.dump(out, fh, indent=2, ensure_ascii=False)
    fh.write("\n")
