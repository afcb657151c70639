#!/usr/bin/python3
"""Drive a running tpm-fido daemon with Yubico's python-fido2 (Debian 12's
0.9.1), as an outside client would, and check every answer with the
library's own verification code.

Usage: drive.py TRANSPORT CASE
  TRANSPORT  unix:PATH (the daemon's SOCK_SEQPACKET socket) or
             udp:LISTEN_HOST:PORT,REPLY_HOST:PORT (the daemon's udp: spec)
  CASE       ctap2, webauthn, clientpin, credman, ctap1, hmac-secret,
             channels, waiting

Each case prints what it saw; any failed check raises, so the exit status
is non-zero. python-fido2 0.9.1 knows only real HID devices, so the
transport is a small CtapHidConnection subclass.
"""

import hashlib
import os
import socket
import struct
import sys
import threading

import fido2
from fido2.attestation.base import AttestationType
from fido2.attestation.packed import PackedAttestation
from fido2.client import Fido2Client
from fido2.cose import CoseKey
from fido2.ctap import CtapError
from fido2.ctap1 import APDU, ApduError, Ctap1
from fido2.ctap2 import AttestationObject, Ctap2
from fido2.ctap2.credman import CredentialManagement
from fido2.ctap2.extensions import HmacSecretExtension
from fido2.ctap2.pin import ClientPin, PinProtocolV1, PinProtocolV2
from fido2.hid import CTAPHID, CtapHidDevice
from fido2.hid.base import CtapHidConnection, HidDescriptor
from fido2.server import Fido2Server
from fido2.webauthn import PublicKeyCredentialRpEntity

REPORT = 64
ES256 = [{"type": "public-key", "alg": -7}]
PIN = "12345678"
P = ClientPin.PERMISSION


class ChannelFilter(CtapHidConnection):
    """Every host reading a HID device sees every report, as every
    connection to the daemon's socket does; python-fido2 0.9.1 raises on
    a report for another channel, so read_packet skips those (a hidraw
    client such as libfido2 does the same)."""

    cid = None

    def write_packet(self, data):
        self.cid = bytes(data[:4])
        self.send(bytes(data).ljust(REPORT, b"\0"))

    def read_packet(self):
        while True:
            p = self.recv()
            # The broadcast channel only while this host sends on it (INIT).
            if self.cid is None or p[:4] == self.cid:
                return p


class SeqpacketConnection(ChannelFilter):
    """64-byte reports over the daemon's unix: (SOCK_SEQPACKET) transport."""

    def __init__(self, path):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        self.sock.settimeout(30)
        self.sock.connect(path)

    def send(self, p):
        self.sock.send(p)

    def recv(self):
        return self.sock.recv(REPORT)

    def close(self):
        self.sock.close()


class UdpConnection(ChannelFilter):
    """64-byte reports in datagrams, the CTAPHID-over-UDP test convention:
    the daemon listens on LISTEN and answers to REPLY."""

    def __init__(self, sock, listen):
        self.sock, self.to = sock, listen

    def send(self, p):
        self.sock.sendto(p, self.to)

    def recv(self):
        return self.sock.recv(REPORT)

    def close(self):
        pass


def hostport(s):
    host, port = s.rsplit(":", 1)
    return host, int(port)


_udp_sock = None


def open_device(transport):
    """A CtapHidDevice (one CTAPHID channel) on the daemon."""
    global _udp_sock
    if transport.startswith("unix:"):
        conn = SeqpacketConnection(transport[len("unix:"):])
    elif transport.startswith("udp:"):
        # UDP has one reply address: every device object shares its socket.
        listen, reply = transport[len("udp:"):].split(",")
        if _udp_sock is None:
            _udp_sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            _udp_sock.settimeout(30)
            _udp_sock.bind(hostport(reply))
        conn = UdpConnection(_udp_sock, hostport(listen))
    else:
        raise SystemExit("unknown transport " + transport)
    return CtapHidDevice(HidDescriptor(transport, 0, 0, REPORT, REPORT), conn)


def check(cond, what):
    if not cond:
        raise AssertionError(what)


