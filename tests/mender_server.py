#!/usr/bin/env python3
"""mender_server.py — a fake Mender management API over HTTPS on loopback, for provstation's
preauthorization tests. Python 3 standard library only.

It serves what the station uses, with the status codes and bodies of the OpenAPI specs
(mender-server HEAD, /work/shared/mender/openapi by default):

  POST   /api/management/v1/useradm/auth/login          HTTP Basic -> 200 application/jwt
  POST   /api/management/v2/devauth/devices             201 + Location, 400, 401, 409 + Device
  GET    /api/management/v2/devauth/devices/{id}        200 Device, 404
  DELETE /api/management/v2/devauth/devices/{id}        204 (decommissioning, asynchronous)
  DELETE /api/management/v2/devauth/devices/{id}/auth/{aid}   204, 404

Every request is validated against the specs (path, method, security scheme, content type,
required fields and types of the request body) plus what the NOTES require (pubkey is an SPKI
PEM, identity values are strings); violations are recorded, never fatal. Every request is
logged as one JSON line (--log) without credentials: a bearer token or a password never
appears in the log.

Faults are scripted with rules (--script FILE, or POST /__control/rules), each matching
method and path prefix for `times` requests (-1: always):
  {"status": 500}                          answer this instead
  {"status": 429, "headers": {"Retry-After": "1"}}
  {"status": 409, "body": "{not json"}     a malformed body (a string is sent as it is)
  {"sleep": 3}                             wait before handling (the client times out)
  {"sleep_after": 3}                       handle, then wait before answering
  {"drop": true}                           close the connection without an answer
  {"expire_tokens": true}                  forget every login token first (401 follows)
  {"no_location": true}                    a 201 without its Location header
Control (no authentication, not logged as API requests):
  GET  /__control/state     {"devices": [...], "violations": [...], "requests": [...],
                             "issued_tokens": [...]} (the login tokens, for leak checks)
  POST /__control/rules     {"rules": [...], "replace": true|false}
  POST /__control/devices   {"identity_data": {...}, "pubkey": PEM, "status": "accepted"}
  POST /__control/config    {"force_support": bool, "decommission_delay": seconds}
  POST /__control/expire_tokens
"""

import argparse
import base64
import datetime
import http.server
import json
import os
import re
import secrets
import socket
import ssl
import sys
import threading
import time
import uuid

DEVICES = "/api/management/v2/devauth/devices"
LOGIN = "/api/management/v1/useradm/auth/login"

# ---- a YAML subset reader, enough for the OpenAPI files -----------------------------------


class YamlError(Exception):
    pass


def _scalar(text):
    t = text.strip()
    if t in ("", "~", "null"):
        return None if t != "" else ""
    if t == "true":
        return True
    if t == "false":
        return False
    if re.fullmatch(r"-?[0-9]+", t):
        return int(t)
    return t


def _strip_comment(text):
    """Remove a trailing ' # comment' from a plain value."""
    m = re.search(r"(^|\s)#", text)
    return text[: m.start()].rstrip() if m else text.rstrip()


