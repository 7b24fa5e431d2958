#!/usr/bin/env python3
"""A signer client written from docs/protocol.md alone, with the standard
library only (its own small msgpack codec). Used by tests/spec_client.rs to
show that the specification is enough to interoperate.

Usage: spec_client.py DEVICE   -- runs the checks, prints "ok" lines, exits 0.
       spec_client.py DEVICE audit VKEY   -- checks the audit log (section 7.9)
       against the audit key VKEY.
"""
import base64, hashlib, os, select, struct, sys, termios, time, tty, zlib

# --- msgpack (the subset the protocol uses) --------------------------------

def pack(v):
    if v is None: return b"\xc0"
    if v is True: return b"\xc3"
    if v is False: return b"\xc2"
    if isinstance(v, int):
        if 0 <= v < 0x80: return bytes([v])
        if v < 0:
            if v >= -32: return struct.pack("b", v)
            return b"\xd3" + struct.pack(">q", v)
        for marker, fmt, limit in ((0xcc, ">B", 1 << 8), (0xcd, ">H", 1 << 16), (0xce, ">I", 1 << 32), (0xcf, ">Q", 1 << 64)):
            if v < limit: return bytes([marker]) + struct.pack(fmt, v)
    if isinstance(v, str):
        b = v.encode()
        if len(b) < 32: return bytes([0xa0 | len(b)]) + b
        if len(b) < 256: return b"\xd9" + bytes([len(b)]) + b
        return b"\xda" + struct.pack(">H", len(b)) + b
    if isinstance(v, (bytes, bytearray)):
        if len(v) < 256: return b"\xc4" + bytes([len(v)]) + bytes(v)
        if len(v) < 65536: return b"\xc5" + struct.pack(">H", len(v)) + bytes(v)
        return b"\xc6" + struct.pack(">I", len(v)) + bytes(v)
    if isinstance(v, (list, tuple)):
        h = bytes([0x90 | len(v)]) if len(v) < 16 else b"\xdc" + struct.pack(">H", len(v))
        return h + b"".join(pack(x) for x in v)
    if isinstance(v, dict):
        h = bytes([0x80 | len(v)]) if len(v) < 16 else b"\xde" + struct.pack(">H", len(v))
        return h + b"".join(pack(k) + pack(x) for k, x in v.items())
    raise TypeError(v)

def unpack(b, i=0):
    t = b[i]; i += 1
    if t < 0x80: return t, i
    if t >= 0xe0: return t - 0x100, i
    if 0x80 <= t <= 0x8f: return _map(b, i, t & 15)
    if 0x90 <= t <= 0x9f: return _arr(b, i, t & 15)
    if 0xa0 <= t <= 0xbf: n = t & 31; return b[i:i + n].decode(), i + n
    if t == 0xc0: return None, i
    if t in (0xc2, 0xc3): return t == 0xc3, i
    sizes = {0xc4: 1, 0xc5: 2, 0xc6: 4, 0xd9: 1, 0xda: 2, 0xdb: 4}
    if t in sizes:
        k = sizes[t]; n = int.from_bytes(b[i:i + k], "big"); i += k
        s = b[i:i + n]
        return (bytes(s) if t <= 0xc6 else s.decode()), i + n
    ints = {0xcc: ">B", 0xcd: ">H", 0xce: ">I", 0xcf: ">Q", 0xd0: ">b", 0xd1: ">h", 0xd2: ">i", 0xd3: ">q"}
    if t in ints:
        n = struct.calcsize(ints[t]); return struct.unpack(ints[t], b[i:i + n])[0], i + n
    if t == 0xdc: return _arr(b, i + 2, int.from_bytes(b[i:i + 2], "big"))
    if t == 0xdd: return _arr(b, i + 4, int.from_bytes(b[i:i + 4], "big"))
    if t == 0xde: return _map(b, i + 2, int.from_bytes(b[i:i + 2], "big"))
    if t == 0xdf: return _map(b, i + 4, int.from_bytes(b[i:i + 4], "big"))
    raise ValueError("msgpack type %#x" % t)

def _arr(b, i, n):
    out = []
    for _ in range(n):
        v, i = unpack(b, i); out.append(v)
    return out, i

def _map(b, i, n):
    out = {}
    for _ in range(n):
        k, i = unpack(b, i); v, i = unpack(b, i); out[k] = v
    return out, i

