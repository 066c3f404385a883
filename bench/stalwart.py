#!/usr/bin/env python3
"""Configure a fresh Stalwart (v0.16) as an inbound relay for bench/compare.sh.

    bench/stalwart.py configure JMAP_URL ADMIN:PASSWORD CERT KEY LISTEN SINK LOGDIR
    bench/stalwart.py drain JMAP_URL ADMIN:PASSWORD

`drain` waits until Stalwart's queue is empty (it answers 250 once a message is queued, and
delivers afterwards), as compare.sh does for Postfix between runs.

Stalwart 0.16 keeps every setting but the data store as an object behind its JMAP API (the
TOML files of earlier releases are gone), so this script talks to a running server's `/jmap`
as the recovery administrator (`STALWART_RECOVERY_ADMIN`) and sets up what the other servers
in the comparison get:

- one SMTP listener on LISTEN (STARTTLS with CERT and KEY; Stalwart's rustls speaks TLS 1.2 and 1.3 only), the HTTP listener kept
  on 127.0.0.1 for this script, every other default listener (IMAP, POP3, submissions, sieve,
  HTTPS) removed;
- relaying for example.test only, routed to SINK (SMTP, no TLS) through a route of its own;
- what a port-25 MX gets by default (no AUTH required or offered, the same trace headers),
  set explicitly since LISTEN is not port 25;
- no spam filter and no SPF/DKIM/DMARC/ARC/reverse-DNS checks (Postfix and Moat run none in
  the comparison, and there is no DNS here), no inbound rate limits (the default throttles
  5 messages a second per IP), up to 1,000 messages per session (the default is 10; the load
  generator sends 50);
- logs at warning level to LOGDIR.

The server must be restarted afterwards: listeners are bound at start.
"""
import base64
import json
import sys
import time
import urllib.error
import urllib.request

COMMAND, URL, ADMIN = sys.argv[1:4]
AUTH = "Basic " + base64.b64encode(ADMIN.encode()).decode()
USING = ["urn:ietf:params:jmap:core", "urn:stalwart:jmap"]


def post(calls):
    body = json.dumps({"using": USING, "methodCalls": calls}).encode()
    request = urllib.request.Request(
        URL.rstrip("/") + "/jmap/",
        data=body,
        headers={"Content-Type": "application/json", "Authorization": AUTH},
    )
    with urllib.request.urlopen(request, timeout=30) as reply:
        return json.load(reply)["methodResponses"]


def account():
    for _ in range(300):
        try:
            request = urllib.request.Request(
                URL.rstrip("/") + "/.well-known/jmap", headers={"Authorization": AUTH}
            )
            with urllib.request.urlopen(request, timeout=5) as reply:
                return json.load(reply)["primaryAccounts"]["urn:stalwart:jmap"]
        except (urllib.error.URLError, ConnectionError, KeyError):
            time.sleep(0.2)
    sys.exit("stalwart: no JMAP session at " + URL)


ACCOUNT = account()


def call(method, args):
    """One method call; any notCreated/notUpdated/notDestroyed or error is fatal."""
    args = {"accountId": ACCOUNT, **args}
    name, reply, _ = post([[method, args, "0"]])[0]
    if name == "error":
        sys.exit(f"stalwart: {method}: {json.dumps(reply)}")
    for key in ("notCreated", "notUpdated", "notDestroyed"):
        if reply.get(key):
            sys.exit(f"stalwart: {method} {key}: {json.dumps(reply[key])}")
    return reply


def get(kind):
    return call(f"x:{kind}/get", {})["list"]


def singleton(kind, values):
    call(f"x:{kind}/set", {"update": {"singleton": values}})


def const(value):
    return {"match": {}, "else": value}


def drain():
    for _ in range(1200):
        if not call("x:QueuedMessage/query", {"limit": 1})["ids"]:
            return
        time.sleep(0.1)
    sys.exit("stalwart: the queue did not drain in 120 s")


if COMMAND == "drain":
    drain()
    sys.exit(0)
CERT, KEY, LISTEN, SINK, LOGDIR = sys.argv[4:9]


def text(path):
    with open(path) as f:
        return f.read()


sink_host, sink_port = SINK.rsplit(":", 1)