class Yaml:
    def __init__(self, text):
        self.lines = text.replace("\t", "    ").split("\n")
        self.i = 0

    @staticmethod
    def indent(line):
        return len(line) - len(line.lstrip(" "))

    def skip(self):
        while self.i < len(self.lines):
            s = self.lines[self.i].strip()
            if s == "" or s.startswith("#"):
                self.i += 1
            else:
                break

    def parse(self):
        self.skip()
        if self.i >= len(self.lines):
            return None
        return self.block(self.indent(self.lines[self.i]))

    def block(self, ind):
        self.skip()
        content = self.lines[self.i][ind:]
        if content == "-" or content.startswith("- "):
            return self.seq(ind)
        return self.mapping(ind)

    def split_key(self, content):
        if content[0] in "'\"":
            q = content[0]
            end = content.index(q, 1)
            key = content[1:end]
            rest = content[end + 1 :]
            if not rest.startswith(":"):
                raise YamlError("bad key: " + content)
            return key, rest[1:].strip()
        m = re.match(r"([^:#][^:]*?|[^:#]*?):(\s|$)", content)
        if not m:
            raise YamlError("expected key: value at line %d: %s" % (self.i + 1, content))
        return m.group(1).strip(), content[m.end() :].strip()

    def mapping(self, ind):
        d = {}
        while True:
            self.skip()
            if self.i >= len(self.lines):
                break
            line = self.lines[self.i]
            cur = self.indent(line)
            if cur < ind:
                break
            if cur > ind:
                raise YamlError("bad indentation at line %d" % (self.i + 1))
            content = line[ind:]
            if content == "-" or content.startswith("- "):
                break
            key, rest = self.split_key(content)
            self.i += 1
            d[str(key)] = self.value(rest, ind)
        return d

    def seq(self, ind):
        items = []
        while True:
            self.skip()
            if self.i >= len(self.lines):
                break
            line = self.lines[self.i]
            cur = self.indent(line)
            content = line[ind:] if cur == ind else ""
            if cur != ind or not (content == "-" or content.startswith("- ")):
                break
            rest = content[1:]
            k = len(rest) - len(rest.lstrip(" "))
            rest = rest.strip()
            if rest == "":
                self.i += 1
                items.append(self.value("", ind))
            elif rest[0] not in "'\"[{|>" and re.match(r"[^:#][^:]*?:(\s|$)", rest):
                col = ind + 1 + k
                self.lines[self.i] = " " * col + rest
                items.append(self.mapping(col))
            else:
                self.i += 1
                items.append(self.value(rest, ind))
        return items

    def value(self, rest, ind):
        if rest == "" or rest.startswith("#"):
            self.skip()
            if self.i < len(self.lines):
                nxt = self.indent(self.lines[self.i])
                content = self.lines[self.i][nxt:]
                if nxt > ind:
                    return self.block(nxt)
                if nxt == ind and (content == "-" or content.startswith("- ")):
                    return self.seq(ind)
            return None
        if rest[0] in "|>":
            return self.block_scalar(rest, ind)
        if rest[0] in "'\"":
            return self.quoted(rest, ind)
        if rest[0] in "[{":
            return self.flow(_strip_comment(rest))
        text = _strip_comment(rest)
        # A plain scalar continues on more indented lines.
        while self.i < len(self.lines):
            line = self.lines[self.i]
            if line.strip() == "" or self.indent(line) <= ind:
                break
            text += " " + _strip_comment(line.strip())
            self.i += 1
        return _scalar(text)

    def quoted(self, rest, ind):
        q = rest[0]
        buf = rest[1:]
        out = ""
        while True:
            j = 0
            while j < len(buf):
                ch = buf[j]
                if q == "'" and ch == "'":
                    if j + 1 < len(buf) and buf[j + 1] == "'":
                        out += "'"
                        j += 2
                        continue
                    return out
                if q == '"' and ch == "\\" and j + 1 < len(buf):
                    esc = buf[j + 1]
                    out += {"n": "\n", "t": "\t", '"': '"', "\\": "\\", "/": "/"}.get(esc, esc)
                    j += 2
                    continue
                if q == '"' and ch == '"':
                    return out
                out += ch
                j += 1
            if self.i >= len(self.lines):
                raise YamlError("unterminated quoted scalar")
            buf = self.lines[self.i].strip()
            self.i += 1
            out = out.rstrip(" ") + (" " if buf else "\n")

    def block_scalar(self, rest, ind):
        style = rest[0]
        chomp = "-" if "-" in rest[1:3] else ("+" if "+" in rest[1:3] else "")
        lines = []
        block_ind = None
        while self.i < len(self.lines):
            line = self.lines[self.i]
            if line.strip() == "":
                lines.append("")
                self.i += 1
                continue
            cur = self.indent(line)
            if cur <= ind:
                break
            if block_ind is None:
                block_ind = cur
            if cur < block_ind:
                break
            lines.append(line[block_ind:])
            self.i += 1
        while lines and lines[-1] == "":
            lines.pop()
        text = "\n".join(lines) if style == "|" else " ".join(x for x in lines if x)
        return text if chomp == "-" else text + "\n"

    def flow(self, text):
        text = text.strip()
        inner = text[1:-1].strip()
        if text[0] == "[":
            return [] if inner == "" else [_scalar(x.strip().strip("'\"")) for x in inner.split(",")]
        d = {}
        for part in filter(None, (x.strip() for x in inner.split(","))):
            k, _, v = part.partition(":")
            d[k.strip().strip("'\"")] = _scalar(v.strip().strip("'\""))
        return d


