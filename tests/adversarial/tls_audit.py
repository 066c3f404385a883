#!/usr/bin/env python3
"""TLS audit of Moat's STARTTLS listeners with a third-party scanner (sslyze).

Run from the repository root, against the already-built binary target/debug/moat:

    python3 tests/adversarial/tls_audit.py

It starts its own `moat dev` (all ports 0, a temporary data directory), scans the mx,
submission and legacy-submission listeners over SMTP STARTTLS with sslyze, prints what was
found per listener and one line per check, then `tls-audit: N passed, M failed`; the exit
status is non-zero when any check failed. sslyze is installed with
`python3 -m pip install -q sslyze==6.3.1` when it cannot be imported.

Policy checked:
- mx and submission (tls-min-version 1.2): no SSL 2.0/3.0, no TLS 1.0/1.1; TLS 1.2 and 1.3
  accepted; every TLS 1.2 suite ECDHE with an AEAD cipher (no CBC, RC4, 3DES, NULL, EXPORT,
  anonymous or static-RSA key exchange); secure renegotiation only and client-initiated
  renegotiation refused; no compression; not vulnerable to Heartbleed, ROBOT, CCS injection.
- legacy-submission (tls-min-version 1.0, opt-in for legacy clients): TLS 1.0/1.1 may be
  accepted, but no SSL 2.0/3.0, and no suite with RC4/3DES/NULL/EXPORT/anonymous or static RSA
  key exchange in any version; TLS 1.0/1.1 suites forward secret (ECDHE); no insecure
  renegotiation. sslyze runs its renegotiation checks over the highest version (rustls on
  this listener), so the OpenSSL engine that serves TLS 1.0/1.1 clients is checked for
  renegotiation separately with `openssl s_client -tls1` when openssl is installed.
Every listener must also honour TLS_FALLBACK_SCSV (RFC 7507: a lower-version ClientHello with
the SCSV gets inappropriate_fallback, or is refused).
Informational (printed, not asserted): extended master secret, curves.
"""

from __future__ import annotations

import re
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from moatdev import MoatDev  # noqa: E402


# The version this audit was written against: a new release may change what it reports.
SSLYZE = "sslyze==6.3.1"


def ensure_sslyze():
    try:
        import sslyze  # noqa: F401
        return
    except ImportError:
        pass
    print(f"sslyze not importable: installing it with `python3 -m pip install -q {SSLYZE}`",
          flush=True)
    r = subprocess.run([sys.executable, "-m", "pip", "install", "-q", SSLYZE],
                       capture_output=True, text=True, timeout=600)
    if r.returncode != 0:
        print("tls-audit: cannot install sslyze (pip exit "
              f"{r.returncode}):\n{r.stdout}\n{r.stderr}")
        print("tls-audit: 0 passed, 1 failed")
        sys.exit(2)
    try:
        import sslyze  # noqa: F401
    except ImportError as e:
        print(f"tls-audit: sslyze installed but not importable: {e}")
        print("tls-audit: 0 passed, 1 failed")
        sys.exit(2)


ensure_sslyze()

from sslyze import (  # noqa: E402
    ProtocolWithOpportunisticTlsEnum,
    Scanner,
    ScanCommand,
    ScanCommandAttemptStatusEnum,
    ServerNetworkConfiguration,
    ServerNetworkLocation,
    ServerScanRequest,
    ServerScanStatusEnum,
)

VERSIONS = [
    ("SSL 2.0", "ssl_2_0_cipher_suites", ScanCommand.SSL_2_0_CIPHER_SUITES),
    ("SSL 3.0", "ssl_3_0_cipher_suites", ScanCommand.SSL_3_0_CIPHER_SUITES),
    ("TLS 1.0", "tls_1_0_cipher_suites", ScanCommand.TLS_1_0_CIPHER_SUITES),
    ("TLS 1.1", "tls_1_1_cipher_suites", ScanCommand.TLS_1_1_CIPHER_SUITES),
    ("TLS 1.2", "tls_1_2_cipher_suites", ScanCommand.TLS_1_2_CIPHER_SUITES),
    ("TLS 1.3", "tls_1_3_cipher_suites", ScanCommand.TLS_1_3_CIPHER_SUITES),
]
OTHER = [
    ScanCommand.TLS_COMPRESSION,
    ScanCommand.SESSION_RENEGOTIATION,
    ScanCommand.HEARTBLEED,
    ScanCommand.ROBOT,
    ScanCommand.OPENSSL_CCS_INJECTION,
    ScanCommand.TLS_FALLBACK_SCSV,
    ScanCommand.TLS_EXTENDED_MASTER_SECRET,
    ScanCommand.ELLIPTIC_CURVES,
]

