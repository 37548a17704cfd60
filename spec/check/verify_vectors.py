#!/usr/bin/env python3
"""Independent check of spec/vectors against spec/PROTOCOL.md.

Written from PROTOCOL.md and spec/vectors/README.md alone, without reading the Rust
implementation, to show that the specification is complete enough to implement the codec,
the handshake and the record layer in another language.

Usage:  python3 spec/check/verify_vectors.py [VECTOR_DIR]
Needs:  pip install cryptography  (BLAKE3 is written out below; no package needed)
Exit status 0 when every vector checks, 1 otherwise.
"""

import base64
import hashlib
import hmac
import os
import struct
import sys
from pathlib import Path

from cryptography.hazmat.primitives import padding as sym_padding
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives import serialization

# --------------------------------------------------------------------------------------------
# Vector file format (spec/vectors/README.md)


class Vector:
    def __init__(self, name, line, defaults):
        self.name = name
        self.line = line
        self.fields = []
        self.defaults = defaults

    def raw(self, key):
        for k, v in self.fields:
            if k == key:
                return v
        for k, v in self.defaults:
            if k == key:
                return v
        raise KeyError(f"vector {self.name}: no field {key}")

    def has(self, key):
        try:
            self.raw(key)
            return True
        except KeyError:
            return False

    def all(self, key):
        return [v for k, v in self.fields if k == key]

    def hex(self, key):
        return parse_hex(self.raw(key))

    def int(self, key):
        return parse_int(self.raw(key))

    def str(self, key):
        return parse_string(self.raw(key))


def parse_hex(value):
    return bytes.fromhex("".join(value.split()))


def parse_int(value):
    neg = value.startswith("-")
    digits = value[1:] if neg else value
    n = int(digits[2:], 16) if digits.startswith("0x") else int(digits, 10)
    return -n if neg else n


def parse_string(value):
    if len(value) < 2 or value[0] != '"' or value[-1] != '"':
        raise ValueError(f"not a quoted string: {value!r}")
    return value[1:-1]


def parse_file(path):
    defaults = []
    vectors = []
    last_key = False
    for lineno, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            last_key = False
            continue
        if line[0] in " \t":
            if not last_key:
                raise ValueError(f"{path}:{lineno}: continuation without a field")
            fields = vectors[-1].fields if vectors else defaults
            k, v = fields[-1]
            fields[-1] = (k, v + " " + stripped)
            continue
        key, _, value = stripped.partition(":")
        key, value = key.strip(), value.strip()
        if key == "vector":
            vectors.append(Vector(value, lineno, list(defaults)))
        else:
            (vectors[-1].fields if vectors else defaults).append((key, value))
        last_key = True
    return vectors


# --------------------------------------------------------------------------------------------
# Constants from PROTOCOL.md

MAGIC = 0xFE
HEADER_LEN = 12

T_CLIENT_HELLO, T_SERVER_HELLO, T_SERVER_FINISHED, T_CLIENT_FINISHED = 0x01, 0x02, 0x03, 0x04
T_REQUEST, T_RESPONSE, T_DATA, T_END, T_ERROR, T_CANCEL = 0x10, 0x11, 0x12, 0x13, 0x14, 0x15
T_PING, T_PONG = 0x20, 0x21
S_HANDSHAKE, S_LIST, S_STAT, S_FETCH, S_ECHO, S_DIGEST = 0x00, 0x01, 0x02, 0x03, 0x04, 0x05
S_PUT = 0x06  # uploads, §3.12

CODES = {
    "BAD_FRAME": 0x0101,
    "UNSUPPORTED_VERSION": 0x0102,
    "UNKNOWN_REQUEST": 0x0103,
    "MALFORMED_MESSAGE": 0x0104,
    "DUPLICATE_ID": 0x0105,
    "UNEXPECTED_MESSAGE": 0x0106,
    "AUTHENTICATION_FAILED": 0x0201,
    "PLAINTEXT_REFUSED": 0x0202,
    "BAD_RECORD": 0x0203,
    "NOT_FOUND": 0x0301,
    "NOT_A_FILE": 0x0302,
    "NOT_A_DIRECTORY": 0x0303,
    "PERMISSION_DENIED": 0x0304,
    "INVALID_PATH": 0x0305,
    "NAME_TOO_LONG": 0x0306,
    "INVALID_RANGE": 0x0307,
    "FILE_CHANGED": 0x0308,
    "CANCELLED": 0x0309,
    "TOO_LARGE": 0x0401,
    "BUSY": 0x0402,
    "TIMEOUT": 0x0403,
    "INTERNAL": 0x0501,
    "SHUTTING_DOWN": 0x0502,
    # uploads (§3.12)
    "READ_ONLY": 0x030A,
    "ALREADY_EXISTS": 0x030B,
    "DIGEST_MISMATCH": 0x030C,
    "QUOTA_EXCEEDED": 0x0404,
    "NO_SPACE": 0x0405,
    # offers (§3.13)
    "OFFER_DECLINED": 0x030D,
    "NOT_OFFERED": 0x030E,
    "ALREADY_HAVE": 0x030F,
}

DEFAULT_MAX_BODY = 1 << 20
MAX_BODY_LIMIT = 16 << 20
HANDSHAKE_MAX_BODY = 2048
TO_END = 0xFFFFFFFFFFFFFFFF

LABELS = {
    "c2s_enc": b"ferry v1 c2s enc",
    "c2s_mac": b"ferry v1 c2s mac",
    "s2c_enc": b"ferry v1 s2c enc",
    "s2c_mac": b"ferry v1 s2c mac",
    "server_finished_key": b"ferry v1 server finished",
    "client_finished_key": b"ferry v1 client finished",
}

# Version 2 (§5.2): the same keys under v2 labels, plus a 12-byte GCM IV per direction.
LABELS_V2 = {k: v.replace(b" v1 ", b" v2 ") for k, v in LABELS.items()}
IV_LABELS_V2 = {"c2s_gcm_iv": b"ferry v2 c2s iv", "s2c_gcm_iv": b"ferry v2 s2c iv"}
KEY_HINT_LABEL = b"ferry v2 key hint"

# Record suites (§4.2) by wire number and by the name the vectors (and --suite) use.
SUITE_CBC, SUITE_GCM = 0x01, 0x02
SUITE_NAMES = {"cbc-hmac": SUITE_CBC, "gcm": SUITE_GCM}


class ProtocolError(Exception):
    def __init__(self, code, why):
        super().__init__(f"{why} (0x{code:04x})")
        self.code = code


def fail(name, why):
    raise ProtocolError(CODES[name], why)


# --------------------------------------------------------------------------------------------
# Header and framing (§2)


def encode_header(kind, version, service, rid, length):
    return struct.pack(">BBBBII", kind, MAGIC, version, service, rid, length)


def decode_header(b):
    kind, magic, version, service, rid, length = struct.unpack(">BBBBII", b[:12])
    return dict(type=kind, magic=magic, version=version, service=service, id=rid, length=length)


def frame_decode(stream, max_body, versions=(1,)):
    """§2.4 steps 1-4 for one frame. Returns (header, body, rest) or None if incomplete."""
    if len(stream) >= 2 and stream[1] != MAGIC:
        fail("BAD_FRAME", "bad magic")
    if len(stream) < HEADER_LEN:
        return None
    h = decode_header(stream)
    if h["version"] not in versions:
        fail("UNSUPPORTED_VERSION", "version")
    if h["length"] > min(max_body, MAX_BODY_LIMIT):
        fail("TOO_LARGE", "length over cap")
    end = HEADER_LEN + h["length"]
    if len(stream) < end:
        return None
    return h, stream[HEADER_LEN:end], stream[end:]


# --------------------------------------------------------------------------------------------
# Bodies (§3, §4.2)


class Reader:
    def __init__(self, data):
        self.data = data
        self.pos = 0

    def take(self, n):
        if self.pos + n > len(self.data):
            fail("MALFORMED_MESSAGE", "truncated body")
        out = self.data[self.pos:self.pos + n]
        self.pos += n
        return out

    def u8(self):
        return self.take(1)[0]

    def u16(self):
        return struct.unpack(">H", self.take(2))[0]

    def u32(self):
        return struct.unpack(">I", self.take(4))[0]

    def u64(self):
        return struct.unpack(">Q", self.take(8))[0]

    def i64(self):
        return struct.unpack(">q", self.take(8))[0]

    def str(self):
        raw = self.take(self.u16())
        try:
            return raw.decode("utf-8", errors="strict")
        except UnicodeDecodeError:
            fail("MALFORMED_MESSAGE", "bad utf-8")

    def end(self):
        if self.pos != len(self.data):
            fail("MALFORMED_MESSAGE", "trailing bytes")


def put_str(s):
    raw = s.encode("utf-8")
    return struct.pack(">H", len(raw)) + raw


LINK_FLAG = 0x80  # §3.4: a link inside the root; the low bits are its target's kind


def decode_entry(r):
    e = dict(name=r.str(), kind=r.u8(), size=r.u64(), mtime_secs=r.i64(), mtime_nanos=r.u32())
    if e["mtime_nanos"] >= 1_000_000_000:
        fail("MALFORMED_MESSAGE", "mtime_nanos")
    e["mode"] = r.u32()
    if e["kind"] & LINK_FLAG:
        e["kind"] &= ~LINK_FLAG
        e["link"] = r.str()
    return e


def encode_entry(e):
    kind = e["kind"] | (LINK_FLAG if "link" in e else 0)
    out = put_str(e["name"]) + struct.pack(
        ">BQqII", kind, e["size"], e["mtime_secs"], e["mtime_nanos"], e["mode"]
    )
    return out + put_str(e["link"]) if "link" in e else out


def check_mode(mode):
    if mode not in (0, 1):
        fail("MALFORMED_MESSAGE", "mode")
    return mode