# ---- the specs ----------------------------------------------------------------------------


class Spec:
    """The operations of the management APIs, with $refs resolved on demand."""

    FILES = ("deviceauth/management_v2.yaml", "useradm/management_v1.yaml")

    def __init__(self, root):
        self.root = root
        self.docs = {}
        self.ops = []
        for rel in self.FILES:
            doc = self.load(rel)
            for path, item in (doc.get("paths") or {}).items():
                pattern = "^" + re.sub(r"\\\{[^}]*\\\}", "[^/]+", re.escape(path)) + "$"
                for method, op in item.items():
                    if method in ("get", "post", "put", "delete", "patch"):
                        self.ops.append((method.upper(), re.compile(pattern), path, op, rel))

    def load(self, rel):
        rel = os.path.normpath(rel)
        if rel not in self.docs:
            with open(os.path.join(self.root, rel), encoding="utf-8") as f:
                self.docs[rel] = Yaml(f.read()).parse()
        return self.docs[rel]

    def resolve(self, node, rel):
        """Follow $ref (local or into another file); returns (node, file it lives in)."""
        seen = 0
        while isinstance(node, dict) and "$ref" in node:
            ref = node["$ref"]
            target, _, pointer = ref.partition("#")
            if target:
                rel = os.path.normpath(os.path.join(os.path.dirname(rel), target))
            node = self.load(rel)
            for part in filter(None, pointer.split("/")):
                node = node[part.replace("~1", "/").replace("~0", "~")]
            seen += 1
            if seen > 20:
                raise YamlError("$ref loop at " + ref)
        return node, rel

    def find(self, method, path):
        same_path = [o for o in self.ops if o[1].match(path)]
        for o in same_path:
            if o[0] == method:
                return o, None
        if same_path:
            return None, "%s is not an operation of %s in the spec" % (method, same_path[0][2])
        return None, "%s is not a path of the management API specs" % path

    def validate_schema(self, value, schema, rel, where, out):
        schema, rel = self.resolve(schema, rel)
        if not isinstance(schema, dict):
            return
        t = schema.get("type")
        types = {
            "object": dict,
            "string": str,
            "boolean": bool,
            "array": list,
            "integer": int,
            "number": (int, float),
        }
        if t in types:
            ok = isinstance(value, types[t]) and not (t in ("integer", "number") and isinstance(value, bool))
            if not ok:
                out.append("%s: expected %s, got %s" % (where, t, type(value).__name__))
                return
        if "enum" in schema and value not in schema["enum"]:
            out.append("%s: %r is not one of %s" % (where, value, schema["enum"]))
        if isinstance(value, dict):
            props = schema.get("properties") or {}
            for req in schema.get("required") or []:
                if req not in value:
                    out.append("%s: required field '%s' is missing" % (where, req))
            for k, v in value.items():
                if k in props:
                    self.validate_schema(v, props[k], rel, where + "." + k, out)
                elif schema.get("additionalProperties") is False:
                    out.append("%s: field '%s' is not in the schema" % (where, k))
                elif (
                    t == "object"
                    and props
                    and "additionalProperties" not in schema
                    and where == "body"
                ):
                    out.append("%s: field '%s' is not in the schema" % (where, k))
        if isinstance(value, list) and "items" in schema:
            for n, v in enumerate(value):
                self.validate_schema(v, schema["items"], rel, "%s[%d]" % (where, n), out)

    def validate(self, method, path, headers, body):
        """Violations of the request against the spec (a list of strings)."""
        out = []
        found, why = self.find(method, path)
        if found is None:
            return [why]
        _, _, template, op, rel = found
        doc = self.load(rel)
        # Security.
        auth = headers.get("Authorization", "")
        schemes = []
        for req in op.get("security") or doc.get("security") or []:
            for name in req:
                scheme, _ = self.resolve(doc["components"]["securitySchemes"][name], rel)
                schemes.append(scheme)
        if schemes:
            good = False
            for scheme in schemes:
                if scheme.get("type") == "http" and scheme.get("scheme") == "bearer":
                    good |= bool(re.fullmatch(r"Bearer [!-~]+", auth))
                elif scheme.get("type") == "http" and scheme.get("scheme") == "basic":
                    m = re.fullmatch(r"Basic ([A-Za-z0-9+/=]+)", auth)
                    try:
                        good |= bool(m) and b":" in base64.b64decode(m.group(1), validate=True)
                    except ValueError:
                        pass
            if not good:
                kinds = "/".join(s.get("scheme", "?") for s in schemes)
                out.append("%s %s: no valid %s Authorization header" % (method, template, kinds))
        # The body.
        ctype = headers.get("Content-Type", "").split(";")[0].strip().lower()
        rb = op.get("requestBody")
        if rb is not None:
            rb, rbrel = self.resolve(rb, rel)
            content = rb.get("content") or {}
            if ctype and ctype not in content:
                out.append("%s %s: Content-Type '%s' is not one of %s" % (method, template, ctype, list(content)))
            elif body and not ctype:
                out.append("%s %s: a body without Content-Type" % (method, template))
            if not body and rb.get("required"):
                out.append("%s %s: the request body is required" % (method, template))
            if body and ctype == "application/json" and ctype in content:
                try:
                    value = json.loads(body)
                except ValueError as e:
                    out.append("%s %s: the body is not JSON (%s)" % (method, template, e))
                else:
                    self.validate_schema(value, content[ctype].get("schema") or {}, rbrel, "body", out)
        elif body:
            out.append("%s %s: this operation takes no request body" % (method, template))
        elif ctype:
            out.append("%s %s: Content-Type without a body" % (method, template))
        return sorted(set(out))

    def declared(self, method, path, status):
        found, _ = self.find(method, path)
        if found is None:
            return True
        op = found[3]
        if status == 401 and (op.get("security") or self.load(found[4]).get("security")):
            return True  # what every secured operation answers to bad credentials
        return str(status) in {str(k) for k in (op.get("responses") or {})}