WEAK_MARKERS = ["RC4", "3DES", "DES_CBC", "_DES_", "NULL", "EXPORT", "_anon_", "ANON", "MD5",
                "IDEA", "SEED", "RC2", "PSK", "SRP", "KRB5"]

passed = 0
failed = 0


def check(name: str, ok: bool, detail: str = "") -> None:
    global passed, failed
    if ok:
        passed += 1
        print(f"PASS  {name}" + (f" ({detail})" if detail else ""), flush=True)
    else:
        failed += 1
        print(f"FAIL  {name}: {detail}", flush=True)


def info(name: str, text: str) -> None:
    print(f"INFO  {name}: {text}", flush=True)


def weak(suite: str) -> list[str]:
    return [m for m in WEAK_MARKERS if m in suite]


def static_rsa(suite: str) -> bool:
    # TLS_RSA_WITH_* is RSA key exchange; TLS_ECDHE_RSA_* only signs with RSA.
    return suite.startswith("TLS_RSA_") or suite.startswith("SSL_CK_")


def aead(suite: str) -> bool:
    return "_GCM_" in suite or "CHACHA20_POLY1305" in suite or "_CCM" in suite


def attempt_result(scan_result, field: str):
    att = getattr(scan_result, field)
    if att.status != ScanCommandAttemptStatusEnum.COMPLETED:
        reason = getattr(att, "error_reason", None)
        trace = ""
        if getattr(att, "error_trace", None) is not None:
            trace = "".join(att.error_trace.format()).strip().splitlines()[-1]
        return None, f"{att.status.value} {reason} {trace}".strip()
    return att.result, ""