def decode_message(kind, service, body):
    """Returns (message name, fields) or raises ProtocolError (§3.2 table, §9)."""
    r = Reader(body)
    pair = (kind, service)
    if pair == (T_CLIENT_HELLO, S_HANDSHAKE):
        lo, hi = r.u8(), r.u8()
        if lo == 0 or lo > hi:
            fail("MALFORMED_MESSAGE", "version range")
        m = dict(min_version=lo, max_version=hi, mode=check_mode(r.u8()),
                 nonce=r.take(32), key_share=r.take(32))
        if hi >= 2:  # §4.2: the offer and the hint follow when max_version >= 2
            n = r.u8()
            suites = r.take(n)
            if not 1 <= n <= 16 or 0 in suites or len(set(suites)) != n:
                fail("MALFORMED_MESSAGE", "suite offer")
            m["suites"] = suites
            hint_len = r.u8()
            if hint_len not in (0, 8):
                fail("MALFORMED_MESSAGE", "key hint length")
            if hint_len:
                m["key_hint"] = r.take(8)
            if hi > 2:
                m["rest"] = r.take(len(r.data) - r.pos)
                if not m["rest"]:
                    del m["rest"]
        name = "ClientHello"
    elif pair == (T_SERVER_HELLO, S_HANDSHAKE):
        m = dict(version=r.u8(), mode=check_mode(r.u8()), nonce=r.take(32), key_share=r.take(32))
        if m["version"] >= 2:
            m["suite"] = r.u8()
        name = "ServerHello"
    elif pair == (T_SERVER_FINISHED, S_HANDSHAKE):
        m, name = dict(mac=r.take(32)), "ServerFinished"
    elif pair == (T_CLIENT_FINISHED, S_HANDSHAKE):
        m, name = dict(mac=r.take(32)), "ClientFinished"
    elif pair == (T_REQUEST, S_LIST):
        path = r.str()
        flags = r.u8()
        if flags & ~0x81:  # 0x01 recursive, 0x80 link targets (§3.5)
            fail("MALFORMED_MESSAGE", "list flags")
        m = dict(path=path, recursive=flags & 1, max_depth=r.u16(), links=flags >> 7)
        name = "ListRequest"
    elif pair == (T_REQUEST, S_STAT):
        m, name = dict(path=r.str()), "StatRequest"
    elif pair == (T_REQUEST, S_FETCH):
        m, name = dict(path=r.str(), offset=r.u64(), length=r.u64()), "FetchRequest"
    elif pair == (T_REQUEST, S_DIGEST):
        m, name = dict(path=r.str()), "DigestRequest"
    elif pair == (T_RESPONSE, S_DIGEST):
        m = dict(size=r.u64(), mtime_secs=r.i64(), mtime_nanos=r.u32(), digest=r.take(32))
        r.end()
        if m["mtime_nanos"] >= 1_000_000_000:
            fail("MALFORMED_MESSAGE", "mtime_nanos")
        name = "DigestResponse"
    elif pair == (T_RESPONSE, S_LIST):
        count = r.u16()
        m = dict(entries=[decode_entry(r) for _ in range(count)])
        name = "ListPage"
    elif pair == (T_RESPONSE, S_STAT):
        m, name = dict(entry=decode_entry(r)), "StatResponse"
    elif pair == (T_RESPONSE, S_FETCH):
        m = dict(size=r.u64(), mtime_secs=r.i64(), mtime_nanos=r.u32(), offset=r.u64(),
                 length=r.u64())
        r.end()
        if m["offset"] + m["length"] > m["size"]:  # Python ints: overflow counts as too big
            fail("MALFORMED_MESSAGE", "fetch range")
        if m["mtime_nanos"] >= 1_000_000_000:
            fail("MALFORMED_MESSAGE", "mtime_nanos")
        name = "FetchResponse"
    elif pair == (T_DATA, S_FETCH):
        m, name = dict(payload=r.take(len(body))), "Data"
    elif pair == (T_END, S_LIST):
        m, name = dict(entries=r.u64()), "ListEnd"
    elif pair == (T_END, S_FETCH):
        m, name = dict(bytes=r.u64(), digest=r.take(32)), "FetchEnd"
    elif kind == T_ERROR:
        m = dict(error_service=service, category=r.u8(), code=r.u16(), error_message=r.str())
        name = "Error"
    elif service == S_PUT and kind in (T_REQUEST, T_RESPONSE, T_DATA, T_END):
        name, m = decode_put(kind, r, body)
    elif kind == T_CANCEL and service in (S_LIST, S_STAT, S_FETCH, S_DIGEST, S_PUT):
        m, name = dict(cancel_service=service), "Cancel"
    elif pair == (T_PING, S_ECHO):
        m, name = dict(payload=r.take(len(body))), "Ping"
    elif pair == (T_PONG, S_ECHO):
        m, name = dict(payload=r.take(len(body))), "Pong"
    else:
        fail("UNKNOWN_REQUEST", f"no message ({kind:#x}, {service:#x})")
    r.end()
    return name, m


# Put (§3.12): its own functions, so the upload messages read as one unit.

PUT_FLAGS = 0x0F  # OVERWRITE 0x01, PARENTS 0x02, RESTART 0x04, DIRECTORY 0x08
PUT_DIRECTORY = 0x08
PUT_MAX_MODE = 0o7777


def decode_put(kind, r, body):
    """Decodes a PUT body; the caller checks that nothing is left over."""
    if kind == T_REQUEST:
        m = dict(path=r.str(), size=r.u64(), mode=r.u32(), flags=r.u8(), digest=r.take(32))
        r.end()
        if m["mode"] > PUT_MAX_MODE:
            fail("MALFORMED_MESSAGE", "put mode")
        if m["flags"] & ~PUT_FLAGS:
            fail("MALFORMED_MESSAGE", "put flags")
        if m["flags"] & PUT_DIRECTORY and (
                m["flags"] & 0x05 or m["size"] != 0 or m["digest"] != bytes(32)):
            fail("MALFORMED_MESSAGE", "a put directory carries no content")
        return "PutRequest", m
    if kind == T_RESPONSE:
        m = dict(offset=r.u64(), limit=r.u64(), prefix=r.take(32))
        r.end()
        if m["limit"] < m["offset"]:
            fail("MALFORMED_MESSAGE", "put limit below offset")
        return "PutResponse", m
    if kind == T_DATA:
        return "PutData", dict(payload=r.take(len(body)))
    return "PutEnd", dict(bytes=r.u64(), digest=r.take(32))


def encode_put(name, m):
    if name == "PutRequest":
        return T_REQUEST, S_PUT, put_str(m["path"]) + struct.pack(
            ">QIB", m["size"], m["mode"], m["flags"]) + m["digest"]
    if name == "PutResponse":
        return T_RESPONSE, S_PUT, struct.pack(">QQ", m["offset"], m["limit"]) + m["prefix"]
    if name == "PutData":
        return T_DATA, S_PUT, m["payload"]
    if name == "PutEnd":
        return T_END, S_PUT, struct.pack(">Q", m["bytes"]) + m["digest"]
    raise ValueError(name)


def put_fields_from(v):
    name = v.raw("message")
    if name == "PutRequest":
        return dict(path=v.str("path"), size=v.int("size"), mode=v.int("mode"),
                    flags=v.int("flags"), digest=v.hex("digest"))
    if name == "PutResponse":
        return dict(offset=v.int("offset"), limit=v.int("limit"), prefix=v.hex("prefix"))
    if name == "PutData":
        return dict(payload=v.hex("payload"))
    return dict(bytes=v.int("bytes"), digest=v.hex("digest"))


def check_put_prefix_vectors(v):
    """A PutResponse's prefix is the BLAKE3 of the bytes held (§3.12); the vectors hold
    "he" (2 bytes of "hello") and nothing, checked with this file's own BLAKE3."""
    if v.raw("message") != "PutResponse":
        return
    held = {0: b"", 2: b"he"}[v.int("offset")]
    check(blake3(held) == v.hex("prefix"), "prefix is BLAKE3 of the held bytes")


def encode_client_hello(m):
    body = bytes([m["min_version"], m["max_version"], m["mode"]]) + m["nonce"] + m["key_share"]
    if m["max_version"] >= 2:
        hint = m.get("key_hint", b"")
        body += bytes([len(m["suites"])]) + m["suites"] + bytes([len(hint)]) + hint
        body += m.get("rest", b"")
    return body


def encode_message(name, m):
    """Returns (type, service, body)."""
    if name.startswith("Put"):
        return encode_put(name, m)
    if name == "ClientHello":
        return T_CLIENT_HELLO, S_HANDSHAKE, encode_client_hello(m)
    if name == "ServerHello":
        body = bytes([m["version"], m["mode"]]) + m["nonce"] + m["key_share"]
        if m["version"] >= 2:
            body += bytes([m["suite"]])
        return T_SERVER_HELLO, S_HANDSHAKE, body
    if name == "ServerFinished":
        return T_SERVER_FINISHED, S_HANDSHAKE, m["mac"]
    if name == "ClientFinished":
        return T_CLIENT_FINISHED, S_HANDSHAKE, m["mac"]
    if name == "ListRequest":
        flags = m["recursive"] | (0x80 if m["links"] else 0)
        return T_REQUEST, S_LIST, put_str(m["path"]) + struct.pack(">BH", flags, m["max_depth"])
    if name == "StatRequest":
        return T_REQUEST, S_STAT, put_str(m["path"])
    if name == "FetchRequest":
        return T_REQUEST, S_FETCH, put_str(m["path"]) + struct.pack(">QQ", m["offset"], m["length"])
    if name == "DigestRequest":
        return T_REQUEST, S_DIGEST, put_str(m["path"])
    if name == "DigestResponse":
        return T_RESPONSE, S_DIGEST, struct.pack(
            ">QqI", m["size"], m["mtime_secs"], m["mtime_nanos"]) + m["digest"]
    if name == "ListPage":
        return T_RESPONSE, S_LIST, struct.pack(">H", len(m["entries"])) + b"".join(
            encode_entry(e) for e in m["entries"])
    if name == "StatResponse":
        return T_RESPONSE, S_STAT, encode_entry(m["entry"])
    if name == "FetchResponse":
        return T_RESPONSE, S_FETCH, struct.pack(
            ">QqIQQ", m["size"], m["mtime_secs"], m["mtime_nanos"], m["offset"], m["length"])
    if name == "Data":
        return T_DATA, S_FETCH, m["payload"]
    if name == "ListEnd":
        return T_END, S_LIST, struct.pack(">Q", m["entries"])
    if name == "FetchEnd":
        return T_END, S_FETCH, struct.pack(">Q", m["bytes"]) + m["digest"]
    if name == "Error":
        return T_ERROR, m["error_service"], struct.pack(">BH", m["category"], m["code"]) + put_str(
            m["error_message"])
    if name == "Cancel":
        return T_CANCEL, m["cancel_service"], b""
    if name == "Ping":
        return T_PING, S_ECHO, m["payload"]
    if name == "Pong":
        return T_PONG, S_ECHO, m["payload"]
    raise ValueError(name)