# ---- public keys --------------------------------------------------------------------------

OIDS = {
    "2a864886f70d010101": "rsa",
    "2a8648ce3d0201": "ec",
    "2b6570": "ed25519",
}
CURVES = {"2a8648ce3d030107": "P-256", "2b81040022": "P-384"}


def _der(data, pos):
    """(tag, content start, content end) of the DER element at pos."""
    tag = data[pos]
    length = data[pos + 1]
    pos += 2
    if length & 0x80:
        n = length & 0x7F
        if n == 0 or n > 4:
            raise ValueError("bad DER length")
        length = int.from_bytes(data[pos : pos + n], "big")
        pos += n
    if pos + length > len(data):
        raise ValueError("DER element runs past the end")
    return tag, pos, pos + length


def spki_der(pem):
    """The DER of an SPKI PEM ('BEGIN PUBLIC KEY'), or raise ValueError saying why not."""
    if not isinstance(pem, str):
        raise ValueError("pubkey is not a string")
    m = re.fullmatch(r"\s*-----BEGIN PUBLIC KEY-----\s*([A-Za-z0-9+/=\s]+?)\s*-----END PUBLIC KEY-----\s*", pem)
    if not m:
        raise ValueError("pubkey is not a PEM 'BEGIN PUBLIC KEY' (SPKI) block")
    der = base64.b64decode(re.sub(r"\s", "", m.group(1)), validate=True)
    tag, start, end = _der(der, 0)
    if tag != 0x30 or end != len(der):
        raise ValueError("SPKI is not one SEQUENCE")
    tag, a_start, a_end = _der(der, start)
    if tag != 0x30:
        raise ValueError("SPKI has no AlgorithmIdentifier")
    tag, o_start, o_end = _der(der, a_start)
    if tag != 0x06:
        raise ValueError("AlgorithmIdentifier has no OID")
    kind = OIDS.get(der[o_start:o_end].hex())
    if kind is None:
        raise ValueError("unsupported key algorithm %s" % der[o_start:o_end].hex())
    if kind == "ec":
        tag, c_start, c_end = _der(der, o_end)
        if tag != 0x06 or der[c_start:c_end].hex() not in CURVES:
            raise ValueError("unsupported EC curve")
    tag, _, b_end = _der(der, a_end)
    if tag != 0x03 or b_end != end:
        raise ValueError("SPKI has no BIT STRING key")
    return der