def expect_error(code, fn, *args, **kwargs):
    try:
        fn(*args, **kwargs)
    except CtapError as e:
        check(e.code == code, "got %s, want %s" % (e.code, code))
        return e
    raise AssertionError("no error, want %s" % code)


def cdh(label):
    return hashlib.sha256(label.encode()).digest()


def verify_packed(att, client_data_hash):
    """Checks a makeCredential answer with python-fido2's packed verifier."""
    check(att.fmt == "packed", "attestation format %s" % att.fmt)
    res = PackedAttestation().verify(att.att_statement, att.auth_data, client_data_hash)
    check(res.attestation_type == AttestationType.SELF, "attestation type %s" % res.attestation_type)
    # A flipped bit in the signed data must fail.
    try:
        PackedAttestation().verify(att.att_statement, att.auth_data, cdh("other"))
        raise AssertionError("attestation verifies over another clientDataHash")
    except fido2.attestation.base.InvalidSignature:
        pass
    return res


def make(ctap, rp, user, rk=False, extensions=None, token=None, proto=None, label="mc"):
    h = cdh(label)
    pin_auth = proto.authenticate(token, h) if token else None
    att = ctap.make_credential(
        h, rp, user, ES256,
        extensions=extensions,
        options={"rk": True} if rk else None,
        pin_uv_param=pin_auth,
        pin_uv_protocol=proto.VERSION if token else None,
    )
    verify_packed(att, h)
    return att


def user(name):
    return {"id": ("uid-" + name).encode(), "name": name, "displayName": "User " + name}


# ---------------------------------------------------------------- cases


def case_ctap2(transport):
    dev = open_device(transport)
    ctap = Ctap2(dev)  # strict_cbor: canonical CBOR is checked on every answer
    info = ctap.info
    print("getInfo: versions", info.versions, "extensions", info.extensions)
    print("getInfo: options", dict(sorted(info.options.items())))
    print("getInfo: pinUvAuthProtocols", info.pin_uv_protocols, "aaguid", info.aaguid.hex())
    check("credentialMgmtPreview" in info.options, "credentialMgmtPreview not advertised")

    rp = {"id": "example.com", "name": "Example"}
    att = make(ctap, rp, user("plain"), label="plain")
    cred = att.auth_data.credential_data
    print("makeCredential: fmt", att.fmt, "flags 0x%02x" % att.auth_data.flags,
          "credential id", len(cred.credential_id), "bytes; packed self attestation verified")
    pub = CoseKey.parse(cred.public_key)
    h = cdh("login")
    a = ctap.get_assertion("example.com", h, [{"type": "public-key", "id": cred.credential_id}])
    a.verify(h, pub)
    print("getAssertion (allowList): flags 0x%02x counter %d, signature verified, user %r"
          % (a.auth_data.flags, a.auth_data.counter, a.user))
    check(a.user is None, "a non-discoverable credential came back with a user")
    try:
        a.verify(cdh("other"), pub)
        raise AssertionError("assertion verifies over another clientDataHash")
    except Exception as e:  # cryptography's InvalidSignature
        check(type(e).__name__ == "InvalidSignature", repr(e))
    a2 = ctap.get_assertion("example.com", h, [{"type": "public-key", "id": cred.credential_id}])
    check(a2.auth_data.counter > a.auth_data.counter, "counter did not rise")
    up0 = ctap.get_assertion("example.com", h, [{"type": "public-key", "id": cred.credential_id}], options={"up": False})
    up0.verify(h, pub)
    print("getAssertion up=false: flags 0x%02x (no UP), signature verified" % up0.auth_data.flags)
    check(not up0.auth_data.is_user_present(), "UP set with up=false")

    # Discoverable credentials: the user id comes back, also through an
    # allowList (CTAP 2.1 §6.2.2, 0x04); names only with UV and > 1 account.
    r1 = make(ctap, rp, user("alice"), rk=True, label="alice")
    r2 = make(ctap, rp, user("bob"), rk=True, label="bob")
    id1 = r1.auth_data.credential_data.credential_id
    a = ctap.get_assertion("example.com", h, [{"type": "public-key", "id": id1}])
    a.verify(h, CoseKey.parse(r1.auth_data.credential_data.public_key))
    print("getAssertion (allowList, discoverable): user", a.user)
    check(a.user == {"id": b"uid-alice"}, "user %r, want the id alone" % (a.user,))
    both = ctap.get_assertions("example.com", h)
    print("getAssertion (discoverable, no UV): numberOfCredentials", both[0].number_of_credentials,
          "users", [x.user for x in both])
    check([x.user for x in both] == [{"id": b"uid-bob"}, {"id": b"uid-alice"}], "users without UV")
    for x, r in zip(both, (r2, r1)):
        x.verify(h, CoseKey.parse(r.auth_data.credential_data.public_key))
    expect_error(CtapError.ERR.NOT_ALLOWED, ctap.get_next_assertion)
    print("getNextAssertion past the end: NOT_ALLOWED")

    # Framing: an empty CTAPHID_CBOR message is a CTAPHID error, not a
    # CBOR status byte (CTAP 2.1 §11.2.9.1.2).
    e = expect_error(CtapError.ERR.INVALID_LENGTH, dev.call, CTAPHID.CBOR, b"")
    print("CTAPHID_CBOR with BCNT=0: CTAPHID ERROR", e)
    # rk in getAssertion is not an option there (§6.2.2 step 5).
    e = expect_error(CtapError.ERR.UNSUPPORTED_OPTION, ctap.get_assertion, "example.com", h, options={"rk": True})
    print("getAssertion with rk:", e)
    print("ping:", dev.ping(b"tpm-fido"))
    # A channel the key never allocated: ERR_INVALID_CHANNEL (§11.2.4).
    conn = dev._connection
    bogus = struct.pack(">I", dev._channel_id + 1000)
    conn.write_packet(bogus + bytes([0x80 | CTAPHID.PING, 0, 1, 0x55]))
    r = conn.read_packet()
    print("PING on unallocated channel %s: cmd 0x%02x code 0x%02x" % (bogus.hex(), r[4], r[7]))
    check(r[4] == 0x80 | CTAPHID.ERROR and r[7] == 0x0B, "unallocated channel: % r" % r[:8])