# --- frames (section 3) -----------------------------------------------------

def cobs_encode(data):
    out, block = bytearray(), bytearray()
    for byte in data:
        if byte == 0:
            out.append(len(block) + 1); out += block; block = bytearray()
        else:
            block.append(byte)
            if len(block) == 254:
                out.append(255); out += block; block = bytearray()
    out.append(len(block) + 1); out += block
    return bytes(out)

def cobs_decode(data):
    out, i = bytearray(), 0
    while i < len(data):
        code = data[i]; i += 1
        if code == 0 or i + code - 1 > len(data): raise ValueError("bad COBS")
        out += data[i:i + code - 1]; i += code - 1
        if code < 255 and i < len(data): out.append(0)
    return bytes(out)

def frame(content):
    return cobs_encode(content + zlib.crc32(content).to_bytes(4, "big")) + b"\0"

def unframe(encoded):
    raw = cobs_decode(encoded)
    content, crc = raw[:-4], raw[-4:]
    if zlib.crc32(content).to_bytes(4, "big") != crc: raise ValueError("CRC")
    return content

# --- the link ----------------------------------------------------------------

class Link:
    def __init__(self, path):
        self.fd = os.open(path, os.O_RDWR | os.O_NOCTTY)
        tty.setraw(self.fd)
        self.buf = bytearray()
        os.write(self.fd, b"\0")  # end any partial frame (section 3.2)

    def send(self, request_id, command, body):
        os.write(self.fd, frame(pack([1, request_id, command, body])))  # section 5.1

    def send_raw(self, data):
        os.write(self.fd, data)

    def responses(self, count, timeout=10.0):
        """Reads response parts until `count` complete responses arrived."""
        done, parts, end = [], {}, time.time() + timeout
        while len(done) < count and time.time() < end:
            if 0 in self.buf:
                i = self.buf.index(0)
                encoded, self.buf = bytes(self.buf[:i]), self.buf[i + 1:]
                if not encoded: continue
                env, used = unpack(unframe(encoded))
                assert used == len(unframe(encoded))
                version, rid, status, part, nparts, data = env
                assert version == 1
                parts.setdefault(rid, {})[part] = data
                if len(parts[rid]) == nparts:
                    body = b"".join(parts.pop(rid)[k] for k in range(nparts))
                    done.append((rid, status, unpack(body)[0]))
                continue
            r, _, _ = select.select([self.fd], [], [], 0.2)
            if r: self.buf += os.read(self.fd, 65536)
        return done

# --- the audit log (section 7.9) -----------------------------------------------

def sha256(b): return hashlib.sha256(b).digest()
def leaf(b): return sha256(b"\x00" + b)
def node(l, r): return sha256(b"\x01" + l + r)

def mth(leaves):  # RFC 9162 2.1.1
    if not leaves: return sha256(b"")
    if len(leaves) == 1: return leaves[0]
    k = 1
    while k * 2 < len(leaves): k *= 2
    return node(mth(leaves[:k]), mth(leaves[k:]))

def verify_consistency(m, n, old_root, new_root, proof):  # RFC 9162 2.1.4.2
    if m == n: return not proof and old_root == new_root
    if m == 0: return not proof
    if not proof: return False
    path = ([old_root] if m & (m - 1) == 0 else []) + proof
    fn, sn = m - 1, n - 1
    while fn & 1: fn >>= 1; sn >>= 1
    fr = sr = path[0]
    for c in path[1:]:
        if sn == 0: return False
        if fn & 1 or fn == sn:
            fr, sr = node(c, fr), node(c, sr)
            while not fn & 1 and fn != 0: fn >>= 1; sn >>= 1
        else:
            sr = node(sr, c)
        fn >>= 1; sn >>= 1
    return sn == 0 and fr == old_root and sr == new_root

def verify_inclusion(h, index, size, proof, root):  # RFC 9162 2.1.3.2
    if index >= size: return False
    fn, sn, r = index, size - 1, h
    for p in proof:
        if sn == 0: return False
        if fn & 1 or fn == sn:
            r = node(p, r)
            while not fn & 1 and fn != 0: fn >>= 1; sn >>= 1
        else:
            r = node(r, p)
        fn >>= 1; sn >>= 1
    return sn == 0 and r == root