def pem_of(der, width=64):
    b = base64.b64encode(der).decode()
    return "-----BEGIN PUBLIC KEY-----\n" + "\n".join(b[i : i + width] for i in range(0, len(b), width)) + "\n-----END PUBLIC KEY-----\n"


# ---- the server's state -------------------------------------------------------------------


def now_ts():
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class State:
    def __init__(self, args):
        self.lock = threading.Lock()
        self.devices = {}  # id -> device
        self.removals = {}  # id -> time it disappears (decommissioning)
        self.rules = []
        self.violations = []
        self.requests = []
        self.jwts = set()
        self.issued = set()  # every login token ever issued (for tests that grep for them)
        self.pat = args.token
        self.user = args.user
        self.password = args.password
        self.force_support = args.force_support == "yes"
        self.decommission_delay = args.decommission_delay
        self.log = open(args.log, "a", encoding="utf-8") if args.log else None
        if args.script:
            with open(args.script, encoding="utf-8") as f:
                self.rules = [dict(r) for r in json.load(f)]

    def purge(self):
        t = time.time()
        for dev_id, at in list(self.removals.items()):
            if at <= t:
                self.devices.pop(dev_id, None)
                del self.removals[dev_id]

    def by_identity(self, identity):
        key = json.dumps(identity, sort_keys=True)
        for dev in self.devices.values():
            if json.dumps(dev["identity_data"], sort_keys=True) == key:
                return dev
        return None

    def add_device(self, identity, pem, status):
        dev_id = str(uuid.uuid4())
        ts = now_ts()
        dev = {
            "id": dev_id,
            "identity_data": identity,
            "status": status,
            "created_ts": ts,
            "updated_ts": ts,
            "decommissioning": False,
            "auth_sets": [],
        }
        self.add_auth_set(dev, pem, status)
        self.devices[dev_id] = dev
        return dev

    @staticmethod
    def add_auth_set(dev, pem, status):
        aset = {
            "id": str(uuid.uuid4()),
            "device_id": dev["id"],
            "identity_data": dev["identity_data"],
            "pubkey": pem,
            "status": status,
            "ts": now_ts(),
        }
        dev["auth_sets"].append(aset)
        return aset

    @staticmethod
    def recompute(dev):
        statuses = [a["status"] for a in dev["auth_sets"]]
        for s in ("accepted", "preauthorized", "pending", "rejected"):
            if s in statuses:
                dev["status"] = s
                return
        dev["status"] = "noauth"

    def take_rule(self, method, path):
        for rule in self.rules:
            if rule.get("times", 1) == 0:
                continue
            if rule.get("method", method) != method or not path.startswith(rule.get("path", "/api/")):
                continue
            if rule.get("times", 1) > 0:
                rule["times"] = rule.get("times", 1) - 1
            return dict(rule)
        return None

    def record(self, entry):
        self.requests.append(entry)
        if entry.get("violations"):
            self.violations.extend("%s %s: %s" % (entry["method"], entry["path"], v) for v in entry["violations"])
        if self.log:
            self.log.write(json.dumps(entry, sort_keys=True) + "\n")
            self.log.flush()


