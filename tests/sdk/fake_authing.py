#!/usr/bin/env python3
"""An Authing-like login service for the SDK conformance suite.

Run it with the v2 venv's python (it uses graphql-core and rsa, which the
authing 4.5.18 SDK pulls in):

    tests/sdk/.venv-v2/bin/python tests/sdk/fake_authing.py [PORT]

It listens on 127.0.0.1:PORT (0 or absent: a free port) and prints the port
it chose as the first line of stdout. Then:

- it RECORDS every request it receives (method, path with query, headers,
  body, the body's JSON, every string in it that decrypts with the key below,
  and for GraphQL the operation and root field) except its own control endpoints, and serves the records at
  `GET /__recorded` (JSON list, in arrival order); `POST /__reset` clears them;
- `GET /__pubkey` gives `{"publicKey": PEM}`: an RSA key made at start whose
  private half only this process holds. Give it to the v2 SDKs
  (`enc_public_key` / `publicKey`) so this fake can decrypt and check the
  passwords they encrypt (also served at `GET /api/v2/.well-known`, where the
  JS SDK looks when it is given no key);
- it answers like Authing for one demo user: email `alice@example.com`,
  username `alice`, phone `13800138000`, password `right-password` (or
  `right-password#<any tag>`, so the suite can tell its calls apart), one-time code `123456` (LDAP/AD: `sAMAccountName`/`username` `alice`).
  Success is `code 200` (v2 REST), `statusCode 200` (v3) or GraphQL `data`;
  a wrong password is `2333` (v2 REST and GraphQL `errors[0].message.code`)
  or `statusCode 400, apiCode 2333` (v3); a wrong code is 2001; registering
  the demo user again is 2026.

GraphQL: the Python v2 client (gql 2) fetches the schema by introspection
before each call and validates its document against it. Authing's schema is
not shipped with the SDK, so the schema served here is derived at start from
the SDK's own documents (those of `authing.v2.common.codegen.QUERY` that
the AuthenticationClient uses): every root field
those documents select, with the arguments they pass (typed as the variables
that feed them) and every field they select (leaves typed `String`, nested
selections as object types named after their path). Each document the SDK can
send therefore validates. Input objects and enums are declared as scalars:
gql 2 validates the document only, never the variables.
"""

import base64
import copy
import json
import sys
import threading
from collections import OrderedDict
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import rsa
from graphql import build_ast_schema, graphql, parse
from graphql.language import ast as A

DEMO = {
    "id": "user-alice",
    "email": "alice@example.com",
    "username": "alice",
    "phone": "13800138000",
    "password": "right-password",
    "code": "123456",
}
ALICE_IDS = {DEMO["email"], DEMO["username"], DEMO["phone"], "+86" + DEMO["phone"]}

# ---------------------------------------------------------------------------
# RSA: the key the v2 SDKs encrypt with.