def case_webauthn(transport):
    """A whole WebAuthn ceremony: python-fido2's client and its relying
    party (Fido2Server) with the attestation verified."""
    def verify_attestation(att_obj, client_data_hash):
        verify_packed(att_obj, client_data_hash)

    server = Fido2Server(PublicKeyCredentialRpEntity("example.com", "Example"),
                         attestation="direct", verify_attestation=verify_attestation)
    client = Fido2Client(open_device(transport), "https://example.com")
    u = user("carol")
    opts, state = server.register_begin(u, resident_key=True, user_verification="discouraged")
    reg = client.make_credential(opts["publicKey"])
    auth_data = server.register_complete(state, reg.client_data, reg.attestation_object)
    cred = auth_data.credential_data
    print("register_complete: attestation %s verified, credential %d bytes, flags 0x%02x"
          % (reg.attestation_object.fmt, len(cred.credential_id), auth_data.flags))
    for how, allow in (("allowList", [cred]), ("discoverable", None)):
        opts, state = server.authenticate_begin(allow, user_verification="discouraged")
        sel = client.get_assertion(opts["publicKey"])
        resp = sel.get_response(0)
        server.authenticate_complete(state, [cred], resp.credential_id, resp.client_data,
                                     resp.authenticator_data, resp.signature)
        print("authenticate_complete (%s): signature verified, counter %d, userHandle %r"
              % (how, resp.authenticator_data.counter, resp.user_handle))
        check(resp.user_handle == u["id"], "userHandle %r" % (resp.user_handle,))