# ---- the handler --------------------------------------------------------------------------


class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "fake-mender/1"

    def log_message(self, fmt, *args):
        pass

    # -- helpers

    def read_body(self):
        n = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(n) if n > 0 else b""

    def send(self, status, body=None, headers=None, content_type="application/json"):
        if isinstance(body, (dict, list)):
            data = json.dumps(body).encode()
        elif isinstance(body, str):
            data = body.encode()
        else:
            data = body or b""
        self.send_response(status)
        if data:
            self.send_header("Content-Type", content_type)
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if data:
            self.wfile.write(data)
        self.status_sent = status

    def error(self, status, message):
        self.send(status, {"error": message, "request_id": self.headers.get("X-MEN-RequestID", "")})

    # -- dispatch

    def do_GET(self):
        self.dispatch("GET")

    def do_POST(self):
        self.dispatch("POST")

    def do_DELETE(self):
        self.dispatch("DELETE")

    def do_PUT(self):
        self.dispatch("PUT")

    def dispatch(self, method):
        st = self.server.state
        body = self.read_body()
        path = self.path.split("?")[0]
        if path.startswith("/__control/"):
            return self.control(method, path, body)
        self.status_sent = None
        self.location = ""
        violations = self.server.spec.validate(method, path, self.headers, body)
        violations += self.extra_checks(method, path, body)
        with st.lock:
            rule = st.take_rule(method, path)
            if rule and rule.get("expire_tokens"):
                st.jwts.clear()
        entry = {
            "t": time.time(),
            "method": method,
            "path": path,
            "auth": self.auth_kind(),
            "content_type": self.headers.get("Content-Type", ""),
            "request_id": self.headers.get("X-MEN-RequestID", ""),
            "body": self.loggable(body),
            "rule": {k: v for k, v in (rule or {}).items() if k != "times"} or None,
            "violations": violations,
        }
        try:
            if rule and rule.get("sleep"):
                time.sleep(rule["sleep"])
            if rule and rule.get("drop"):
                entry["status"] = "dropped"
                self.close_connection = True
                self.connection.shutdown(socket.SHUT_RDWR)
                return
            if rule and "status" in rule:
                b = rule.get("body")
                if b is None and rule["status"] >= 400:
                    b = {"error": "scripted failure", "request_id": ""}
                self.send(rule["status"], b, rule.get("headers"), rule.get("content_type", "application/json"))
            else:
                with st.lock:
                    st.purge()
                    reply = self.handle_api(method, path, body, rule or {})
                if rule and rule.get("sleep_after"):
                    time.sleep(rule["sleep_after"])
                self.send(*reply)
                if not self.server.spec.declared(method, path, reply[0]):
                    entry["violations"].append("the fake server answered %d, not declared in the spec" % reply[0])
        except (BrokenPipeError, ConnectionResetError, ssl.SSLError, OSError):
            entry["status"] = "client gone"
            self.close_connection = True
        finally:
            entry.setdefault("status", self.status_sent)
            entry["location"] = self.location
            entry["duration"] = round(time.time() - entry["t"], 3)
            with st.lock:
                st.record(entry)

    def auth_kind(self):
        """How the request authenticated, without the credential."""
        auth = self.headers.get("Authorization", "")
        if auth.startswith("Bearer "):
            token = auth[7:]
            st = self.server.state
            if st.pat and secrets.compare_digest(token, st.pat):
                return "bearer:pat"
            return "bearer:jwt" if token in st.jwts else "bearer:invalid"
        if auth.startswith("Basic "):
            try:
                user = base64.b64decode(auth[6:]).split(b":", 1)[0].decode("utf-8", "replace")
            except ValueError:
                user = "?"
            return "basic:" + user
        return "none" if not auth else "other"

    @staticmethod
    def loggable(body):
        if not body:
            return None
        try:
            return json.loads(body)
        except ValueError:
            return body[:2000].decode("utf-8", "replace")

    def extra_checks(self, method, path, body):
        """What the NOTES add to the spec: an SPKI pubkey, string identity values."""
        out = []
        if method == "POST" and path == DEVICES and body:
            try:
                req = json.loads(body)
            except ValueError:
                return out
            if isinstance(req, dict):
                try:
                    spki_der(req.get("pubkey"))
                except (ValueError, IndexError) as e:
                    out.append("pubkey: %s" % e)
                ident = req.get("identity_data")
                if not isinstance(ident, dict) or not ident:
                    out.append("identity_data must be a non-empty object")
                elif not all(isinstance(v, str) for v in ident.values()):
                    out.append("identity_data values must be strings")
        if self.headers.get("Accept") not in (None, "application/json", "*/*"):
            out.append("Accept: %s" % self.headers.get("Accept"))
        return out

    def authorized_bearer(self):
        st = self.server.state
        auth = self.headers.get("Authorization", "")
        if not auth.startswith("Bearer "):
            return False
        token = auth[7:]
        return (st.pat is not None and secrets.compare_digest(token, st.pat)) or token in st.jwts

    # -- the API (called with the state lock held)

    def handle_api(self, method, path, body, rule):
        st = self.server.state
        rid = self.headers.get("X-MEN-RequestID", "")
        if path == LOGIN and method == "POST":
            auth = self.headers.get("Authorization", "")
            try:
                user, _, password = base64.b64decode(auth[6:]).decode().partition(":")
            except (ValueError, UnicodeDecodeError):
                user, password = "", ""
            if not auth.startswith("Basic ") or st.user is None or user != st.user or not secrets.compare_digest(password, st.password or ""):
                return 401, {"error": "unauthorized", "request_id": rid}
            jwt = ".".join(
                base64.urlsafe_b64encode(x).decode().rstrip("=")
                for x in (b'{"alg":"RS256","typ":"JWT"}', json.dumps({"sub": user, "jti": str(uuid.uuid4())}).encode(), secrets.token_bytes(32))
            )
            st.jwts.add(jwt)
            st.issued.add(jwt)
            return 200, jwt, None, "application/jwt"
        if not self.authorized_bearer():
            return 401, {"error": "unauthorized", "request_id": rid}
        m = re.fullmatch(re.escape(DEVICES) + r"(?:/([^/]+)(?:/auth/([^/]+))?)?", path)
        if not m:
            return 404, {"error": "not found", "request_id": rid}
        dev_id, aid = m.group(1), m.group(2)
        if method == "POST" and dev_id is None:
            return self.preauthorize(body, rule, rid)
        dev = st.devices.get(dev_id) if dev_id else None
        if method == "GET" and dev_id and aid is None:
            return (200, dev) if dev else (404, {"error": "device not found", "request_id": rid})
        if method == "DELETE" and dev_id and aid is None:
            if not dev:
                return 404, {"error": "device not found", "request_id": rid}
            dev["decommissioning"] = True
            st.removals[dev_id] = time.time() + st.decommission_delay
            return (204,)
        if method == "DELETE" and aid:
            if not dev:
                return 404, {"error": "device not found", "request_id": rid}
            sets = [a for a in dev["auth_sets"] if a["id"] == aid]
            if not sets:
                return 404, {"error": "authentication set not found", "request_id": rid}
            dev["auth_sets"].remove(sets[0])
            if sets[0]["status"] == "preauthorized" and not dev["auth_sets"]:
                del st.devices[dev_id]
            else:
                st.recompute(dev)
            return (204,)
        return 405, {"error": "method not allowed", "request_id": rid}

    def preauthorize(self, body, rule, rid):
        st = self.server.state
        try:
            req = json.loads(body)
            identity = req["identity_data"]
            pem = req["pubkey"]
            if not isinstance(identity, dict) or not identity:
                raise ValueError("identity_data: cannot be blank")
            der = spki_der(pem)
        except (ValueError, KeyError, TypeError, IndexError) as e:
            return 400, {"error": "failed to decode preauth request: %s" % e, "request_id": rid}
        pem = pem_of(der)  # the server keeps a normalized PEM
        dev = st.by_identity(identity)
        if dev is not None:
            if req.get("force") is True and st.force_support:
                same = [a for a in dev["auth_sets"] if spki_der(a["pubkey"]) == der]
                if same:
                    same[0]["status"] = "preauthorized"
                else:
                    st.add_auth_set(dev, pem, "preauthorized")
                # mender-server 4.0 names a fresh id here, not the device's.
                self.location = "devices/" + str(uuid.uuid4())
                return 201, None, {"Location": self.location}
            return 409, dev
        dev = st.add_device(identity, pem, "preauthorized")
        self.location = "devices/" + dev["id"]
        if rule.get("no_location"):
            return (201,)
        return 201, None, {"Location": self.location}

    # -- control

    def control(self, method, path, body):
        st = self.server.state
        try:
            req = json.loads(body) if body else {}
        except ValueError:
            return self.send(400, {"error": "not JSON"})
        with st.lock:
            st.purge()
            if method == "GET" and path == "/__control/state":
                return self.send(
                    200,
                    {
                        "devices": list(st.devices.values()),
                        "violations": st.violations,
                        "requests": st.requests,
                        "issued_tokens": sorted(st.issued),
                    },
                )
            if method == "POST" and path == "/__control/rules":
                if req.get("replace", True):
                    st.rules = []
                st.rules.extend(dict(r) for r in req.get("rules", []))
                return self.send(200, {"rules": st.rules})
            if method == "POST" and path == "/__control/devices":
                pem = req["pubkey"]
                dev = st.add_device(req["identity_data"], pem, req.get("status", "accepted"))
                return self.send(200, dev)
            if method == "POST" and path == "/__control/config":
                if "force_support" in req:
                    st.force_support = bool(req["force_support"])
                if "decommission_delay" in req:
                    st.decommission_delay = float(req["decommission_delay"])
                return self.send(200, {"force_support": st.force_support, "decommission_delay": st.decommission_delay})
            if method == "POST" and path == "/__control/expire_tokens":
                st.jwts.clear()
                return self.send(200, {})
        return self.send(404, {"error": "no such control"})