def frame(kind, service, rid, body, version=1):
    return encode_header(kind, version, service, rid, len(body)) + body


def entry_from(v, prefix):
    e = dict(name=v.str(prefix + "name"), kind=v.int(prefix + "kind"), size=v.int(prefix + "size"),
             mtime_secs=v.int(prefix + "mtime_secs"), mtime_nanos=v.int(prefix + "mtime_nanos"),
             mode=v.int(prefix + "mode"))
    if v.has(prefix + "link"):
        e["link"] = v.str(prefix + "link")
    return e


def fields_from(v):
    name = v.raw("message")
    hexes = {"nonce", "key_share", "mac", "payload", "digest"}
    strings = {"path", "error_message"}
    if name.startswith("Put"):
        return name, put_fields_from(v)
    if name == "ListPage":
        return name, dict(entries=[entry_from(v, f"entry{i}.") for i in range(v.int("entries"))])
    if name == "StatResponse":
        return name, dict(entry=entry_from(v, "entry."))
    keys = {
        "ClientHello": ["min_version", "max_version", "mode", "nonce", "key_share"],
        "ServerHello": ["version", "mode", "nonce", "key_share"],
        "ServerFinished": ["mac"], "ClientFinished": ["mac"],
        "ListRequest": ["path", "recursive", "max_depth"],
        "StatRequest": ["path"],
        "FetchRequest": ["path", "offset", "length"],
        "DigestRequest": ["path"],
        "DigestResponse": ["size", "mtime_secs", "mtime_nanos", "digest"],
        "FetchResponse": ["size", "mtime_secs", "mtime_nanos", "offset", "length"],
        "Data": ["payload"], "Ping": ["payload"], "Pong": ["payload"],
        "ListEnd": ["entries"], "FetchEnd": ["bytes", "digest"],
        "Error": ["error_service", "category", "code", "error_message"],
        "Cancel": ["cancel_service"],
    }[name]
    out = {}
    for k in keys:
        out[k] = v.hex(k) if k in hexes else v.str(k) if k in strings else v.int(k)
    if name == "ListRequest":
        out["links"] = v.int("links") if v.has("links") else 0
    for k in ("suites", "key_hint", "rest"):  # version-2 ClientHello fields
        if name == "ClientHello" and v.has(k):
            out[k] = v.hex(k)
    if name == "ServerHello" and v.has("suite"):
        out["suite"] = v.int("suite")
    return name, out


# --------------------------------------------------------------------------------------------
# Crypto (§5)


def hmac256(key, *parts):
    h = hmac.new(key, digestmod=hashlib.sha256)
    for p in parts:
        h.update(p)
    return h.digest()


def x25519_public(secret):
    sk = X25519PrivateKey.from_private_bytes(secret)
    return sk.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def x25519(secret, peer):
    """DH with the contributory check of §5.1."""
    try:
        shared = X25519PrivateKey.from_private_bytes(secret).exchange(
            X25519PublicKey.from_public_bytes(peer))
    except ValueError:  # the library refuses an all-zero result itself
        fail("AUTHENTICATION_FAILED", "low-order share")
    if shared == bytes(32):
        fail("AUTHENTICATION_FAILED", "low-order share")
    return shared


def key_schedule(psk, dh, th, version=1):
    prk = hmac256(th, psk + dh)  # HKDF-Extract(salt = TH, IKM = PSK || DH)
    labels = LABELS_V2 if version >= 2 else LABELS
    keys = {name: hmac256(prk, label + b"\x01") for name, label in labels.items()}
    if version >= 2:  # HKDF-Expand with L = 12: the first 12 bytes of T(1)
        for name, label in IV_LABELS_V2.items():
            keys[name] = hmac256(prk, label + b"\x01")[:12]
    keys["prk"] = prk
    keys["server_finished_mac"] = hmac256(keys["server_finished_key"], th)
    keys["client_finished_mac"] = hmac256(keys["client_finished_key"], th)
    return keys


def seal(enc_key, mac_key, seq, kind, version, service, rid, plaintext, iv):
    padder = sym_padding.PKCS7(128).padder()
    padded = padder.update(plaintext) + padder.finalize()
    enc = Cipher(algorithms.AES(enc_key), modes.CBC(iv)).encryptor()
    ct = enc.update(padded) + enc.finalize()
    header = encode_header(kind, version, service, rid, 16 + len(ct) + 32)
    tag = hmac256(mac_key, struct.pack(">Q", seq), header, iv, ct)
    return header + iv + ct + tag


def open_record(enc_key, mac_key, seq, header, body):
    """§5.4. Every failure is the same BAD_RECORD."""
    n = len(body)
    if n < 64 or (n - 48) % 16 != 0:
        fail("BAD_RECORD", "length")
    iv, ct, tag = body[:16], body[16:n - 32], body[n - 32:]
    expected = hmac256(mac_key, struct.pack(">Q", seq), header, iv, ct)
    if not hmac.compare_digest(expected, tag):
        fail("BAD_RECORD", "tag")
    dec = Cipher(algorithms.AES(enc_key), modes.CBC(iv)).decryptor()
    padded = dec.update(ct) + dec.finalize()
    p = padded[-1]
    if not 1 <= p <= 16 or padded[-p:] != bytes([p]) * p:
        fail("BAD_RECORD", "padding")
    return padded[:-p]


def gcm_nonce(iv, seq):
    """§5.3.2: the direction's IV with the sequence number XORed into its last 8 bytes."""
    return iv[:4] + bytes(a ^ b for a, b in zip(iv[4:], struct.pack(">Q", seq)))


def seal_gcm(enc_key, iv, seq, kind, version, service, rid, plaintext):
    header = encode_header(kind, version, service, rid, len(plaintext) + 16)
    return header + AESGCM(enc_key).encrypt(gcm_nonce(iv, seq), plaintext, header)


def open_gcm(enc_key, iv, seq, header, body):
    """§5.4 for AES_256_GCM. Every failure is the same BAD_RECORD."""
    if len(body) < 16:
        fail("BAD_RECORD", "length")
    try:
        return AESGCM(enc_key).decrypt(gcm_nonce(iv, seq), body, header)
    except Exception:  # cryptography's InvalidTag
        fail("BAD_RECORD", "tag")


def key_hint(psk):
    return hmac256(psk, KEY_HINT_LABEL)[:8]


def error_frame(code_name, message):
    """§4.4: the plaintext error frame that ends a failed handshake."""
    code = CODES[code_name]
    body = struct.pack(">BH", code >> 8, code) + put_str(message)
    return frame(T_ERROR, S_HANDSHAKE, 0, body)


HANDSHAKE_MESSAGES = {
    "AUTHENTICATION_FAILED": "authentication failed",
    "PLAINTEXT_REFUSED": "plaintext sessions are not allowed by this server",
}

VERSIONS = (1, 2)  # [min, max] this checker speaks


class Server:
    """§4.5 server state machine; `suites`: the suite ids it accepts (§4.3)."""

    def __init__(self, psk, nonce, secret, allow_plaintext, suites=(SUITE_GCM, SUITE_CBC)):
        self.psk, self.nonce, self.secret = psk, nonce, secret
        self.allow_plaintext = allow_plaintext
        self.suites = suites
        self.state = "AWAIT_CLIENT_HELLO"

    def handle(self, raw):
        h, body, rest = frame_decode(raw, HANDSHAKE_MAX_BODY)
        assert rest == b""
        try:
            name, m = decode_message(h["type"], h["service"], body)
        except ProtocolError:
            fail("AUTHENTICATION_FAILED", "malformed")
        if name == "Error":
            raise ProtocolError(m["code"], "peer error")
        if self.state == "AWAIT_CLIENT_HELLO" and name == "ClientHello":
            v = min(m["max_version"], VERSIONS[1])
            if v < m["min_version"] or v < VERSIONS[0]:
                fail("UNSUPPORTED_VERSION", "no common version")
            offer = m["suites"] if v >= 2 else bytes([SUITE_CBC])
            chosen = next((s for s in offer if s in self.suites), None)
            if chosen is None:
                fail("UNSUPPORTED_VERSION", "no common suite")
            if m["mode"] == 1 and not self.allow_plaintext:
                fail("PLAINTEXT_REFUSED", "plaintext")
            share = x25519_public(self.secret)
            body = bytes([v, m["mode"]]) + self.nonce + share + (bytes([chosen]) if v >= 2 else b"")
            sh = frame(T_SERVER_HELLO, S_HANDSHAKE, 0, body)
            th = hashlib.sha256(raw + sh).digest()
            dh = x25519(self.secret, m["key_share"])
            self.version, self.suite = v, chosen
            self.keys = key_schedule(self.psk, dh, th, v)
            self.state = "AWAIT_CLIENT_FINISHED"
            return sh + frame(T_SERVER_FINISHED, S_HANDSHAKE, 0, self.keys["server_finished_mac"])
        if self.state == "AWAIT_CLIENT_FINISHED" and name == "ClientFinished":
            if not hmac.compare_digest(m["mac"], self.keys["client_finished_mac"]):
                fail("AUTHENTICATION_FAILED", "client finished")
            self.state = "ESTABLISHED"
            return b""
        fail("AUTHENTICATION_FAILED", "unexpected message")