def case_clientpin(transport):
    dev = open_device(transport)
    ctap = Ctap2(dev)
    check(ctap.info.options.get("clientPin") is False, "clientPin already set")
    ClientPin(ctap, PinProtocolV2()).set_pin(PIN)
    ctap = Ctap2(dev)  # fresh getInfo: clientPin true
    rp = {"id": "example.com", "name": "Example"}
    # makeCredUvNotRqd: with a PIN set, a non-discoverable credential
    # needs no token; a discoverable one does (PUAT_REQUIRED).
    print("getInfo with a PIN: clientPin %s, makeCredUvNotRqd %s"
          % (ctap.info.options.get("clientPin"), ctap.info.options.get("makeCredUvNotRqd")))
    att = make(ctap, rp, user("notoken"), label="no token")
    print("makeCredential without a token, not discoverable: flags 0x%02x" % att.auth_data.flags)
    # 0x36 is PUAT_REQUIRED in CTAP 2.1, PIN_REQUIRED in 0.9.1's table.
    e = expect_error(CtapError.ERR.PIN_REQUIRED, ctap.make_credential, cdh("rk"), rp, user("rk"), ES256,
                     options={"rk": True})
    print("makeCredential without a token, discoverable:", e)
    for proto in (PinProtocolV1(), PinProtocolV2()):
        cp = ClientPin(ctap, proto)
        v = proto.VERSION
        print("protocol %d: retries %s" % (v, cp.get_pin_retries()))
        # 0.9.1 sends subcommand 0x09 without permissions when none are
        # given (fixed in 0.9.2): MISSING_PARAMETER is the right answer.
        e = expect_error(CtapError.ERR.MISSING_PARAMETER, cp.get_pin_token, PIN)
        print("protocol %d: get_pin_token(pin) without permissions: %s" % (v, e))
        tok = cp.get_pin_token(PIN, P.MAKE_CREDENTIAL | P.GET_ASSERTION, "example.com")
        att = make(ctap, rp, user("pin%d" % v), token=tok, proto=proto, label="pin mc %d" % v)
        check(att.auth_data.is_user_verified(), "makeCredential with a token: no UV flag")
        cred = att.auth_data.credential_data
        tok = cp.get_pin_token(PIN, P.GET_ASSERTION, "example.com")
        h = cdh("pin ga %d" % v)
        a = ctap.get_assertion("example.com", h, [{"type": "public-key", "id": cred.credential_id}],
                               pin_uv_param=proto.authenticate(tok, h), pin_uv_protocol=v)
        a.verify(h, CoseKey.parse(cred.public_key))
        print("protocol %d: makeCredential flags 0x%02x, getAssertion flags 0x%02x (UV), both verified"
              % (v, att.auth_data.flags, a.auth_data.flags))
        check(a.auth_data.is_user_verified(), "getAssertion with a token: no UV flag")
        # A token bound to example.com is refused for another RP.
        tok = cp.get_pin_token(PIN, P.GET_ASSERTION, "example.com")
        h2 = cdh("other rp")
        e = expect_error(CtapError.ERR.PIN_AUTH_INVALID, ctap.get_assertion, "other.example", h2,
                         pin_uv_param=proto.authenticate(tok, h2), pin_uv_protocol=v)
        print("protocol %d: token bound to example.com used for other.example: %s" % (v, e))
    # A wrong PIN counts down; the right one restores the count. (Each
    # wrong PIN also counts against the TPM's dictionary-attack limit;
    # pyfido2_test.go gives its swtpm 32 tries, not the reference 3.)
    cp = ClientPin(ctap, PinProtocolV2())
    e = expect_error(CtapError.ERR.PIN_INVALID, cp.get_pin_token, "00000000", P.GET_ASSERTION)
    print("wrong PIN: %s, retries now %s" % (e, cp.get_pin_retries()))
    check(cp.get_pin_retries()[0] == 7, "retries after a wrong PIN")
    cp.get_pin_token(PIN, P.GET_ASSERTION)
    print("right PIN: retries back to", cp.get_pin_retries())
    check(cp.get_pin_retries()[0] == 8, "retries after the right PIN")
    cp = ClientPin(ctap, PinProtocolV1())
    cp.change_pin(PIN, "87654321")
    e = expect_error(CtapError.ERR.PIN_INVALID, cp.get_pin_token, PIN, P.GET_ASSERTION)
    cp.get_pin_token("87654321", P.GET_ASSERTION)
    print("change_pin (protocol 1): old PIN now %s, new PIN gives a token; retries %s"
          % (e, cp.get_pin_retries()))
    # setPIN while a PIN is set: PIN_AUTH_INVALID (§6.5.5.5).
    e = expect_error(CtapError.ERR.PIN_AUTH_INVALID, ClientPin(ctap, PinProtocolV2()).set_pin, "11112222")
    print("set_pin while a PIN is set:", e)