class Server(http.server.ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, addr, ctx, state, spec):
        super().__init__(addr, Handler)
        self.ctx = ctx
        self.state = state
        self.spec = spec

    def finish_request(self, request, client_address):
        # The TLS handshake runs in the request's thread, never in the accept loop.
        try:
            tls = self.ctx.wrap_socket(request, server_side=True)
        except (ssl.SSLError, OSError):
            return
        try:
            self.RequestHandlerClass(tls, client_address, self)
        finally:
            try:
                tls.close()
            except OSError:
                pass


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--port", type=int, default=0)
    ap.add_argument("--port-file")
    ap.add_argument("--cert", required=True)
    ap.add_argument("--key", required=True)
    ap.add_argument("--log")
    ap.add_argument("--token", help="the personal access token the server accepts")
    ap.add_argument("--user")
    ap.add_argument("--password-file")
    ap.add_argument("--script", help="JSON list of rules")
    ap.add_argument("--spec", default="/work/shared/mender/openapi/mender-server-HEAD")
    ap.add_argument("--force-support", choices=("yes", "no"), default="yes")
    ap.add_argument("--decommission-delay", type=float, default=1.0)
    args = ap.parse_args()
    args.password = None
    if args.password_file:
        with open(args.password_file, encoding="utf-8") as f:
            args.password = f.read().strip()
    spec = Spec(args.spec)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(args.cert, args.key)
    server = Server(("127.0.0.1", args.port), ctx, State(args), spec)
    if args.port_file:
        tmp = args.port_file + ".tmp"
        with open(tmp, "w") as f:
            f.write("%d\n" % server.server_address[1])
        os.rename(tmp, args.port_file)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