class Client:
    """§4.5 client state machine. `suites`: the ids it offers, most preferred first; CBC +
    HMAC alone is sent as a version-1 hello (§4.3). `hint`: whether it sends the key hint."""

    def __init__(self, psk, nonce, secret, mode, suites=bytes([SUITE_CBC]), hint=False):
        self.psk, self.secret, self.mode = psk, secret, mode
        self.max_version = 1 if suites == bytes([SUITE_CBC]) else 2
        self.offer = suites
        m = dict(min_version=VERSIONS[0], max_version=self.max_version, mode=mode, nonce=nonce,
                 key_share=x25519_public(secret), suites=suites)
        if hint:
            m["key_hint"] = key_hint(psk)
        self.client_hello = frame(T_CLIENT_HELLO, S_HANDSHAKE, 0, encode_client_hello(m))
        self.state = "AWAIT_SERVER_HELLO"

    def handle(self, raw):
        h, body, rest = frame_decode(raw, HANDSHAKE_MAX_BODY)
        assert rest == b""
        try:
            name, m = decode_message(h["type"], h["service"], body)
        except ProtocolError:
            fail("AUTHENTICATION_FAILED", "malformed")
        if name == "Error":
            raise ProtocolError(m["code"], "peer error")
        if self.state == "AWAIT_SERVER_HELLO" and name == "ServerHello":
            if not VERSIONS[0] <= m["version"] <= self.max_version or m["mode"] != self.mode:
                fail("AUTHENTICATION_FAILED", "version or mode")
            suite = m["suite"] if m["version"] >= 2 else SUITE_CBC
            if suite not in self.offer:
                fail("AUTHENTICATION_FAILED", "suite not offered")
            th = hashlib.sha256(self.client_hello + raw).digest()
            dh = x25519(self.secret, m["key_share"])
            self.version, self.suite = m["version"], suite
            self.keys = key_schedule(self.psk, dh, th, m["version"])
            self.state = "AWAIT_SERVER_FINISHED"
            return b""
        if self.state == "AWAIT_SERVER_FINISHED" and name == "ServerFinished":
            if not hmac.compare_digest(m["mac"], self.keys["server_finished_mac"]):
                fail("AUTHENTICATION_FAILED", "server finished")
            self.state = "ESTABLISHED"
            return frame(T_CLIENT_FINISHED, S_HANDSHAKE, 0, self.keys["client_finished_mac"])
        fail("AUTHENTICATION_FAILED", "unexpected message")


# --------------------------------------------------------------------------------------------
# Checks, one per file


def check(cond, what):
    if not cond:
        raise AssertionError(what)


def check_headers(v):
    b = v.hex("bytes")
    h = decode_header(b)
    check(h["magic"] == MAGIC, "magic")
    for k in ("type", "version", "service", "id", "length"):
        check(h[k] == v.int(k), k)
    check(encode_header(v.int("type"), v.int("version"), v.int("service"), v.int("id"),
                        v.int("length")) == b, "encode")


def check_messages(v):
    name, fields = fields_from(v)
    kind, service, body = encode_message(name, fields)
    check((kind, service) == (v.int("type"), v.int("service")), "type/service")
    check(body == v.hex("body"), "body encoding")
    check(frame(kind, service, v.int("id"), body) == v.hex("frame"), "frame encoding")
    h, got_body, rest = frame_decode(v.hex("frame"), DEFAULT_MAX_BODY)
    check(rest == b"" and got_body == body and h["id"] == v.int("id"), "frame decoding")
    got_name, got_fields = decode_message(h["type"], h["service"], got_body)
    check((got_name, got_fields) == (name, fields), f"decoded {got_name} {got_fields}")
    if name.startswith("Put"):
        check_put_prefix_vectors(v)


def suite_ids(v, field):
    """A space-separated list of suite names; version-1 vectors have none: CBC + HMAC."""
    return bytes(SUITE_NAMES[n] for n in (v.str(field) if v.has(field) else "cbc-hmac").split())


def check_handshake(v):
    psk = v.hex("psk")
    mode = v.int("mode")
    version = v.int("version") if v.has("version") else 1
    client = Client(psk, v.hex("client_nonce"), v.hex("client_secret"), mode,
                    suite_ids(v, "client_suites"), v.has("key_hint"))
    server = Server(psk, v.hex("server_nonce"), v.hex("server_secret"), v.int("allow_plaintext") == 1,
                    suite_ids(v, "server_suites") if v.has("server_suites") else (SUITE_GCM, SUITE_CBC))
    suite = suite_ids(v, "suite")[0]
    if v.has("key_hint"):
        check(key_hint(psk) == v.hex("key_hint"), "key_hint")
    check(x25519_public(v.hex("client_secret")) == v.hex("client_public"), "client_public")
    check(x25519_public(v.hex("server_secret")) == v.hex("server_public"), "server_public")
    check(client.client_hello == v.hex("client_hello"), "client_hello")
    flight = server.handle(client.client_hello)
    check(flight == v.hex("server_hello") + v.hex("server_finished"), "server flight")
    check(client.handle(v.hex("server_hello")) == b"", "client after ServerHello")
    cf = client.handle(v.hex("server_finished"))
    check(cf == v.hex("client_finished"), "client_finished")
    check(server.handle(cf) == b"" and server.state == "ESTABLISHED", "server established")
    th = hashlib.sha256(v.hex("client_hello") + v.hex("server_hello")).digest()
    check(th == v.hex("transcript_hash"), "transcript_hash")
    dh = x25519(v.hex("client_secret"), v.hex("server_public"))
    check(dh == v.hex("dh_shared"), "dh_shared")
    keys = key_schedule(psk, dh, th, version)
    ivs = list(IV_LABELS_V2) if version >= 2 else []
    for k in ["prk", *LABELS, *ivs, "server_finished_mac", "client_finished_mac"]:
        check(keys[k] == v.hex(k), k)
    check(client.keys == keys and server.keys == keys, "both sides derived the same keys")
    check((client.version, client.suite) == (version, suite) == (server.version, server.suite),
          "both sides agreed on the version and suite")
    # The first record each way (sequence number 0).
    for d in ("c2s", "s2c"):
        record = v.hex(f"{d}_record")
        plaintext = v.hex(f"{d}_plaintext")
        h = decode_header(record)
        check(h["version"] == version, f"{d} header carries the version")
        if mode == 0 and suite == SUITE_GCM:
            iv = keys[f"{d}_gcm_iv"]
            sealed = seal_gcm(keys[f"{d}_enc"], iv, 0, h["type"], h["version"], h["service"],
                              h["id"], plaintext)
            check(sealed == record, f"{d}_record sealing (GCM)")
            opened = open_gcm(keys[f"{d}_enc"], iv, 0, record[:12], record[12:])
            check(opened == plaintext, f"{d}_record opening (GCM)")
        elif mode == 0:
            sealed = seal(keys[f"{d}_enc"], keys[f"{d}_mac"], 0, h["type"], h["version"],
                          h["service"], h["id"], plaintext, v.hex(f"{d}_iv"))
            check(sealed == record, f"{d}_record sealing")
            opened = open_record(keys[f"{d}_enc"], keys[f"{d}_mac"], 0, record[:12], record[12:])
            check(opened == plaintext, f"{d}_record opening")
        else:
            check(record[12:] == plaintext and h["length"] == len(plaintext), f"{d} plaintext")
        decode_message(h["type"], h["service"], plaintext)


def check_records(v):
    enc, mac, seq = v.hex("enc_key"), v.hex("mac_key"), v.int("seq")
    header = v.hex("header")
    h = decode_header(header)
    if v.has("suite") and v.str("suite") == "gcm":
        iv = v.hex("gcm_iv")
        record = seal_gcm(enc, iv, seq, h["type"], h["version"], h["service"], h["id"],
                          v.hex("plaintext"))
        check(record == v.hex("record"), "sealed record (GCM)")
        check(record == header + v.hex("ciphertext") + v.hex("tag"), "record parts (GCM)")
        hh, body, rest = frame_decode(record, DEFAULT_MAX_BODY, versions=(h["version"],))
        check(open_gcm(enc, iv, seq, record[:12], body) == v.hex("plaintext"), "opened (GCM)")
        check(len(v.hex("tag")) == 16 and len(body) == len(v.hex("plaintext")) + 16, "lengths")
        check(seq <= 2**64 - 2, "sequence number in range")
        return
    record = seal(enc, mac, seq, h["type"], h["version"], h["service"], h["id"], v.hex("plaintext"),
                  v.hex("iv"))
    check(record == v.hex("record"), "sealed record")
    check(record == header + v.hex("iv") + v.hex("ciphertext") + v.hex("tag"), "record parts")
    hh, body, rest = frame_decode(record, DEFAULT_MAX_BODY)
    check(open_record(enc, mac, seq, record[:12], body) == v.hex("plaintext"), "opened")
    check(seq <= 2**64 - 2, "sequence number in range")


def parse_key_text(text):
    """§5.6 text forms."""
    s = text.strip()
    if len(s) == 64:
        try:
            raw = bytes.fromhex(s)
        except ValueError:
            return None
    else:
        s = s.rstrip("=")
        raw = None
        for alt in (b"+/", b"-_"):
            try:
                raw = base64.b64decode(s + "=" * (-len(s) % 4), altchars=alt, validate=True)
                break
            except ValueError:
                continue
    return raw if raw is not None and len(raw) == 32 else None


def check_keys(v):
    data = v.hex("input")
    if v.raw("source") == "file" and len(data) == 32:
        key = data
    else:
        try:
            key = parse_key_text(data.decode("utf-8"))
        except UnicodeDecodeError:
            key = None
    if v.has("invalid"):
        check(key is None, "must be rejected")
        return
    check(key == v.hex("key"), "key")
    check(key.hex() == v.raw("hex"), "hex form")
    check(base64.urlsafe_b64encode(key).rstrip(b"=").decode() == v.raw("base64"), "base64 form")
    check(hashlib.sha256(key).digest()[:8].hex() == v.raw("fingerprint"), "fingerprint")


def expect(v, fn):
    code = v.int("expect_code")
    check(CODES[v.raw("expect_name")] == code, "expect_name/expect_code")
    try:
        fn()
    except ProtocolError as e:
        check(e.code == code, f"got 0x{e.code:04x}, expected 0x{code:04x}")
        return
    raise AssertionError("was accepted")


def check_negative_frames(v):
    data = v.hex("input")
    if v.raw("phase") == "session":
        expect(v, lambda: frame_decode(data, v.int("max_body")))
    else:
        # §4.4: any malformed frame in the handshake is AUTHENTICATION_FAILED, one fixed frame.
        def run():
            try:
                frame_decode(data, HANDSHAKE_MAX_BODY)
            except ProtocolError:
                fail("AUTHENTICATION_FAILED", "malformed handshake frame")
        expect(v, run)
        check(error_frame("AUTHENTICATION_FAILED", HANDSHAKE_MESSAGES["AUTHENTICATION_FAILED"])
              == v.hex("expect_reply"), "reply frame")


def check_negative_messages(v):
    def run():
        h, body, rest = frame_decode(v.hex("frame"), DEFAULT_MAX_BODY)
        decode_message(h["type"], h["service"], body)
    expect(v, run)


def check_negative_records(v):
    record = v.hex("record")

    def run():
        h, body, rest = frame_decode(record, DEFAULT_MAX_BODY, versions=(record[2],))
        if v.has("suite") and v.str("suite") == "gcm":
            open_gcm(v.hex("enc_key"), v.hex("gcm_iv"), v.int("seq"), record[:12], body)
        else:
            open_record(v.hex("enc_key"), v.hex("mac_key"), v.int("seq"), record[:12], body)
    expect(v, run)