def case_credman(transport):
    dev = open_device(transport)
    ctap = Ctap2(dev)
    ClientPin(ctap, PinProtocolV2()).set_pin(PIN)
    ctap = Ctap2(dev)
    made = {}
    for rp_id, name in (("a.example", "ann"), ("a.example", "al"), ("b.example", "ben")):
        proto = PinProtocolV2()
        tok = ClientPin(ctap, proto).get_pin_token(PIN, P.MAKE_CREDENTIAL, rp_id)
        att = make(ctap, {"id": rp_id, "name": rp_id.upper()}, user(name), rk=True,
                   token=tok, proto=proto, label="cm " + name)
        made[att.auth_data.credential_data.credential_id] = att.auth_data.credential_data
    R = CredentialManagement.RESULT
    for proto in (PinProtocolV1(), PinProtocolV2()):
        tok = ClientPin(ctap, proto).get_pin_token(PIN, P.CREDENTIAL_MGMT)
        cm = CredentialManagement(ctap, proto, tok)
        meta = cm.get_metadata()
        print("protocol %d: metadata existing %d remaining %d"
              % (proto.VERSION, meta[R.EXISTING_CRED_COUNT], meta[R.MAX_REMAINING_COUNT]))
        check(meta[R.EXISTING_CRED_COUNT] == 3, "existing count")
        rps = cm.enumerate_rps()
        print("protocol %d: RPs" % proto.VERSION, sorted(r[R.RP]["id"] for r in rps))
        for r in rps:
            creds = cm.enumerate_creds(r[R.RP_ID_HASH])
            for c in creds:
                cid = c[R.CREDENTIAL_ID]["id"]
                check(dict(c[R.PUBLIC_KEY]) == dict(made[cid].public_key), "public key differs from makeCredential's")
            print("protocol %d:   %s: %s, public keys equal makeCredential's"
                  % (proto.VERSION, r[R.RP]["id"], sorted(c[R.USER]["name"] for c in creds)))
    # update and delete
    a_hash = hashlib.sha256(b"a.example").digest()
    target = cm.enumerate_creds(a_hash)[0]
    cm.update_user_info(target[R.CREDENTIAL_ID], {"id": target[R.USER]["id"], "name": "renamed"})
    names = sorted(c[R.USER]["name"] for c in cm.enumerate_creds(a_hash))
    print("updateUserInformation: a.example users now", names)
    check("renamed" in names, "rename not visible")
    cm.delete_cred(target[R.CREDENTIAL_ID])
    print("deleteCredential: a.example has", len(cm.enumerate_creds(a_hash)), "credential(s);",
          "metadata existing", cm.get_metadata()[R.EXISTING_CRED_COUNT])

    # The CTAP 2.0-era pairing (python-fido2 <= 0.8, older ykman): without
    # pinUvAuthToken and credMgmt in getInfo, python-fido2 takes a legacy
    # getPinToken (0x05) token and uses the prototype command 0x41.
    legacy = Ctap2(dev)
    opts = dict(legacy.info.options)
    del opts["pinUvAuthToken"], opts["credMgmt"]
    legacy.info.options = opts
    for proto in (PinProtocolV1(), PinProtocolV2()):
        cp = ClientPin(legacy, proto)
        tok = cp.get_pin_token(PIN)  # subcommand 0x05
        cm = CredentialManagement(legacy, proto, tok)  # command 0x41
        meta = cm.get_metadata()
        rps = cm.enumerate_rps()
        print("legacy getPinToken (0x05) + prototype 0x41, protocol %d: metadata existing %d, RPs %s"
              % (proto.VERSION, meta[R.EXISTING_CRED_COUNT], sorted(r[R.RP]["id"] for r in rps)))
        # The same token on the CTAP 2.1 command 0x0A: it lacks cm.
        msg = struct.pack(">B", CredentialManagement.CMD.GET_CREDS_METADATA)
        e = expect_error(CtapError.ERR.PIN_AUTH_INVALID, ctap.send_cbor, Ctap2.CMD.CREDENTIAL_MGMT,
                         {1: CredentialManagement.CMD.GET_CREDS_METADATA, 3: proto.VERSION,
                          4: proto.authenticate(tok, msg)})
        print("legacy token on 0x0A, protocol %d: %s" % (proto.VERSION, e))