def audit_listener(label: str, result, legacy: bool) -> None:
    print(f"--- {label}: {result.server_location.ip_address}:{result.server_location.port}",
          flush=True)
    if result.scan_status != ServerScanStatusEnum.COMPLETED or result.scan_result is None:
        trace = ""
        if result.connectivity_error_trace is not None:
            trace = "".join(result.connectivity_error_trace.format()).strip().splitlines()[-1]
        check(f"{label}: sslyze connects over SMTP STARTTLS", False,
              f"connectivity {result.connectivity_status.value}, scan "
              f"{result.scan_status.value}: {trace}")
        return
    check(f"{label}: sslyze connects over SMTP STARTTLS", True,
          f"highest version {result.connectivity_result.highest_tls_version_supported.name}, "
          f"suite {result.connectivity_result.cipher_suite_supported}")
    sr = result.scan_result
    accepted: dict[str, list[str]] = {}
    for vname, field, _ in VERSIONS:
        res, err = attempt_result(sr, field)
        if res is None:
            check(f"{label}: {vname} scan ran", False, err)
            continue
        suites = [s.cipher_suite.name for s in res.accepted_cipher_suites]
        accepted[vname] = suites
        info(f"{label}: {vname}", ", ".join(suites) if suites else "not accepted")

    def got(v):
        return accepted.get(v)

    # Protocol versions.
    for v in ("SSL 2.0", "SSL 3.0"):
        if got(v) is not None:
            check(f"{label}: {v} not accepted", not got(v), ", ".join(got(v)))
    for v in ("TLS 1.0", "TLS 1.1"):
        if got(v) is None:
            continue
        if legacy:
            # Accepted by design; the suites must stay within the legacy policy.
            bad = [s for s in got(v) if weak(s) or static_rsa(s) or "_ECDHE_" not in s]
            check(f"{label}: {v} suites (if any) are ECDHE, none weak or static RSA",
                  not bad, ", ".join(bad) if bad else f"{len(got(v))} suites")
        else:
            check(f"{label}: {v} not accepted", not got(v), ", ".join(got(v)))
    for v in ("TLS 1.2", "TLS 1.3"):
        if got(v) is not None:
            check(f"{label}: {v} accepted", bool(got(v)), "no suite accepted" if not got(v)
                  else f"{len(got(v))} suites")
    if got("TLS 1.2"):
        bad = [s for s in got("TLS 1.2")
               if not s.startswith("TLS_ECDHE_") or not aead(s) or "CBC" in s or weak(s)
               or static_rsa(s)]
        check(f"{label}: every TLS 1.2 suite is ECDHE + AEAD", not bad, ", ".join(bad)
              if bad else ", ".join(got("TLS 1.2")))
    # No weak suite in any version (also covers anonymous suites).
    everything = [s for v in accepted.values() for s in v]
    bad = [s for s in everything if weak(s) or static_rsa(s)]
    check(f"{label}: no RC4/3DES/NULL/EXPORT/anon/static-RSA suite in any version", not bad,
          ", ".join(bad))

    res, err = attempt_result(sr, "tls_compression")
    if res is None:
        check(f"{label}: compression scan ran", False, err)
    else:
        check(f"{label}: no TLS compression", not res.supports_compression,
              f"supports_compression={res.supports_compression}")
    res, err = attempt_result(sr, "session_renegotiation")
    if res is None:
        check(f"{label}: renegotiation scan ran", False, err)
    else:
        check(f"{label}: no insecure renegotiation (secure renegotiation only)",
              res.supports_secure_renegotiation,
              f"supports_secure_renegotiation={res.supports_secure_renegotiation}")
        check(f"{label}: client-initiated renegotiation refused",
              not res.is_vulnerable_to_client_renegotiation_dos,
              f"accepted {res.client_renegotiations_success_count} renegotiations")
    res, err = attempt_result(sr, "heartbleed")
    if res is None:
        check(f"{label}: heartbleed scan ran", False, err)
    else:
        check(f"{label}: not vulnerable to Heartbleed", not res.is_vulnerable_to_heartbleed,
              f"is_vulnerable_to_heartbleed={res.is_vulnerable_to_heartbleed}")
    res, err = attempt_result(sr, "openssl_ccs_injection")
    if res is None:
        check(f"{label}: CCS injection scan ran", False, err)
    else:
        check(f"{label}: not vulnerable to CCS injection", not res.is_vulnerable_to_ccs_injection,
              f"is_vulnerable_to_ccs_injection={res.is_vulnerable_to_ccs_injection}")
    res, err = attempt_result(sr, "robot")
    if res is None:
        check(f"{label}: ROBOT scan ran", False, err)
    else:
        check(f"{label}: not vulnerable to ROBOT", res.robot_result.value.startswith("NOT_VULNERABLE"),
              res.robot_result.value)
    res, err = attempt_result(sr, "tls_fallback_scsv")
    if res is None:
        check(f"{label}: TLS_FALLBACK_SCSV scan ran", False, err)
    else:
        # RFC 7507: a ClientHello below the server's highest version that carries
        # TLS_FALLBACK_SCSV MUST get a fatal inappropriate_fallback alert (sslyze offers TLS 1.1
        # + SCSV when TLS 1.3 is supported; a refused handshake also counts as protected).
        check(f"{label}: downgrade refused (TLS_FALLBACK_SCSV honoured, RFC 7507)",
              res.supports_fallback_scsv,
              f"supports_fallback_scsv={res.supports_fallback_scsv}"
              + ("" if res.supports_fallback_scsv else
                 ": a TLS 1.1 ClientHello with TLS_FALLBACK_SCSV was accepted although the "
                 "listener supports TLS 1.3"))
    res, err = attempt_result(sr, "tls_extended_master_secret")
    info(f"{label}: extended master secret",
         err if res is None else f"supports_ems_extension={res.supports_ems_extension}")
    res, err = attempt_result(sr, "elliptic_curves")
    if res is None:
        info(f"{label}: curves", err)
    else:
        info(f"{label}: curves", ", ".join(c.name for c in res.supported_curves or []))