def check_negative_handshake(v):
    plaintext = v.int("plaintext") == 1
    psk = v.hex("psk")
    if v.raw("role") == "server":
        side = Server(v.hex("server_psk") if v.has("server_psk") else psk, v.hex("server_nonce"),
                      v.hex("server_secret"), plaintext)
    else:
        side = Client(psk, v.hex("client_nonce"), v.hex("client_secret"), 1 if plaintext else 0,
                      suite_ids(v, "client_suites"), v.has("client_suites"))
    frames = [parse_hex(x) for x in v.all("recv")]
    for f in frames[:-1]:
        side.handle(f)
    caught = []

    def run():
        try:
            side.handle(frames[-1])
        except ProtocolError as e:
            caught.append(e)
            raise
    expect(v, run)
    name = next(k for k, c in CODES.items() if c == caught[0].code)
    if v.has("expect_error_frame") and name in HANDSHAKE_MESSAGES:
        check(error_frame(name, HANDSHAKE_MESSAGES[name]) == v.hex("expect_error_frame"),
              "error frame")
    elif v.has("expect_error_frame"):
        # UNSUPPORTED_VERSION's text is informational (§4.4): check everything but the text.
        got = v.hex("expect_error_frame")
        check(got[:4] == bytes([T_ERROR, MAGIC, 1, S_HANDSHAKE]) and got[4:8] == bytes(4), "header")
        check(struct.unpack(">BH", got[12:15]) == (caught[0].code >> 8, caught[0].code), "code")


# --------------------------------------------------------------------------------------------
# BLAKE3 (the fetch digest, PROTOCOL.md §3.7), from the BLAKE3 paper / reference
# implementation: written out here so the checker needs no package for it and checks the
# chunk tree independently of any library.

B3_IV = (0x6A09E667, 0xBB67AE85, 0x3C6EF372, 0xA54FF53A,
         0x510E527F, 0x9B05688C, 0x1F83D9AB, 0x5BE0CD19)
B3_PERM = (2, 6, 3, 10, 7, 0, 4, 13, 1, 11, 12, 5, 9, 14, 15, 8)
B3_CHUNK_START, B3_CHUNK_END, B3_PARENT, B3_ROOT = 1, 2, 4, 8
B3_BLOCK, B3_CHUNK = 64, 1024
M32 = 0xFFFFFFFF


def _rotr(x, n):
    return ((x >> n) | (x << (32 - n))) & M32


def _g(v, a, b, c, d, x, y):
    v[a] = (v[a] + v[b] + x) & M32
    v[d] = _rotr(v[d] ^ v[a], 16)
    v[c] = (v[c] + v[d]) & M32
    v[b] = _rotr(v[b] ^ v[c], 12)
    v[a] = (v[a] + v[b] + y) & M32
    v[d] = _rotr(v[d] ^ v[a], 8)
    v[c] = (v[c] + v[d]) & M32
    v[b] = _rotr(v[b] ^ v[c], 7)


def b3_compress(cv, block, counter, block_len, flags):
    """Returns the 16-word output of the compression function."""
    m = list(struct.unpack("<16I", block.ljust(B3_BLOCK, b"\0")))
    v = list(cv) + list(B3_IV[:4]) + [counter & M32, (counter >> 32) & M32, block_len, flags]
    for r in range(7):
        _g(v, 0, 4, 8, 12, m[0], m[1])
        _g(v, 1, 5, 9, 13, m[2], m[3])
        _g(v, 2, 6, 10, 14, m[4], m[5])
        _g(v, 3, 7, 11, 15, m[6], m[7])
        _g(v, 0, 5, 10, 15, m[8], m[9])
        _g(v, 1, 6, 11, 12, m[10], m[11])
        _g(v, 2, 7, 8, 13, m[12], m[13])
        _g(v, 3, 4, 9, 14, m[14], m[15])
        if r < 6:
            m = [m[i] for i in B3_PERM]
    return [v[i] ^ v[i + 8] for i in range(8)] + [v[i + 8] ^ cv[i] for i in range(8)]


def _chunk_output(chunk, counter):
    """(cv, block, block_len, flags) of a chunk's last block, not yet compressed."""
    cv = B3_IV
    blocks = [chunk[i:i + B3_BLOCK] for i in range(0, len(chunk), B3_BLOCK)] or [b""]
    for i, block in enumerate(blocks):
        flags = (B3_CHUNK_START if i == 0 else 0) | (B3_CHUNK_END if i == len(blocks) - 1 else 0)
        if i == len(blocks) - 1:
            return cv, block, counter, len(block), flags
        cv = b3_compress(cv, block, counter, B3_BLOCK, flags)[:8]


def blake3(data):
    """BLAKE3's default 32-byte hash (no key, no derivation context)."""
    chunks = [data[i:i + B3_CHUNK] for i in range(0, len(data), B3_CHUNK)] or [b""]
    # Chaining values of complete subtrees, merged like the reference's CV stack: after
    # chunk n (counting from 1), merge once per trailing zero bit of n.
    stack = []
    for n, chunk in enumerate(chunks[:-1]):
        cv, block, counter, block_len, flags = _chunk_output(chunk, n)
        cv = b3_compress(cv, block, counter, block_len, flags)[:8]
        total = n + 1
        while total & 1 == 0:
            left = stack.pop()
            cv = b3_compress(B3_IV, struct.pack("<16I", *(left + cv)), 0, B3_BLOCK, B3_PARENT)[:8]
            total >>= 1
        stack.append(cv)
    # The last chunk, then its parents down the stack; the final compression is the root.
    output = _chunk_output(chunks[-1], len(chunks) - 1)
    while stack:
        cv = b3_compress(*output)[:8]
        left = stack.pop()
        output = (B3_IV, struct.pack("<16I", *(left + cv)), 0, B3_BLOCK, B3_PARENT)
    cv, block, counter, block_len, flags = output
    words = b3_compress(cv, block, 0, block_len, flags | B3_ROOT)
    return struct.pack("<8I", *words[:8])


def check_digests(v):
    data = bytes(i % 251 for i in range(v.int("input_len")))
    check(blake3(data) == v.hex("digest"), "BLAKE3 digest")


# --------------------------------------------------------------------------------------------
# Identities and the identity handshake (§13): Noise XX written out from the Noise
# specification (revision 34), so no Noise library is taken on trust.

from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305  # noqa: E402

NOISE_PARAMS = "Noise_XX_25519_ChaChaPoly_SHA256"
NOISE_PROLOGUE = b"ferry identity handshake v1" + bytes([0x01, 0x08, 0x09, 0x0A])
T_NOISE_1, T_NOISE_2, T_NOISE_3 = 0x08, 0x09, 0x0A
ID_LABELS = {
    "c2s_enc": (b"ferry id v1 c2s enc", 32),
    "c2s_mac": (b"ferry id v1 c2s mac", 32),
    "c2s_iv": (b"ferry id v1 c2s iv", 12),
    "s2c_enc": (b"ferry id v1 s2c enc", 32),
    "s2c_mac": (b"ferry id v1 s2c mac", 32),
    "s2c_iv": (b"ferry id v1 s2c iv", 12),
}
ID_MAX_VERSION = 2  # §4.3
ID_SUITE_CBC = 0x01  # the one suite version 1 knows (§4.3)
B32 = "abcdefghijklmnopqrstuvwxyz234567"


def node_id_hash(public):
    return hashlib.sha256(b"ferry node id v1" + public).digest()[:20]


def node_id_check(h):
    return int.from_bytes(hashlib.sha256(b"ferry node id check v1" + h).digest()[:2], "big") >> 6


def node_id_text(h):
    bits = int.from_bytes(h, "big")
    text = "".join(B32[(bits >> (5 * i)) & 31] for i in reversed(range(32)))
    check = node_id_check(h)
    return text + B32[check >> 5] + B32[check & 31]


def parse_node_id(text):
    """The id hash, or the reason the text is refused (§13.1)."""
    text = text.strip().lower()
    if len(text) != 34:
        return "length"
    if any(c not in B32 for c in text):
        return "character"
    bits = 0
    for c in text[:32]:
        bits = (bits << 5) | B32.index(c)
    h = bits.to_bytes(20, "big")
    if (B32.index(text[32]) << 5) | B32.index(text[33]) != node_id_check(h):
        return "checksum"
    return h


def check_identities(v):
    if v.has("invalid"):
        check(parse_node_id(v.str("text")) == v.raw("reason"), "refused for the reason")
        return
    public = x25519_public(v.hex("secret"))
    check(public == v.hex("public"), "public key")
    check(node_id_hash(public) == v.hex("id_hash"), "id hash")
    check(node_id_text(node_id_hash(public)) == v.str("id"), "id text")
    check(parse_node_id(v.str("id")) == v.hex("id_hash"), "id parses back")


def noise_hkdf(ck, ikm):
    temp = hmac256(ck, ikm)
    out1 = hmac256(temp, b"\x01")
    return out1, hmac256(temp, out1 + b"\x02")


class NoiseSymmetric:
    """Noise's SymmetricState with ChaChaPoly and SHA-256 (Noise spec §5.2)."""

    def __init__(self, prologue=NOISE_PROLOGUE):
        name = NOISE_PARAMS.encode()
        self.h = name.ljust(32, b"\0") if len(name) <= 32 else hashlib.sha256(name).digest()
        self.ck, self.k, self.n = self.h, None, 0
        self.mix_hash(prologue)

    def mix_hash(self, data):
        self.h = hashlib.sha256(self.h + data).digest()

    def mix_key(self, ikm):
        self.ck, self.k = noise_hkdf(self.ck, ikm)
        self.n = 0

    def _nonce(self):
        return bytes(4) + struct.pack("<Q", self.n)

    def encrypt_and_hash(self, plaintext):
        if self.k is None:
            out = plaintext
        else:
            out = ChaCha20Poly1305(self.k).encrypt(self._nonce(), plaintext, self.h)
            self.n += 1
        self.mix_hash(out)
        return out

    def decrypt_and_hash(self, ciphertext):
        if self.k is None:
            out = ciphertext
        else:
            try:
                out = ChaCha20Poly1305(self.k).decrypt(self._nonce(), ciphertext, self.h)
            except Exception:
                fail("AUTHENTICATION_FAILED", "Noise AEAD check")
            self.n += 1
        self.mix_hash(ciphertext)
        return out

    def split(self):
        return noise_hkdf(self.ck, b"")