def case_ctap1(transport):
    dev = open_device(transport)
    u2f = Ctap1(dev)
    v = u2f.get_version()
    print("VERSION (APDU 00 03 00 00 00 00 00 00 00):", v)
    check(v == "U2F_V2", "version " + v)
    app, chal = hashlib.sha256(b"https://u2f.example.com").digest(), cdh("register")
    reg = u2f.register(chal, app)
    reg.verify(app, chal)  # the attestation certificate's signature
    print("REGISTER: key handle %d bytes, certificate %d bytes, registration signature verified"
          % (len(reg.key_handle), len(reg.certificate)))
    try:
        u2f.authenticate(chal, app, reg.key_handle, check_only=True)
        raise AssertionError("check-only did not answer 6985")
    except ApduError as e:
        check(e.code == APDU.USE_NOT_SATISFIED, "check-only: 0x%04x" % e.code)
        print("AUTHENTICATE check-only, our key handle: 0x%04x (USE_NOT_SATISFIED)" % e.code)
    try:
        u2f.authenticate(chal, hashlib.sha256(b"other").digest(), reg.key_handle, check_only=True)
        raise AssertionError("check-only for another appId succeeded")
    except ApduError as e:
        check(e.code == APDU.WRONG_DATA, "other appId: 0x%04x" % e.code)
        print("AUTHENTICATE check-only, another appId: 0x%04x (WRONG_DATA)" % e.code)
    last = -1
    for i in range(2):
        c = cdh("sign %d" % i)
        sig = u2f.authenticate(c, app, reg.key_handle)
        sig.verify(app, c, reg.public_key)
        print("AUTHENTICATE: user presence %d counter %d, signature verified" % (sig.user_presence, sig.counter))
        check(sig.counter > last, "counter did not rise")
        last = sig.counter
    # The U2F credential works over CTAP2 for the RP whose hash is the appId
    # only if the RP ID hashes to it; here check the APDU status words.
    for name, apdu, want in (
        ("unknown INS 0x40", b"\x00\x40\x00\x00\x00\x00\x00\x00\x00", 0x6D00),
        ("CLA 0x80", b"\x80\x03\x00\x00\x00\x00\x00\x00\x00", 0x6E00),
        ("unknown INS, broken length", b"\x00\x40\x00\x00\x00\x00\x09\x01", 0x6D00),
    ):
        resp = dev.call(CTAPHID.MSG, apdu)
        sw = struct.unpack(">H", resp[-2:])[0]
        print("%s: 0x%04X" % (name, sw))
        check(sw == want, "%s: 0x%04x, want 0x%04x" % (name, sw, want))


