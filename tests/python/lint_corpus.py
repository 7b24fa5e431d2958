"""Lints every certificate and CRL the test suite's signers made.

Each signer daemon the tests start copies what its repository holds into
the corpus directory when it is dropped (SIGNER_LINT_CORPUS; see
crates/testsupport). Every file is linted here with pkilint, in one
process: a certificate under a CA/Browser Forum TLS policy with the
serverauth linter, one under an S/MIME policy with the S/MIME linter, any
other with RFC 5280's; a CRL with RFC 5280's CRL linter. A finding at
ERROR or FATAL fails the suite, naming the file and the finding.

Usage: python lint_corpus.py DIRECTORY [SEVERITY [AT_LEAST]]   (pkilint's
interpreter; SEVERITY defaults to ERROR: WARNING shows what the suite lets
pass; fewer than AT_LEAST files fails too: the collection itself broke)
"""

import contextlib
import io
import os
import sys

from pkilint.bin import lint_cabf_serverauth_cert, lint_cabf_smime_cert, lint_crl, lint_pkix_cert

def oid_tlv(dotted):
    """The DER of an OBJECT IDENTIFIER."""
    arcs = [int(a) for a in dotted.split(".")]
    body = bytearray()
    for n in [arcs[0] * 40 + arcs[1]] + arcs[2:]:
        chunk = [n & 0x7F]
        n >>= 7
        while n:
            chunk.insert(0, 0x80 | (n & 0x7F))
            n >>= 7
        body += bytes(chunk)
    return bytes([0x06, len(body)]) + bytes(body)


# The Forum's policies: EV and the TLS levels; the S/MIME levels and
# generations (2.23.140.1.5.level.generation).
TLS = [oid_tlv(o) for o in ("2.23.140.1.1", "2.23.140.1.2.1", "2.23.140.1.2.2", "2.23.140.1.2.3")]
SMIME = [oid_tlv(f"2.23.140.1.5.{l}.{g}") for l in range(1, 5) for g in range(1, 4)]
assert oid_tlv("2.23.140.1.5.1.3").hex() == "060767810c01050103"
assert oid_tlv("1.2.840.113549").hex() == "06062a864886f70d"


def linter(kind, der):
    if kind == "crl":
        return "lint_crl", lint_crl.main, ["lint", "-t", "CRL", "-p", "PKIX"]
    if any(o in der for o in TLS):
        return "lint_cabf_serverauth_cert", lint_cabf_serverauth_cert.main, ["lint", "-d"]
    if any(o in der for o in SMIME):
        return "lint_cabf_smime_cert", lint_cabf_smime_cert.main, ["lint", "-d"]
    return "lint_pkix_cert", lint_pkix_cert.main, ["lint"]


def main():
    directory = sys.argv[1]
    severity = sys.argv[2] if len(sys.argv) > 2 else "ERROR"
    at_least = int(sys.argv[3]) if len(sys.argv) > 3 else 0
    names = sorted(n for n in os.listdir(directory) if n.endswith(".der"))
    failed = 0
    counts = {}
    for name in names:
        path = os.path.join(directory, name)
        kind = name.split("-", 1)[0]
        with open(path, "rb") as f:
            der = f.read()
        tool, run, args = linter(kind, der)
        counts[tool] = counts.get(tool, 0) + 1
        out, err = io.StringIO(), io.StringIO()
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                run(args + ["-s", severity, path])
            except SystemExit as e:  # argparse's refusal
                if e.code:
                    print(f"the linter exited {e.code}", file=sys.stderr)
        findings = [l.strip() for l in out.getvalue().splitlines() if l.strip()]
        trouble = err.getvalue().strip()
        if findings or trouble:
            failed += 1
            print(f"{name} ({tool}):", *findings, trouble, sep="\n  ")
    summary = ", ".join(f"{n} by {t}" for t, n in sorted(counts.items()))
    print(f"lint corpus: {len(names)} files ({summary}); {failed} with findings at {severity}")
    if len(names) < at_least:
        print(f"lint corpus: expected at least {at_least} files: the tests' signers were not collected")
        return 1
    tools = ("lint_cabf_serverauth_cert", "lint_cabf_smime_cert", "lint_crl", "lint_pkix_cert")
    if at_least and not all(counts.get(t) for t in tools):
        print(f"lint corpus: every linter should have had files (the suite issues each kind): {counts}")
        return 1
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