def id_dh(secret, public):
    """X25519 refusing low-order keys (§13.4, as §5.1)."""
    return x25519(secret, public)


def check_identity_handshake(v):
    cs, ss = v.hex("client_static_secret"), v.hex("server_static_secret")
    ce, se = v.hex("client_ephemeral_secret"), v.hex("server_ephemeral_secret")
    check(v.str("noise_params") == NOISE_PARAMS and v.hex("prologue") == NOISE_PROLOGUE,
          "Noise name and prologue")
    cs_pub, ss_pub = x25519_public(cs), x25519_public(ss)
    check(cs_pub == v.hex("client_static_public"), "client static public")
    check(ss_pub == v.hex("server_static_public"), "server static public")
    check(node_id_text(node_id_hash(cs_pub)) == v.str("client_id"), "client id")
    check(node_id_text(node_id_hash(ss_pub)) == v.str("server_id"), "server id")
    ce_pub, se_pub = x25519_public(ce), x25519_public(se)
    check(ce_pub == v.hex("client_ephemeral_public"), "client ephemeral public")
    check(se_pub == v.hex("server_ephemeral_public"), "server ephemeral public")
    mode, suites, server_suites = v.int("mode"), v.hex("suites"), v.hex("server_suites")

    # Message 1, client: e, then the Offer in the clear (§13.3).
    client = NoiseSymmetric()
    offer = bytes([1, ID_MAX_VERSION, mode, len(suites)]) + suites
    check(offer == v.hex("payload_1"), "payload_1 (the Offer)")
    client.mix_hash(ce_pub)
    msg1 = ce_pub + client.encrypt_and_hash(offer)
    check(frame(T_NOISE_1, S_HANDSHAKE, 0, msg1) == v.hex("noise_1"), "noise_1")

    # Server: read message 1, choose (§4.3, §4.6, §13.3), write message 2: e, ee, s, es.
    server = NoiseSymmetric()
    re = msg1[:32]
    id_dh(ss, re)
    server.mix_hash(re)
    got = server.decrypt_and_hash(msg1[32:])
    lo, hi, got_mode, count = got[0], got[1], got[2], got[3]
    check(1 <= lo <= hi and got_mode in (0, 1) and len(got) == 4 + count, "Offer layout")
    version = min(hi, ID_MAX_VERSION)
    check(version >= lo, "a common version")
    if got_mode == 1:
        check(v.int("allow_plaintext") == 1, "plaintext allowed")
        suite = 0
    else:  # the client's first suite the server accepts and the version allows
        suite = next(s for s in got[4:]
                     if s in server_suites and (version >= 2 or s == ID_SUITE_CBC))
    choice = bytes([version, got_mode, suite])
    check(choice == v.hex("payload_2"), "payload_2 (the Choice)")
    server.mix_hash(se_pub)
    server.mix_key(id_dh(se, re))                      # ee
    enc_s = server.encrypt_and_hash(ss_pub)            # s
    server.mix_key(id_dh(ss, re))                      # es
    msg2 = se_pub + enc_s + server.encrypt_and_hash(choice)
    check(frame(T_NOISE_2, S_HANDSHAKE, 0, msg2) == v.hex("noise_2"), "noise_2")

    # Client: read message 2, check the server's key and the Choice, write message 3: s, se.
    client.mix_hash(msg2[:32])
    client.mix_key(id_dh(ce, msg2[:32]))               # ee
    rs = client.decrypt_and_hash(msg2[32:80])          # s
    check(rs == ss_pub, "the server's static key")
    client.mix_key(id_dh(ce, rs))                      # es
    check(client.decrypt_and_hash(msg2[80:]) == choice, "client reads the Choice")
    enc_cs = client.encrypt_and_hash(cs_pub)           # s
    client.mix_key(id_dh(cs, msg2[:32]))               # se
    msg3 = enc_cs + client.encrypt_and_hash(choice)
    check(choice == v.hex("payload_3"), "payload_3 (the Choice echoed)")
    check(frame(T_NOISE_3, S_HANDSHAKE, 0, msg3) == v.hex("noise_3"), "noise_3")

    # Server: read message 3.
    check(server.decrypt_and_hash(msg3[:48]) == cs_pub, "the client's static key")
    server.mix_key(id_dh(se, cs_pub))                  # se
    check(server.decrypt_and_hash(msg3[48:]) == choice, "server reads the echo")

    # Keys (§13.5).
    check(client.h == server.h == v.hex("handshake_hash"), "handshake hash")
    k1, k2 = client.split()
    check((k1, k2) == server.split() == (v.hex("k1"), v.hex("k2")), "Split()")
    prk = hmac256(client.h, k1 + k2)  # HKDF-Extract(salt = h, IKM = k1 || k2)
    for name, (label, length) in ID_LABELS.items():
        check(hmac256(prk, label + b"\x01")[:length] == v.hex(name), name)


# --------------------------------------------------------------------------------------------
# Fleet updates (P2P.md §8): channel ids, release records, gossip datagrams

CHANNEL_CHECK_LABEL = b"ferry channel id check v1"
RELEASE_CONTEXT = b"ferry fleet release v1"
FLEET_SERVICES = {"status": 0x70, "record": 0x71, "manifest": 0x72, "announce": 0x73}
FLEET_MIN_REQUEST_BODY = 512


def channel_check(public):
    d = hashlib.sha256(CHANNEL_CHECK_LABEL + public).digest()
    return struct.unpack(">H", d[:2])[0] >> 2


def channel_id_text(public):
    bits = int.from_bytes(public, "big") << 14 | channel_check(public)  # 270 bits
    return "".join(B32[(bits >> (5 * (53 - i))) & 31] for i in range(54))


def parse_channel_id(text):
    text = text.strip().lower()
    if len(text) != 54:
        return "length"
    if any(c not in B32 for c in text):
        return "character"
    bits = 0
    for c in text:
        bits = bits << 5 | B32.index(c)
    public = (bits >> 14).to_bytes(32, "big")
    if bits & 0x3FFF != channel_check(public):
        return "checksum"
    return public


def fleet_str(s):
    b = s.encode()
    return struct.pack(">H", len(b)) + b


def fleet_addr(text):
    import ipaddress

    host, _, port = text.rpartition(":")
    if host.startswith("["):
        return b"\x06" + ipaddress.IPv6Address(host[1:-1]).packed + struct.pack(">H", int(port))
    return b"\x04" + ipaddress.IPv4Address(host).packed + struct.pack(">H", int(port))


def check_fleet(v):
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    kind = v.raw("kind")
    if kind == "channel":
        if v.has("invalid"):
            check(parse_channel_id(v.str("text")) == v.raw("reason"), "refused for the reason")
            return
        key = Ed25519PrivateKey.from_private_bytes(v.hex("seed"))
        public = key.public_key().public_bytes(serialization.Encoding.Raw,
                                               serialization.PublicFormat.Raw)
        check(public == v.hex("public"), "public key")
        check(channel_id_text(public) == v.str("id"), "channel id text")
        check(parse_channel_id(v.str("id").upper()) == public, "id parses back, any case")
    elif kind == "record":
        signed = (b"FERRYREL" + b"\x01" + v.hex("channel") + struct.pack(">Q", v.int("version"))
                  + v.hex("content_id") + struct.pack(">Q", v.int("time_ms"))
                  + fleet_str(v.str("notes")) + fleet_str(v.str("source")))
        check(signed == v.hex("signed"), "signed part from the fields")
        key = Ed25519PrivateKey.from_private_bytes(v.hex("seed"))
        public = key.public_key().public_bytes(serialization.Encoding.Raw,
                                               serialization.PublicFormat.Raw)
        check(public == v.hex("channel"), "the channel is the seed's public key")
        signature = key.sign(RELEASE_CONTEXT + signed)  # Ed25519 is deterministic
        check(signature == v.hex("signature"), "signature over context || signed")
        key.public_key().verify(signature, RELEASE_CONTEXT + signed)
        check(signed + signature == v.hex("record"), "record = signed || signature")
    elif kind == "datagram":
        name = v.raw("message")
        if name in ("StatusRequest", "StatusResponse"):
            members = v.all("member")
            body = (v.hex("channel") + bytes([v.int("role")])
                    + struct.pack(">QQQH", v.int("latest"), v.int("running"), v.int("failed"),
                                  v.int("swarm_port"))
                    + fleet_str(v.str("name")) + bytes([len(members)]))
            for m in members:
                addr, _, age = m.rpartition(" ")
                body += fleet_addr(parse_string(addr)) + struct.pack(">I", int(age))
            if name == "StatusRequest":
                body += bytes(max(0, FLEET_MIN_REQUEST_BODY - len(body)))
            kind_byte, service = (T_REQUEST if name == "StatusRequest" else T_RESPONSE), 0x70
        elif name == "Record":
            body, kind_byte, service = v.hex("record"), T_REQUEST, 0x71
        elif name == "ManifestRequest":
            body = v.hex("content_id") + struct.pack(">I", v.int("offset"))
            body += bytes(FLEET_MIN_REQUEST_BODY - len(body))
            kind_byte, service = T_REQUEST, 0x72
        elif name == "ManifestChunk":
            data = v.hex("data")
            check(v.int("offset") + len(data) <= v.int("total"), "chunk inside the manifest")
            body = (v.hex("content_id") + struct.pack(">II", v.int("offset"), v.int("total"))
                    + data)
            kind_byte, service = T_RESPONSE, 0x72
        elif name == "ManifestError":
            code = v.int("code")
            text = v.str("text").encode()
            body = bytes([code >> 8]) + struct.pack(">HH", code, len(text)) + text
            kind_byte, service = T_ERROR, 0x72
        elif name == "Announce":  # §8.8: channel | role (1 or 2) | zero padding to 512
            check(v.int("role") in (1, 2), "an observer never announces")
            body = v.hex("channel") + bytes([v.int("role")])
            body += bytes(FLEET_MIN_REQUEST_BODY - len(body))
            kind_byte, service = T_REQUEST, 0x73
        else:
            raise ValueError(f"unknown fleet message {name}")
        datagram = frame(kind_byte, service, v.int("id"), body)
        check(len(datagram) <= 1400, "at most 1400 bytes")
        check(datagram == v.hex("datagram"), "datagram from the fields")
    else:
        raise ValueError(f"unknown kind {kind}")