def audit(link, vkey):
    name, key_id, material = vkey.split("+", 2)  # names have no "+"; base64 may
    material = base64.b64decode(material)
    assert material[0] == 1 and len(material) == 33, material
    assert sha256(name.encode() + b"\n" + material)[:4].hex() == key_id
    link.send(4001, 48, {})
    [(rid, status, reply)] = link.responses(1)
    assert (rid, status) == (4001, 0), (rid, status, reply)
    text, sigs = reply["checkpoint"].split("\n\n", 1)
    origin, size, root = text.split("\n")
    size, root = int(size), base64.b64decode(root)
    assert origin == name and len(root) == 32
    line = [l for l in sigs.splitlines() if l.startswith("\u2014 " + name + " ")]
    sig = base64.b64decode(line[0].split(" ")[2])
    assert sig[:4].hex() == key_id and len(sig) == 4 + 64, sig.hex()
    print("ok audit_checkpoint size", size)
    entries, rid = [], 4100
    while len(entries) < size:
        link.send(rid, 50, {"start": len(entries), "count": 3})
        [(r, status, reply)] = link.responses(1)
        assert (r, status) == (rid, 0) and 0 < len(reply["entries"]) <= 3, (status, reply)
        entries += reply["entries"]; rid += 1
    entries = entries[:size]
    leaves = [leaf(e) for e in entries]
    assert mth(leaves) == root, "the entries give the checkpoint's root"
    first = unpack(entries[0])[0]
    assert first["seq"] == 1 and "kind" in first and "facts" in first, first
    print("ok audit_entries", size, "give the root")
    for old in (1, size // 2, size):
        link.send(rid, 49, {"old": old, "new": size})
        [(r, status, reply)] = link.responses(1)
        assert (r, status) == (rid, 0), (status, reply)
        assert verify_consistency(old, size, mth(leaves[:old]), root, reply["proof"]), old
        rid += 1
    link.send(rid, 49, {"old": size, "new": size + 1})
    [(r, status, _)] = link.responses(1)
    assert status == 500, status
    rid += 1
    print("ok audit_consistency")
    link.send(rid, 51, {"index": size - 1, "size": size})
    [(r, status, reply)] = link.responses(1)
    assert status == 0 and reply["entry"] == entries[-1], status
    assert verify_inclusion(leaves[-1], size - 1, size, reply["proof"], root)
    print("ok audit_inclusion")
    link.send(rid + 1, 52, {"size": size, "root": bytes(32)})
    link.send(rid + 2, 52, {"size": size, "root": root})
    got = {r: s for r, s, _ in link.responses(2)}
    assert got == {rid + 1: 501, rid + 2: 0}, got
    print("ok audit_ack")

def crls(link, issuer):
    """Section 7.7 against a signer with CA `issuer` (no CRL shards)."""
    link.send(5000, 19, {})
    [(rid, status, reply)] = link.responses(1)
    assert status == 0 and any(c["name"] == issuer for c in reply["cas"]), reply
    assert all("crl_shards" not in c for c in reply["cas"]), reply  # absent, not nil
    link.send(5001, 18, {"issuer": issuer})
    [(rid, status, crl)] = link.responses(1)
    assert (rid, status) == (5001, 0), (rid, status, crl)
    assert isinstance(crl["crl"], bytes) and "diff" not in crl and not crl["unchanged"], crl
    assert hashlib.sha256(crl["crl"]).digest() == crl["sha256"]
    print("ok fetch_crl: full CRL, optional fields left out")
    link.send(5002, 18, {"issuer": issuer, "have_number": crl["number"], "have_sha256": crl["sha256"]})
    [(rid, status, same)] = link.responses(1)
    assert status == 0 and same["unchanged"] and "crl" not in same and "diff" not in same, same
    link.send(5003, 18, {"issuer": issuer, "have_number": crl["number"]})  # without its digest
    [(rid, status, err)] = link.responses(1)
    assert (rid, status) == (5003, 206), (rid, status, err)
    link.send(5004, 18, {"issuer": issuer, "shard": 0})  # an issuer without shards
    [(rid, status, err)] = link.responses(1)
    assert (rid, status) == (5004, 207), (rid, status, err)
    print("ok fetch_crl: unchanged, have_number alone unknown_crl, unknown_shard")
    # Section 7.4: a CSR beyond the frame limit is a frame the signer refuses.
    link.send(5005, 16, {"request_id": "big", "profile": "server", "csr": b"\x30" * 20000, "subject": []})
    [(rid, status, err)] = link.responses(1)
    assert (rid, status) == (0, 2), (rid, status, err)
    print("ok a CSR beyond max_frame: frame_oversize, id 0")


def main():
    link = Link(sys.argv[1])
    if len(sys.argv) > 3 and sys.argv[2] == "audit":
        audit(link, sys.argv[3])
        return
    if len(sys.argv) > 3 and sys.argv[2] == "crls":
        crls(link, sys.argv[3])
        return
    # Vectors from section 10.
    assert frame(bytes.fromhex("0102")).hex() == "070102b6cc429200"
    assert frame(bytes.fromhex("9401020280")).hex() == "0a94010202808612246400"
    print("ok vectors")

    link.send(1001, 1, {"max_frame": 4096, "client": "spec_client.py"})
    [(rid, status, hello)] = link.responses(1)
    assert (rid, status) == (1001, 0) and hello["version"] == 1 and 2 in hello["commands"], hello
    print("ok hello", hello["signer_id"], "max_in_flight", hello["max_in_flight"])

    for rid in range(2000, 2008):  # pipelined
        link.send(rid, 2, {})
    got = link.responses(8)
    assert sorted(r for r, s, _ in got) == list(range(2000, 2008)) and all(s == 0 for _, s, _ in got)
    assert all(h["status"] in ("ok", "degraded", "failing") and "link" in h for _, _, h in got)
    print("ok pipelined health x8")

    link.send(2003, 2, {})  # a retry: answered from the store, not executed again
    before = got[-1][2]["link"]["executed"]
    link.send(3000, 2, {})
    got = {r: h for r, s, h in link.responses(2)}
    assert got[3000]["link"]["executed"] == before + 1, (before, got[3000]["link"])
    assert got[3000]["link"]["replayed"] >= 1
    print("ok retry replayed, executed once")

    bad = bytearray(frame(pack([1, 3001, 2, {}])))
    bad[-2] ^= 0x01 if bad[-2] != 0x01 else 0x03
    link.send_raw(bytes(bad))
    [(rid, status, err)] = link.responses(1)
    assert rid == 0 and status in (1, 3) and err["message"], (rid, status, err)
    print("ok bad frame -> id 0 status", status)

    link.send(0, 2, {})  # id 0 is reserved: refused, never executed
    [(rid, status, err)] = link.responses(1)
    assert (rid, status) == (0, 10) and "id 0" in err["message"], (rid, status, err)
    print("ok id 0 -> malformed_envelope, not executed")

    # Section 5.1: a readable id is answered with that id, not executed.
    link.send_raw(frame(pack([1, 3010, 2, {}]) + b"\x81"))  # a byte after the array
    link.send_raw(frame(pack([1, 3011, "health", {}])))       # command not a u16
    link.send_raw(frame(pack([1, 3012])))                     # an array of 2
    got = sorted((r, s) for r, s, _ in link.responses(3))
    assert got == [(3010, 10), (3011, 10), (3012, 10)], got
    link.send_raw(frame(pack(["1", 3013, 2, {}])))            # version not a uint: id 0
    [(rid, status, err)] = link.responses(1)
    assert (rid, status) == (0, 10), (rid, status, err)
    print("ok malformed envelopes answered by id")

    link.send(3002, 0x4242, {})
    [(rid, status, err)] = link.responses(1)
    assert (rid, status) == (3002, 12), (rid, status, err)
    link.send(3003, 2, {"unexpected": 1})
    [(rid, status, err)] = link.responses(1)
    assert (rid, status) == (3003, 13), (rid, status, err)
    link.send(3004, 1, {"max_frame": 4096})
    link.send(3004, 2, {})
    got = link.responses(2)
    assert sorted((r, s) for r, s, _ in got) == [(3004, 0), (3004, 15)], got
    print("ok unknown_command, malformed_body, id_conflict")

    link.send(3005, 19, {})  # ca_certs: not every signer has it
    [(rid, status, reply)] = link.responses(1)
    assert rid == 3005 and status in (0, 17), (rid, status)  # 17: not_enabled
    print("ok ca_certs status", status)

if __name__ == "__main__":
    main()