def _der_len(n):
    if n < 0x80:
        return bytes([n])
    b = n.to_bytes((n.bit_length() + 7) // 8, "big")
    return bytes([0x80 | len(b)]) + b


def _der(tag, body):
    return bytes([tag]) + _der_len(len(body)) + body


def spki_pem(pub):
    """`-----BEGIN PUBLIC KEY-----` (X.509 SubjectPublicKeyInfo), the form
    rsa.PublicKey.load_pkcs1_openssl_pem (Python SDK) and jsencrypt (JS SDK)
    read; the rsa package only writes the PKCS#1 form itself."""
    pkcs1 = pub.save_pkcs1(format="DER")
    alg = _der(0x30, _der(0x06, bytes.fromhex("2a864886f70d010101")) + b"\x05\x00")
    spki = _der(0x30, alg + _der(0x03, b"\x00" + pkcs1))
    b64 = base64.b64encode(spki).decode()
    lines = [b64[i : i + 64] for i in range(0, len(b64), 64)]
    return "-----BEGIN PUBLIC KEY-----\n" + "\n".join(lines) + "\n-----END PUBLIC KEY-----\n"


PUB, PRIV = rsa.newkeys(1024)
PUBLIC_PEM = spki_pem(PUB)


def decrypt(value):
    """The plaintext of a base64 RSA (PKCS#1 v1.5) password, or None."""
    if not isinstance(value, str) or not value:
        return None
    try:
        return rsa.decrypt(base64.b64decode(value, validate=True), PRIV).decode("utf-8")
    except Exception:
        return None


def is_right(plain):
    """The demo password, optionally tagged `right-password#<tag>`: the tag
    lets the suite tell its calls apart in the records."""
    return isinstance(plain, str) and (plain == DEMO["password"] or plain.startswith(DEMO["password"] + "#"))


def password_ok(value, encrypted):
    """`encrypted`: True (must be RSA with our key: the v2 SDKs always
    encrypt), False (clear text), None (either)."""
    if encrypted is False:
        return is_right(value)
    plain = decrypt(value)
    if plain is not None:
        return is_right(plain)
    return encrypted is None and is_right(value)


def decrypted_strings(v, out):
    """Every string in a JSON value that decrypts with our key, decrypted."""
    if isinstance(v, dict):
        for x in v.values():
            decrypted_strings(x, out)
    elif isinstance(v, list):
        for x in v:
            decrypted_strings(x, out)
    elif isinstance(v, str) and len(v) >= 100:
        plain = decrypt(v)
        if plain is not None:
            out.append(plain)
    return out


def graphql_field(body):
    """(operation, root field) of a GraphQL request body, or None."""
    try:
        doc = parse(body.get("query") or "")
        op = [d for d in doc.definitions if isinstance(d, A.OperationDefinition)][0]
        return [op.operation, op.selection_set.selections[0].name.value]
    except Exception:
        return None


# ---------------------------------------------------------------------------
# GraphQL schema derived from the SDK's documents.

BUILTIN = {"String", "Int", "Float", "Boolean", "ID"}


class SchemaBuilder:
    def __init__(self):
        self.objects = OrderedDict()  # type name -> OrderedDict(field -> [args, type])
        self.scalars = set()
        self.enums = {}  # enum name -> set of values

    def type_ref(self, node):
        """A variable's type, made nullable all the way down: a variable of
        type T or T! may be used where the nullable type is expected."""
        if isinstance(node, A.NonNullType):
            return self.type_ref(node.type)
        if isinstance(node, A.ListType):
            return "[%s]" % self.type_ref(node.type)
        name = node.name.value
        if name not in BUILTIN:
            self.scalars.add(name)
        return name

    def literal_type(self, type_name, field, arg, value):
        if isinstance(value, A.StringValue):
            return "String"
        if isinstance(value, A.IntValue):
            return "Int"
        if isinstance(value, A.FloatValue):
            return "Float"
        if isinstance(value, A.BooleanValue):
            return "Boolean"
        if isinstance(value, A.EnumValue):
            name = "Enum_%s_%s_%s" % (type_name, field, arg)
            self.enums.setdefault(name, set()).add(value.value)
            return name
        raise ValueError("unsupported literal argument")

    def add_selection(self, type_name, selection_set, var_types):
        fields = self.objects.setdefault(type_name, OrderedDict())
        for sel in selection_set.selections:
            if not isinstance(sel, A.Field):
                raise ValueError("fragments are not supported")
            name = sel.name.value
            if name.startswith("__"):
                continue
            entry = fields.setdefault(name, [OrderedDict(), "String"])
            for arg in sel.arguments or []:
                if isinstance(arg.value, A.Variable):
                    t = var_types[arg.value.name.value]
                else:
                    t = self.literal_type(type_name, name, arg.name.value, arg.value)
                entry[0].setdefault(arg.name.value, t)
            if sel.selection_set is not None:
                child = "%s_%s" % (type_name, name)
                entry[1] = child
                self.add_selection(child, sel.selection_set, var_types)

    def add_document(self, text):
        doc = parse(text)
        for d in doc.definitions:
            if not isinstance(d, A.OperationDefinition):
                raise ValueError("only operations are supported")
            root = "Mutation" if d.operation == "mutation" else "Query"
            if d.operation not in ("query", "mutation"):
                raise ValueError("subscriptions are not supported")
            var_types = {
                v.variable.name.value: self.type_ref(v.type)
                for v in (d.variable_definitions or [])
            }
            self.add_selection(root, d.selection_set, var_types)

    def sdl(self):
        out = []
        for s in sorted(self.scalars - set(self.enums)):
            out.append("scalar %s" % s)
        for e, values in sorted(self.enums.items()):
            out.append("enum %s { %s }" % (e, " ".join(sorted(values))))
        for tname, fields in self.objects.items():
            lines = []
            for fname, (args, ftype) in fields.items():
                a = ", ".join("%s: %s" % kv for kv in args.items())
                lines.append("  %s%s: %s" % (fname, "(%s)" % a if a else "", ftype))
            out.append("type %s {\n%s\n}" % (tname, "\n".join(lines)))
        out.append("schema { query: Query mutation: Mutation }")
        return "\n\n".join(out)


def build_schema():
    """The schema of the documents the v2 AuthenticationClient sends (the
    `QUERY[...]` names its source refers to; all of them if none is found).
    The management documents are left out: the suite does not drive the
    ManagementClient, and the client rebuilds the schema from the
    introspection answer before every call, so its size costs time."""
    import inspect
    import re

    import authing.v2.authentication.authing as authn
    from authing.v2.common.codegen import QUERY

    used = set(re.findall(r"QUERY\[['\"](\w+)['\"]\]", inspect.getsource(authn)))
    builder = SchemaBuilder()
    skipped = []
    for name, text in QUERY.items():
        if used and name not in used:
            continue
        # A document this builder cannot describe is left out; the schema
        # must still cover every document the suite drives (checked by the
        # suite itself: the SDK would fail validation).
        trial = copy.deepcopy(builder)
        try:
            trial.add_document(text)
        except Exception:
            skipped.append(name)
            continue
        builder.add_document(text)
    builder.objects.setdefault("Query", OrderedDict()).setdefault("_fake", [OrderedDict(), "String"])
    builder.objects.setdefault("Mutation", OrderedDict()).setdefault("_fake", [OrderedDict(), "String"])
    return build_ast_schema(parse(builder.sdl())), skipped


SCHEMA, SKIPPED = build_schema()
INTROSPECTION = {}
INTROSPECTION_LOCK = threading.Lock()

# ---------------------------------------------------------------------------
# Answers


def user(ident=None, **extra):
    u = {
        "id": DEMO["id"],
        "username": DEMO["username"],
        "email": DEMO["email"],
        "phone": DEMO["phone"],
        "token": "token-alice",
        "tokenExpiredAt": "2099-01-01T00:00:00.000Z",
    }
    if ident is not None:
        u = {"id": "user-" + str(ident), "username": ident, "email": None, "phone": None,
             "token": "token-" + str(ident), "tokenExpiredAt": "2099-01-01T00:00:00.000Z"}
    u.update(extra)
    return u


WRONG = (2333, "账号或密码错误", {"remainCount": 4})
BAD_CODE = (2001, "验证码不正确", None)
EXISTS = (2026, "用户已存在", None)


def gql_error(code, message, data=None):
    msg = {"code": code, "message": message}
    if data is not None:
        msg["data"] = data
    return {"data": None, "errors": [{"message": msg, "locations": [], "extensions": {"code": code}}]}


def v2(code, message, data=None):
    return {"code": code, "message": message, "data": data}


def v3(code, message, data=None):
    if code == 200:
        return {"statusCode": 200, "message": message, "apiCode": None, "data": data}
    return {"statusCode": 400, "message": message, "apiCode": code, "data": data}


def graphql_answer(body):
    query = body.get("query") or ""
    variables = body.get("variables") or {}
    try:
        doc = parse(query)
    except Exception as e:
        return 400, {"data": None, "errors": [{"message": "cannot parse: %s" % e}]}
    if "__schema" in query or "__type" in query:
        # The Python v2 client sends the same introspection query before
        # every call; executing it over the whole schema is the slowest thing
        # this fake does, so each distinct query is answered once.
        key = (query, json.dumps(variables, sort_keys=True))
        with INTROSPECTION_LOCK:
            out = INTROSPECTION.get(key)
        if out is None:
            result = graphql(SCHEMA, query, variable_values=variables)
            out = {"data": result.data}
            if result.errors:
                out["errors"] = [{"message": str(e)} for e in result.errors]
            with INTROSPECTION_LOCK:
                INTROSPECTION[key] = out
        return 200, out
    ops = [d for d in doc.definitions if isinstance(d, A.OperationDefinition)]
    if not ops or not ops[0].selection_set.selections:
        return 400, {"data": None, "errors": [{"message": "no operation"}]}
    field = ops[0].selection_set.selections[0]
    name = field.name.value
    # Arguments: variables or literals, by argument name.
    args = {}
    for a in field.arguments or []:
        if isinstance(a.value, A.Variable):
            args[a.name.value] = variables.get(a.value.name.value)
        elif hasattr(a.value, "value"):
            args[a.name.value] = a.value.value
    inp = args.get("input") if isinstance(args.get("input"), dict) else {}

    def ok(data):
        return 200, {"data": {name: data}}

    def err(e):
        return 200, gql_error(*e)

    if name in ("loginByEmail", "loginByUsername", "loginByPhonePassword"):
        key = {"loginByEmail": "email", "loginByUsername": "username", "loginByPhonePassword": "phone"}[name]
        if inp.get(key) in ALICE_IDS and password_ok(inp.get("password"), True):
            return ok(user())
        return err(WRONG)
    if name == "loginBySubAccount":
        if args.get("account") in ALICE_IDS and password_ok(args.get("password"), True):
            return ok(user())
        return err(WRONG)
    if name in ("loginByPhoneCode", "loginByEmailCode"):
        ident = inp.get("phone") or inp.get("email")
        if ident in ALICE_IDS and inp.get("code") == DEMO["code"]:
            return ok(user())
        return err(BAD_CODE)
    if name in ("registerByEmail", "registerByUsername", "registerByPhoneCode", "registerByEmailCode"):
        ident = inp.get("email") or inp.get("username") or inp.get("phone")
        if ident in ALICE_IDS:
            return err(EXISTS)
        if name in ("registerByPhoneCode", "registerByEmailCode") and inp.get("code") != DEMO["code"]:
            return err(BAD_CODE)
        if inp.get("password") is not None and decrypt(inp.get("password")) is None:
            return err((2029, "密码解密失败", None))
        return ok(user(ident))
    if name == "resetPassword":
        ident = args.get("phone") or args.get("email")
        if ident in ALICE_IDS and args.get("code") == DEMO["code"] and decrypt(args.get("newPassword")):
            return ok({"message": "重置密码成功", "code": 200})
        return err(BAD_CODE)
    if name == "updatePassword":
        if password_ok(args.get("oldPassword"), True) and decrypt(args.get("newPassword")):
            return ok(user())
        return err((2006, "原密码错误", None))
    if name in ("bindPhone", "bindEmail", "updatePhone", "updateEmail"):
        codes = [args.get(k) for k in ("phoneCode", "emailCode", "oldPhoneCode", "oldEmailCode") if args.get(k)]
        if codes and all(c == DEMO["code"] for c in codes):
            return ok(user())
        return err(BAD_CODE)
    if name in ("resetPasswordByFirstLoginToken", "resetPasswordByForceResetToken"):
        return ok({"message": "重置密码成功", "code": 200})
    if name == "updateUser":
        return ok(user())
    if name == "isUserExists":
        return ok(True)
    if name in ("sendEmail",):
        return ok({"message": "发送成功", "code": 200})
    if name == "checkPasswordStrength":
        return ok({"valid": True, "message": "ok"})
    return ok({"code": 200, "message": "ok"})


def rest_answer(method, path, body):
    """(status, JSON) for every REST route; None: 404."""
    p = path.split("?", 1)[0]
    b = body if isinstance(body, dict) else {}
    # ---- v2 REST
    if p == "/api/v2/.well-known":
        # The JS SDK reads data.publicKey when it was given no key.
        return 200, v2(200, "", {"publicKey": PUBLIC_PEM})
    if p == "/api/v2/users/me":
        # The Python v2 client asks before update_profile and the like.
        return 200, v2(200, "", user())
    if p in ("/api/v2/ldap/verify-user", "/api/v2/ad/verify-user", "/api/v2/login/ldap", "/api/v2/login/ad"):
        if b.get("username") in ALICE_IDS and password_ok(b.get("password"), None):
            return 200, v2(200, "", user())
        return 200, v2(*WRONG)
    if p == "/api/v2/login/account":
        if b.get("account") in ALICE_IDS and password_ok(b.get("password"), None):
            return 200, v2(200, "", user())
        return 200, v2(*WRONG)
    if p in ("/api/v2/login/phone-code", "/api/v2/login/email-code"):
        if (b.get("phone") or b.get("email")) in ALICE_IDS and b.get("code") == DEMO["code"]:
            return 200, v2(200, "", user())
        return 200, v2(*BAD_CODE)
    if p.startswith("/api/v2/register"):
        ident = b.get("email") or b.get("username") or b.get("phone") or b.get("account")
        if ident in ALICE_IDS:
            return 200, v2(*EXISTS)
        if "code" in b and b.get("code") != DEMO["code"]:
            return 200, v2(*BAD_CODE)
        return 200, v2(200, "", user(ident))
    if p in ("/api/v2/sms/send", "/api/v2/email/send"):
        return 200, v2(200, "发送成功")
    if p.startswith("/api/v2/"):
        return 200, v2(200, "ok", {})
    # ---- v3
    if p == "/api/v3/signin":
        conn = b.get("connection")
        opts = b.get("options") or {}
        enc = opts.get("passwordEncryptType")
        encrypted = None if enc in (None, "", "none") else True
        if enc in (None, "", "none"):
            encrypted = False
        good = False
        if conn == "PASSWORD":
            pp = b.get("passwordPayload") or {}
            ident = pp.get("email") or pp.get("username") or pp.get("phone") or pp.get("account")
            good = ident in ALICE_IDS and password_ok(pp.get("password"), encrypted)
        elif conn in ("LDAP", "AD"):
            pp = b.get("ldapPayload") or b.get("adPayload") or {}
            good = pp.get("sAMAccountName") in ALICE_IDS and password_ok(pp.get("password"), encrypted)
        elif conn == "PASSCODE":
            pc = b.get("passCodePayload") or {}
            ident = pc.get("email") or pc.get("phone")
            if not (ident in ALICE_IDS and pc.get("passCode") == DEMO["code"]):
                return 200, v3(*BAD_CODE)
            good = True
        if good:
            return 200, v3(200, "", {"access_token": "at-alice", "id_token": "it-alice",
                                     "token_type": "Bearer", "expires_in": 1209600, "scope": "openid"})
        return 200, v3(*WRONG)
    if p == "/api/v3/signup":
        pp = b.get("passwordPayload") or b.get("passCodePayload") or {}
        ident = pp.get("email") or pp.get("username") or pp.get("phone")
        if ident in ALICE_IDS:
            return 200, v3(*EXISTS)
        if b.get("connection") == "PASSCODE" and pp.get("passCode") != DEMO["code"]:
            return 200, v3(*BAD_CODE)
        return 200, v3(200, "", {"userId": "user-%s" % ident, "username": ident})
    if p in ("/api/v3/send-sms", "/api/v3/send-email"):
        return 200, v3(200, "", {})
    if p == "/api/v3/update-password":
        return 200, v3(200, "", {})
    if p == "/api/v3/verify-reset-password-request":
        pc = b.get("phonePassCodePayload") or b.get("emailPassCodePayload") or {}
        if pc.get("passCode") == DEMO["code"]:
            return 200, v3(200, "", {"passwordResetToken": "reset-token", "tokenExpiresIn": 300})
        return 200, v3(*BAD_CODE)
    if p == "/api/v3/reset-password":
        if b.get("passwordResetToken") == "reset-token":
            return 200, v3(200, "", {"success": True})
        return 200, v3(2001, "token 无效")
    if p.startswith("/api/v3/"):
        return 200, v3(200, "", {})
    return None


# ---------------------------------------------------------------------------
# Server

RECORDS = []
LOCK = threading.Lock()


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "fake-authing/1"

    def log_message(self, fmt, *args):  # quiet: the test prints what matters
        pass

    def read_body(self):
        if self.headers.get("transfer-encoding", "").lower() == "chunked":
            data = b""
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    return data
                data += self.rfile.read(size)
                self.rfile.readline()
        n = int(self.headers.get("content-length") or 0)
        return self.rfile.read(n) if n else b""

    def send_json(self, status, obj):
        data = json.dumps(obj, ensure_ascii=False).encode("utf-8")
        self.send_response(status)
        self.send_header("content-type", "application/json; charset=utf-8")
        self.send_header("content-length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def handle_any(self):
        raw = self.read_body()
        path = self.path
        if path == "/__recorded" and self.command == "GET":
            with LOCK:
                return self.send_json(200, list(RECORDS))
        if path == "/__reset" and self.command == "POST":
            with LOCK:
                RECORDS.clear()
            return self.send_json(200, {"ok": True})
        if path == "/__pubkey" and self.command == "GET":
            return self.send_json(200, {"publicKey": PUBLIC_PEM, "skippedDocuments": SKIPPED})
        text = raw.decode("utf-8", "replace")
        try:
            body = json.loads(text) if text else None
        except ValueError:
            body = None
        with LOCK:
            RECORDS.append({
                "method": self.command,
                "path": path,
                "headers": [[k.lower(), v] for k, v in self.headers.items()],
                "body": text,
                "json": body,
                # Passwords the v2 SDKs encrypted, in clear.
                "decrypted": decrypted_strings(body, []),
                "graphql": graphql_field(body) if isinstance(body, dict) and "query" in body else None,
            })
        p = path.split("?", 1)[0]
        if p == "/graphql/v2" and self.command == "POST":
            status, out = graphql_answer(body if isinstance(body, dict) else {})
            return self.send_json(status, out)
        ans = rest_answer(self.command, path, body)
        if ans is None:
            return self.send_json(404, v2(404, "not found"))
        return self.send_json(*ans)

    do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = handle_any


def main():
    port = int(sys.argv[1]) if len(sys.argv) > 1 else 0
    server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
    server.daemon_threads = True
    print(server.server_address[1], flush=True)
    try:
        server.serve_forever(poll_interval=0.2)
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