def case_hmac_secret(transport):
    dev = open_device(transport)
    ctap = Ctap2(dev)
    rp = {"id": "example.com", "name": "Example"}
    att = make(ctap, rp, user("hs"), extensions={"hmac-secret": True}, label="hs")
    print("makeCredential hmac-secret: extension output", att.auth_data.extensions)
    check(att.auth_data.extensions == {"hmac-secret": True}, "extension output")
    cred = att.auth_data.credential_data
    allow = [{"type": "public-key", "id": cred.credential_id}]
    s1, s2 = os.urandom(32), os.urandom(32)

    def get(salts, proto):
        ext = HmacSecretExtension(ctap, proto)
        inp = ext.process_get_input({"hmacGetSecret": salts})
        h = cdh("hs ga")
        a = ctap.get_assertion("example.com", h, allow, extensions={"hmac-secret": inp})
        a.verify(h, CoseKey.parse(cred.public_key))
        check(a.auth_data.flags & 0x80, "ED flag clear")
        return ext.process_get_output(a.auth_data)["hmacGetSecret"]

    for proto in (PinProtocolV1(), PinProtocolV2()):
        o = get({"salt1": s1, "salt2": s2}, proto)
        again = get({"salt1": s1}, proto)
        other = get({"salt1": s2}, proto)
        print("protocol %d: output1 %s.. output2 %s.. (32 bytes each); same salt again: %s; salt2 as salt1: %s"
              % (proto.VERSION, o["output1"][:4].hex(), o["output2"][:4].hex(),
                 again["output1"] == o["output1"], other["output1"] == o["output2"]))
        check(len(o["output1"]) == 32 and len(o["output2"]) == 32, "output lengths")
        check(again["output1"] == o["output1"], "output not stable")
        check(other["output1"] == o["output2"], "salt order")
        check(o["output1"] != o["output2"], "outputs equal")
    # A wrong saltAuth is PIN_AUTH_INVALID (§12.5).
    ext = HmacSecretExtension(ctap, PinProtocolV2())
    inp = ext.process_get_input({"hmacGetSecret": {"salt1": s1}})
    inp[3] = bytes(len(inp[3]))
    e = expect_error(CtapError.ERR.PIN_AUTH_INVALID, ctap.get_assertion, "example.com", cdh("x"), allow,
                     extensions={"hmac-secret": inp})
    print("hmac-secret with a wrong saltAuth:", e)


def case_channels(transport):
    """getNextAssertion belongs to the channel that started the walk."""
    a_dev, b_dev = open_device(transport), open_device(transport)
    a, b = Ctap2(a_dev), Ctap2(b_dev)
    rp = {"id": "example.com", "name": "Example"}
    for n in ("one", "two", "three"):
        make(a, rp, user(n), rk=True, label="ch " + n)
    h = cdh("walk")
    first = a.get_assertion("example.com", h)
    print("channel A getAssertion: numberOfCredentials", first.number_of_credentials)
    e = expect_error(CtapError.ERR.NOT_ALLOWED, b.get_next_assertion)
    print("channel B getNextAssertion:", e)
    e = expect_error(CtapError.ERR.NOT_ALLOWED, a.get_next_assertion)
    print("channel A getNextAssertion after B spoke:", e)
    walk = a.get_assertions("example.com", h)
    print("channel A walk again:", [x.user for x in walk])
    check(len(walk) == 3, "walk length")


def case_waiting(transport):
    """Needs the daemon with --presence allow-after:D."""
    dev = open_device(transport)
    ctap = Ctap2(dev)
    seen = []
    att = ctap.make_credential(cdh("wait"), {"id": "example.com"}, user("w"), ES256,
                               on_keepalive=seen.append)
    verify_packed(att, cdh("wait"))
    print("makeCredential while the key waits for the touch: keepalive statuses seen", [int(s) for s in seen])
    check(2 in seen, "no KEEPALIVE UPNEEDED")
    ev = threading.Event()
    got = []
    e = expect_error(CtapError.ERR.KEEPALIVE_CANCEL, ctap.make_credential, cdh("cancel"),
                     {"id": "example.com"}, user("w2"), ES256, event=ev,
                     on_keepalive=lambda s: (got.append(s), ev.set()))
    print("CANCEL after the first keepalive", [int(s) for s in got], "->", e)


CASES = {
    "ctap2": case_ctap2,
    "webauthn": case_webauthn,
    "clientpin": case_clientpin,
    "credman": case_credman,
    "ctap1": case_ctap1,
    "hmac-secret": case_hmac_secret,
    "channels": case_channels,
    "waiting": case_waiting,
}

if __name__ == "__main__":
    if len(sys.argv) != 3 or sys.argv[2] not in CASES:
        raise SystemExit(__doc__)
    print("python-fido2", fido2.__version__)
    CASES[sys.argv[2]](sys.argv[1])
    print("OK")