def legacy_engine_renegotiation(moat: MoatDev) -> None:
    """sslyze checks renegotiation over the highest version; the OpenSSL engine that serves
    TLS 1.0/1.1 on the legacy listener is checked here with openssl s_client -tls1."""
    import shutil
    label = "legacy-submission (TLS 1.0, OpenSSL engine)"
    if not shutil.which("openssl"):
        info(label, "openssl not installed: renegotiation of the TLS 1.0 engine not checked")
        return
    host, port = moat.addr("legacy-submission")
    args = ["openssl", "s_client", "-starttls", "smtp", "-tls1", "-cipher", "DEFAULT:@SECLEVEL=0",
            "-connect", f"{host}:{port}", "-servername", "localhost", "-CAfile", moat.ca,
            "-crlf", "-msg"]
    if shutil.which("stdbuf"):
        args = ["stdbuf", "-o0", "-e0"] + args
    p = subprocess.Popen(args, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                         stderr=subprocess.STDOUT, text=True)
    try:
        time.sleep(3)
        p.stdin.write("R\n")
        p.stdin.flush()
        out, _ = p.communicate(timeout=20)
    except subprocess.TimeoutExpired:
        p.kill()
        out, _ = p.communicate()
        out += "\n<s_client still running after 20 s: killed>"
    except BrokenPipeError:
        out, _ = p.communicate(timeout=20)
    proto = [l.split(":", 1)[1].strip() for l in out.splitlines()
             if l.strip().startswith("Protocol  :")]
    info(label, f"negotiated {proto[0] if proto else '?'}")
    check(f"{label}: TLS 1.0 handshake works (legacy clients served)",
          bool(proto) and proto[0] == "TLSv1", f"protocol {proto}")
    check(f"{label}: secure renegotiation only (RFC 5746)",
          "Secure Renegotiation IS supported" in out,
          "s_client: " + next((l for l in out.splitlines() if "Renegotiation" in l), "no line"))
    refused = "no_renegotiation" in out or "no renegotiation" in out
    renegotiated = len(re.findall(r"^<<< .*Handshake .*, ServerHello$", out, re.M)) > 1
    check(f"{label}: client-initiated renegotiation refused", refused and not renegotiated,
          "no_renegotiation alert" if refused else "no refusal seen:\n" + out[-1500:])


def main() -> int:
    t0 = time.monotonic()
    moat = MoatDev("tls").start()
    try:
        listeners = [("mx", False), ("submission", False), ("legacy-submission", True)]
        requests = []
        for name, _ in listeners:
            host, port = moat.addr(name)
            requests.append(ServerScanRequest(
                server_location=ServerNetworkLocation(hostname="localhost", port=port,
                                                      ip_address=host),
                network_configuration=ServerNetworkConfiguration(
                    tls_server_name_indication="localhost",
                    tls_opportunistic_encryption=ProtocolWithOpportunisticTlsEnum.SMTP,
                    smtp_ehlo_hostname="sslyze.audit.test",
                    network_timeout=10,
                    network_max_retries=3,
                ),
                scan_commands={c for _, _, c in VERSIONS} | set(OTHER),
            ))
        scanner = Scanner(per_server_concurrent_connections_limit=4,
                          concurrent_server_scans_limit=3)
        scanner.queue_scans(requests)
        results = {}
        for r in scanner.get_results():
            results[r.server_location.port] = r
        print(f"sslyze finished in {time.monotonic() - t0:.0f}s", flush=True)
        for name, legacy in listeners:
            port = moat.addr(name)[1]
            if port not in results:
                check(f"{name}: sslyze returned a result", False, "no result")
                continue
            audit_listener(name, results[port], legacy)
        legacy_engine_renegotiation(moat)
        check("moat is still running after the scans", moat.alive(),
              f"exit code {moat.proc.returncode}")
        panics = [l for l in moat.log_text().splitlines() if "panicked" in l]
        check("no panic in the moat log", not panics, "\n".join(panics[:5]))
    finally:
        moat.stop()
        moat.cleanup()
    print(f"(run time {time.monotonic() - t0:.0f}s)")
    print(f"tls-audit: {passed} passed, {failed} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