# The certificate every TLS listener presents.
created = call(
    "x:Certificate/set",
    {
        "create": {
            "c": {
                "certificate": {"@type": "Text", "value": text(CERT)},
                "privateKey": {"@type": "Text", "secret": text(KEY)},
            }
        }
    },
)["created"]
# A local domain of its own (Stalwart needs a default one); example.test stays remote.
domain = call(
    "x:Domain/set",
    {
        "create": {
            "d": {
                "name": "bench.test",
                "dkimManagement": {"@type": "Manual"},
                "dnsManagement": {"@type": "Manual"},
                "certificateManagement": {"@type": "Manual"},
            }
        }
    },
)["created"]["d"]["id"]
singleton(
    "SystemSettings",
    {
        "defaultCertificateId": created["c"]["id"],
        "defaultDomainId": domain,
        "defaultHostname": "mx.bench.test",
    },
)

# Listeners: SMTP on LISTEN, HTTP kept (loopback) for administration, the rest removed.
http_port = URL.rsplit(":", 1)[1].strip("/")
update, destroy = {}, []
for listener in get("NetworkListener"):
    if listener["name"] == "smtp":
        update[listener["id"]] = {"bind": {LISTEN: True}}
    elif listener["name"] == "http":
        update[listener["id"]] = {"bind": {f"127.0.0.1:{http_port}": True}}
    else:
        destroy.append(listener["id"])
call("x:NetworkListener/set", {"update": update, "destroy": destroy})

# Relay example.test to the sink, in plain SMTP (the sink offers no STARTTLS).
call(
    "x:MtaRoute/set",
    {
        "create": {
            "r": {
                "@type": "Relay",
                "name": "sink",
                "description": "the benchmark's next hop",
                "address": sink_host,
                "port": int(sink_port),
                "protocol": "smtp",
            }
        }
    },
)
call(
    "x:MtaTlsStrategy/set",
    {
        "create": {
            "t": {
                "name": "sink",
                "description": "plain SMTP to the benchmark's sink",
                "dane": "disable",
                "mtaSts": "disable",
                "startTls": "disable",
            }
        }
    },
)
to_sink = "rcpt_domain == 'example.test'"
singleton(
    "MtaOutboundStrategy",
    {
        "route": {"match": {"0": {"if": to_sink, "then": "'sink'"}}, "else": "'mx'"},
        "tls": {"match": {"0": {"if": to_sink, "then": "'sink'"}}, "else": "'default'"},
    },
)
singleton("MtaStageRcpt", {"allowRelaying": const(to_sink)})

# A port-25 MX's defaults, whatever LISTEN's port: no AUTH, the usual trace headers.
singleton("MtaStageAuth", {"require": const("false"), "saslMechanisms": const("false")})
singleton(
    "MtaStageData",
    {
        "addReceivedHeader": const("true"),
        "addReturnPathHeader": const("true"),
        "addDateHeader": const("true"),
        "addMessageIdHeader": const("true"),
        "addAuthResultsHeader": const("false"),
        "addReceivedSpfHeader": const("false"),
        "enableSpamFilter": const("false"),
        "maxMessages": const("1000"),
    },
)

# Nothing that needs DNS or a classifier.
singleton("SpamSettings", {"enable": False})
singleton(
    "SenderAuth",
    {
        "arcVerify": const("disable"),
        "dkimVerify": const("disable"),
        "dmarcVerify": const("disable"),
        "spfEhloVerify": const("disable"),
        "spfFromVerify": const("disable"),
        "reverseIpVerify": const("disable"),
    },
)

# No inbound rate limits (Postfix's are set to 0 in compare.sh too). Disabled, not destroyed:
# Stalwart puts its defaults back at start when none exist.
throttles = {t["id"]: {"enable": False} for t in get("MtaInboundThrottle")}
if throttles:
    call("x:MtaInboundThrottle/set", {"update": throttles})

# Logs at warning level, to LOGDIR.
tracers = get("Tracer")
call(
    "x:Tracer/set",
    {
        "update": {
            t["id"]: {"level": "warn", "path": LOGDIR} if t.get("@type") == "Log" else {"enable": False}
            for t in tracers
        }
    },
)
print("stalwart configured: smtp on", LISTEN, "relaying example.test to", SINK)