def check_peer_identity(v):
    """P2P.md §3.3: Noise XX with empty payloads inside a swarm session, bound to it."""
    check(v.str("noise_params") == NOISE_PARAMS, "Noise name")
    cid = v.hex("content_id")
    ds, ls = v.hex("dialer_static_secret"), v.hex("listener_static_secret")
    de, le = v.hex("dialer_ephemeral_secret"), v.hex("listener_ephemeral_secret")
    ds_pub, ls_pub = x25519_public(ds), x25519_public(ls)
    de_pub, le_pub = x25519_public(de), x25519_public(le)
    for name, pub, e_pub in (("dialer", ds_pub, de_pub), ("listener", ls_pub, le_pub)):
        check(pub == v.hex(name + "_static_public"), name + " static public")
        check(e_pub == v.hex(name + "_ephemeral_public"), name + " ephemeral public")
        check(node_id_hash(pub) == v.hex(name + "_peer_id"), name + " peer id")
        check(node_id_text(node_id_hash(pub)) == v.str(name + "_id"), name + " id")
    binding = v.hex("binding")
    lbinding = v.hex("listener_binding") if v.has("listener_binding") else binding
    prologue = lambda b: b"ferry p2p identity v1" + cid + b
    check(prologue(binding) == v.hex("prologue"), "prologue")
    body = lambda port, noise: cid + struct.pack(">H", port) + noise

    # Message 1, dialer: e.
    dialer = NoiseSymmetric(prologue(binding))
    dialer.mix_hash(de_pub)
    msg1 = de_pub + dialer.encrypt_and_hash(b"")
    check(body(v.int("dialer_listen_port"), msg1) == v.hex("handshake_1"), "handshake_1")

    # Message 2, listener: e, ee, s, es, in its own session's prologue.
    listener = NoiseSymmetric(prologue(lbinding))
    listener.mix_hash(de_pub)
    check(listener.decrypt_and_hash(b"") == b"", "listener reads message 1")
    listener.mix_hash(le_pub)
    listener.mix_key(id_dh(le, de_pub))                 # ee
    enc_s = listener.encrypt_and_hash(ls_pub)           # s
    listener.mix_key(id_dh(ls, de_pub))                 # es
    msg2 = le_pub + enc_s + listener.encrypt_and_hash(b"")
    check(len(msg2) == 96, "message 2 length")
    check(body(v.int("listener_listen_port"), msg2) == v.hex("handshake_2"), "handshake_2")

    # Dialer reads message 2: a relayed proof fails here.
    dialer.mix_hash(le_pub)
    dialer.mix_key(id_dh(de, le_pub))                   # ee
    if v.has("expect_name"):
        check(lbinding != binding, "only another session's proof fails")
        try:
            dialer.decrypt_and_hash(msg2[32:80])
        except ProtocolError as e:
            check(e.code == CODES["AUTHENTICATION_FAILED"]
                  and v.raw("expect_name") == "AUTHENTICATION_FAILED", "refusal")
            return
        fail("AUTHENTICATION_FAILED", "a relayed message 2 was accepted")
    rs = dialer.decrypt_and_hash(msg2[32:80])           # s
    check(rs == ls_pub, "the listener's static key")
    dialer.mix_key(id_dh(de, rs))                       # es
    check(dialer.decrypt_and_hash(msg2[80:]) == b"", "empty payload 2")

    # Message 3, dialer: s, se.
    enc_ds = dialer.encrypt_and_hash(ds_pub)
    dialer.mix_key(id_dh(ds, le_pub))                   # se
    msg3 = enc_ds + dialer.encrypt_and_hash(b"")
    check(msg3 == v.hex("identity_3"), "identity_3")
    check(listener.decrypt_and_hash(msg3[:48]) == ds_pub, "the dialer's static key")
    listener.mix_key(id_dh(le, ds_pub))                 # se
    check(listener.decrypt_and_hash(msg3[48:]) == b"", "empty payload 3")
    check(dialer.h == listener.h == v.hex("handshake_hash"), "handshake hash")


# --- Enrolment (PROTOCOL.md §13.11): the word list is read from the spec's own table. ---

def enrol_words():
    text = (Path(__file__).resolve().parent.parent / "PROTOCOL.md").read_text()
    start = text.index("```text\n", text.index("The word list, by byte value")) + len("```text\n")
    tokens = text[start:text.index("```", start)].split()
    even, odd = [None] * 256, [None] * 256
    for i in range(0, len(tokens), 3):
        b = int(tokens[i], 16)
        even[b], odd[b] = tokens[i + 1], tokens[i + 2]
    check(None not in even and None not in odd, "256 words in each list")
    check(len(set(even + odd)) == 512, "the 512 words are distinct")
    return even, odd


def parse_code(text, even, odd):
    """(nameplate, w0, w1) of a code text, or None when it is not one (§13.11.1)."""
    parts = text.strip().lower().split("-")
    if len(parts) != 3 or not parts[0].isdigit() or not 1 <= len(parts[0]) <= 10:
        return None
    nameplate = int(parts[0])
    if not 1 <= nameplate <= 0xFFFFFFFF or parts[1] not in odd or parts[2] not in even:
        return None
    return nameplate, odd.index(parts[1]), even.index(parts[2])


def canonical_code(nameplate, w0, w1, even, odd):
    return f"{nameplate}-{odd[w0]}-{even[w1]}"


def decode_enrol(kind, body):
    """The enrolment bodies (§13.11.4); raises on anything a receiver must refuse."""
    r = Reader(body)
    if kind == 0x10:
        nameplate, pake = r.u32(), r.take(33)
        r.end()
        check(nameplate != 0 and pake[0] == 0x41, "nameplate and side A")
        return {"nameplate": nameplate, "pake_a": pake}
    if kind == 0x11:
        pake, confirm = r.take(33), r.take(32)
        r.end()
        check(pake[0] == 0x42, "side B")
        return {"pake_b": pake, "confirm_b": confirm}
    if kind == 0x12:
        confirm = r.take(32)
        r.end()
        return {"confirm_a": confirm}
    if kind == 0x13:
        flags, name, root = r.u8(), r.str(), r.str()
        r.end()
        check(flags in (0, 1), "flags")
        return {"flags": flags, "name": name, "root": root}
    raise ValueError(f"type 0x{kind:02x} is not an enrolment body")


def enrol_confirmations(key, h, nameplate, pake_a, pake_b):
    prk = hmac256(h, key)                                     # HKDF-Extract(salt = h, IKM = K)
    k_server = hmac256(prk, b"ferry enrol v1 server confirm", b"\x01")
    k_client = hmac256(prk, b"ferry enrol v1 client confirm", b"\x01")
    t = nameplate.to_bytes(4, "big") + pake_a + pake_b
    return hmac256(k_server, t), hmac256(k_client, t)


def check_enrol(v):
    even, odd = enrol_words()
    if v.name == "word_lists":
        check(hashlib.sha256(" ".join(even).encode()).digest() == v.hex("even_sha256"), "even list")
        check(hashlib.sha256(" ".join(odd).encode()).digest() == v.hex("odd_sha256"), "odd list")
        return
    if v.has("text"):
        parsed = parse_code(v.str("text"), even, odd)
        if v.has("invalid"):
            check(parsed is None, "an invalid code was accepted")
            return
        check(parsed is not None, "a valid code was refused")
        nameplate, w0, w1 = parsed
        check(nameplate == v.int("nameplate") and bytes([w0, w1]) == v.hex("words"), "code fields")
        check(canonical_code(*parsed, even, odd).encode() == v.hex("password"), "password")
        return
    if v.has("body"):
        check(v.int("service") == 0x07, "service ENROL")
        try:
            decode_enrol(v.int("type"), v.hex("body"))
        except Exception:
            return
        fail("MALFORMED_MESSAGE", "a refused enrolment body decoded")
    code = parse_code(v.str("client_code"), even, odd)
    check(code is not None and parse_code(v.str("server_code"), even, odd) is not None, "codes")
    request = decode_enrol(0x10, v.hex("enrol_request"))
    response = decode_enrol(0x11, v.hex("enrol_response"))
    check(request["nameplate"] == code[0], "the request names the code's invite")
    confirm_b, confirm_a = enrol_confirmations(
        v.hex("key"), v.hex("handshake_hash"), request["nameplate"],
        request["pake_a"], response["pake_b"])
    check(confirm_b == response["confirm_b"] == v.hex("confirm_b"), "confirm_b")
    check(confirm_a == v.hex("confirm_a"), "confirm_a")
    if v.has("client_refuses"):
        check(v.str("client_code") != v.str("server_code"), "a refusal needs another code")
        check(not v.has("enrol_confirm"), "a refusing client sends nothing more")
        return
    check(decode_enrol(0x12, v.hex("enrol_confirm"))["confirm_a"] == confirm_a, "enrol_confirm")
    decode_enrol(0x13, v.hex("enrol_end"))


# --- The hub (HUB.md §3): bodies built from the vector's fields, independently of the Rust code. ---

def hub_addr(text):
    host, _, port = text.rpartition(":")
    if host.startswith("["):
        import ipaddress
        return bytes([6]) + ipaddress.IPv6Address(host[1:-1]).packed + int(port).to_bytes(2, "big")
    return bytes([4]) + bytes(int(x) for x in host.split(".")) + int(port).to_bytes(2, "big")


def hub_addrs(text):
    items = text.split()
    check(len(items) <= 16, "at most 16 addresses")
    return bytes([len(items)]) + b"".join(hub_addr(a) for a in items)


def hub_id(text):
    h = parse_node_id(text)
    check(isinstance(h, bytes), f"node id {text!r}")
    return h


def hub_punch(v):
    """A punch instruction (§3.6): peer | delay_ms | role | addrs (TCP) | udp addrs."""
    return (hub_id(v.str("peer")) + v.int("delay_ms").to_bytes(4, "big") + bytes([v.int("role")])
            + hub_addrs(v.str("addrs")) + hub_addrs(v.str("udp")))


def hub_body(v):
    """The body the vector's fields describe (§3.2-§3.7)."""
    service, kind, name = v.int("service"), v.int("type"), v.name
    s = lambda k: put_str(v.str(k))
    if service == 0x60 and kind == 0x10:
        out = bytes([v.int("flags")]) + s("name") + s("invite")
        return out + (hub_id(v.str("to")) if v.int("flags") & 0x02 else b"")
    if service == 0x60 and kind == 0x11:
        return s("name") + hub_id(v.str("id"))
    if service == 0x61 and kind == 0x10:
        return s("name")
    if service == 0x61 and kind == 0x11:
        hints = [(1, a) for a in v.str("reported").split()] + [(2, a) for a in v.str("reflected").split()]
        return (hub_id(v.str("id")) + bytes([v.int("online"), len(hints)])
                + b"".join(bytes([src]) + hub_addr(a) for src, a in hints))
    if service == 0x62 and kind == 0x10:
        return s("name") + hub_addrs(v.str("addrs"))
    if service == 0x62 and kind == 0x11:
        return hub_addr(v.str("reflected"))
    if service == 0x62 and kind == 0x12 and v.int("event") == 1:
        return bytes([1]) + v.hex("token") + hub_id(v.str("client"))
    if service == 0x62 and kind == 0x12 and v.int("event") == 2:
        return bytes([2]) + hub_punch(v)
    if service == 0x63 and kind == 0x10 and v.int("role") == 1:
        return bytes([1]) + s("name")
    if service == 0x63 and kind == 0x10 and v.int("role") == 2:
        return bytes([2]) + v.hex("token")
    if service == 0x63 and kind == 0x11:
        return hub_id(v.str("peer"))
    if service == 0x64 and kind == 0x10:
        return s("name") + v.int("rtt_ms").to_bytes(4, "big") + hub_addrs(v.str("addrs"))
    if service == 0x64 and kind == 0x11:
        return hub_punch(v)
    if service == 0x65 and kind == 0x11:
        return v.hex("token")
    if service == 0x68 and kind == 0x10:
        ids = [bytes.fromhex(c) for c in v.str("content").split()]
        check(all(len(c) == 32 for c in ids), "content ids of 32 bytes")
        return bytes([v.int("flags"), len(ids)]) + b"".join(ids)
    if service == 0x68 and kind == 0x11:
        return v.int("held").to_bytes(2, "big")
    if service == 0x69 and kind == 0x10:
        return v.hex("content")
    if service == 0x69 and kind == 0x11:
        return bytes([1]) + hub_id(v.str("id")) + s("via") + hub_addrs(v.str("addrs"))
    raise ValueError(f"{name}: no hub body for service 0x{service:02x} type 0x{kind:02x}")


def hub_decode(service, kind, body):
    """Reads a hub body, raising on anything a receiver must refuse (§3.1)."""
    r = Reader(body)

    def addr():
        fam = r.u8()
        check(fam in (4, 6), "address family")
        r.take(4 if fam == 4 else 16)
        r.u16()

    def addrs():
        n = r.u8()
        check(n <= 16, "at most 16 addresses")
        for _ in range(n):
            addr()

    def punch():
        r.take(20), r.u32()
        check(r.u8() in (1, 2), "punch role")
        addrs(), addrs()

    if (service, kind) == (0x60, 0x10):
        flags = r.u8()
        check(flags in (0, 1, 2), "register flags")
        r.str(), r.str()
        if flags & 2:
            r.take(20)
    elif (service, kind) == (0x60, 0x11):
        r.str(), r.take(20)
    elif (service, kind) == (0x61, 0x10):
        r.str()
    elif (service, kind) == (0x61, 0x11):
        r.take(20)
        check(r.u8() in (0, 1), "online")
        n = r.u8()
        check(n <= 16, "at most 16 hints")
        for _ in range(n):
            check(r.u8() in (1, 2), "hint source")
            addr()
    elif (service, kind) == (0x62, 0x10):
        r.str(), addrs()
    elif (service, kind) == (0x62, 0x11):
        addr()
    elif (service, kind) == (0x62, 0x12):
        event = r.u8()
        check(event in (1, 2), "event kind")
        if event == 1:
            r.take(16), r.take(20)
        else:
            punch()
    elif (service, kind) == (0x63, 0x10):
        role = r.u8()
        check(role in (1, 2), "relay role")
        r.str() if role == 1 else r.take(16)
    elif (service, kind) == (0x63, 0x11):
        r.take(20)
    elif (service, kind) == (0x64, 0x10):
        r.str(), r.u32(), addrs()
    elif (service, kind) == (0x64, 0x11):
        punch()
    elif (service, kind) == (0x65, 0x11):
        r.take(16)
    elif (service, kind) == (0x68, 0x10):
        check(r.u8() in (0, 1), "announce flags")
        n = r.u8()
        check(n <= 32, "at most 32 content ids")
        r.take(32 * n)
    elif (service, kind) == (0x68, 0x11):
        r.u16()
    elif (service, kind) == (0x69, 0x10):
        r.take(32)
    elif (service, kind) == (0x69, 0x11):
        n = r.u8()
        check(n <= 50, "at most 50 peers")
        for _ in range(n):
            r.take(20)
            check(len(r.str()) <= 64, "via of at most 64 bytes")
            addrs()
    else:
        raise ValueError("not a hub body")
    r.end()


def check_hub(v):
    service, kind, body = v.int("service"), v.int("type"), v.hex("body")
    check(0x60 <= service <= 0x6F, "a hub service")
    if v.has("invalid"):
        try:
            hub_decode(service, kind, body)
        except Exception:
            return
        fail("MALFORMED_MESSAGE", f"a refused hub body decoded ({v.str('reason')})")
    check(hub_body(v) == body, "body built from the fields")
    hub_decode(service, kind, body)


# --- Offers (PROTOCOL.md §3.13): bodies built from the fields and read back. ---

S_OFFER = 0x08
OFFER_DIRECTORY = 0x01  # the one defined item flag


def encode_offer(v):
    if v.raw("message") == "OfferRequest":
        body = b""
        if v.has("set.items"):  # rule 4: a zero marker and the set's totals come first
            body += struct.pack(">HIQ", 0, v.int("set.items"), v.int("set.bytes"))
        body += struct.pack(">H", v.int("count"))
        for i in range(v.int("count")):
            p = f"item{i}."
            body += put_str(v.str(p + "path")) + struct.pack(
                ">QIB", v.int(p + "size"), v.int(p + "mode"), v.int(p + "flags")) + v.hex(p + "digest")
        return T_REQUEST, body
    return T_RESPONSE, struct.pack(">H", v.int("count")) + b"".join(
        struct.pack(">H", v.int(f"code{i}")) for i in range(v.int("count")))


def decode_offer(kind, body):
    """An offer body as a list of fields; raises MALFORMED_MESSAGE as §3.13 and §3.1 say."""
    r = Reader(body)
    count = r.u16()
    if kind == T_REQUEST:
        set_ = None
        if count == 0 and r.pos < len(r.data):  # rule 4: a set's totals, then the offer
            set_ = dict(items=r.u32(), bytes=r.u64())
            count = r.u16()
            if count and set_["items"] < count:
                fail("MALFORMED_MESSAGE", "a set of fewer items than the offer")
        if count == 0:
            fail("MALFORMED_MESSAGE", "an offer of nothing")
        items = []
        for _ in range(count):
            item = dict(path=r.str(), size=r.u64(), mode=r.u32(), flags=r.u8(), digest=r.take(32))
            if item["mode"] > 0o7777:
                fail("MALFORMED_MESSAGE", "offer mode")
            if item["flags"] & ~OFFER_DIRECTORY:
                fail("MALFORMED_MESSAGE", "offer flags")
            if item["flags"] & OFFER_DIRECTORY and (item["size"] or item["digest"] != bytes(32)):
                fail("MALFORMED_MESSAGE", "an offered directory carries no content")
            items.append(item)
        r.end()
        return items, set_
    if kind == T_RESPONSE:
        codes = [r.u16() for _ in range(count)]
        r.end()
        return codes
    fail("UNKNOWN_REQUEST", "no offer body of this type")


def check_offer(v):
    check(v.int("service") == S_OFFER, "service OFFER")
    kind, body = v.int("type"), v.hex("body")
    if v.has("expect_code"):
        expect(v, lambda: decode_offer(kind, body))
        return
    built_kind, built = encode_offer(v)
    check(built_kind == kind and built == body, "body built from the fields")
    decoded = decode_offer(kind, body)
    if kind == T_REQUEST:
        decoded, set_ = decoded
        want = dict(items=v.int("set.items"), bytes=v.int("set.bytes")) if v.has("set.items") else None
        check(set_ == want, "set totals read back")
        for i, item in enumerate(decoded):
            p = f"item{i}."
            check(item == dict(path=v.str(p + "path"), size=v.int(p + "size"),
                               mode=v.int(p + "mode"), flags=v.int(p + "flags"),
                               digest=v.hex(p + "digest")), f"item {i} read back")
    else:
        check(decoded == [v.int(f"code{i}") for i in range(v.int("count"))], "codes read back")
        known = set(CODES.values()) | {0}
        check(all(c in known for c in decoded), "every code is taken (0) or in the table")


CHECKS = {
    "headers.txt": check_headers,
    "messages.txt": check_messages,
    "handshake.txt": check_handshake,
    "records.txt": check_records,
    "keys.txt": check_keys,
    "negative-frames.txt": check_negative_frames,
    "negative-messages.txt": check_negative_messages,
    "negative-records.txt": check_negative_records,
    "negative-handshake.txt": check_negative_handshake,
    "digests.txt": check_digests,
    "identities.txt": check_identities,
    "identity-handshake.txt": check_identity_handshake,
    "enrol.txt": check_enrol,
    "peer-identity.txt": check_peer_identity,
    "fleet.txt": check_fleet,
    "hub.txt": check_hub,
    "offer.txt": check_offer,
}


def main():
    vector_dir = Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).resolve().parent.parent / "vectors"
    failures = 0
    total = 0
    for file_name, fn in CHECKS.items():
        vectors = parse_file(vector_dir / file_name)
        ok = 0
        for v in vectors:
            total += 1
            try:
                fn(v)
                ok += 1
            except Exception as e:  # report every vector, keep going
                failures += 1
                print(f"FAIL {file_name} / {v.name} (line {v.line}): {type(e).__name__}: {e}")
        print(f"{file_name:26} {ok}/{len(vectors)} ok")
    unknown = sorted(set(os.listdir(vector_dir)) - set(CHECKS) - {"README.md"})
    if unknown:
        print(f"not checked: {', '.join(unknown)}")
    print(f"{total - failures}/{total} vectors ok")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
