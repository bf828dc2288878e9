#!/usr/bin/python3
"""The first-boot script's handling of secrets, byte for byte.

A secret (admin password, TURN shared secret) may hold any printable
character: spaces, quotes, `$`, `/`, `&`, `+`, `=`, `#`, `\\`. It is read
from its file here (one trailing newline dropped, as `mimg seed` wrote it)
and never passes through a shell word, `sed` or a command line, so `ps`
shows none.

  secrets.py register USER PASSWORD_FILE
      register USER as an admin on the local Synapse through its
      shared-secret registration API (HMAC-SHA1 over nonce, user, password
      and role, keyed with the registration shared secret); a user that
      exists already is left as it is
  secrets.py turnserver TEMPLATE OUT REALM_FROM SECRET_FILE
      write coturn's config from TEMPLATE: @REALM@ becomes the overlay's
      server name (read from the JSON file REALM_FROM), @SECRET@ the secret
      in quotes (coturn strips one leading and one trailing quote and takes
      what is between as it is)
"""
import hashlib
import hmac
import json
import os
import sys
import urllib.error
import urllib.request

SYNAPSE = "http://127.0.0.1:8008"
SHARED_SECRET = "/var/lib/matrix-synapse/registration_shared_secret"


def one_line(path):
    data = open(path, "rb").read()
    if data.endswith(b"\n"):
        data = data[:-1]
    if data.endswith(b"\r"):
        data = data[:-1]
    if b"\n" in data or b"\r" in data or b"\0" in data:
        sys.exit(f"{path}: a secret is one line without NUL")
    return data


def call(method, path, body=None):
    req = urllib.request.Request(SYNAPSE + path, method=method)
    data = None
    if body is not None:
        data = json.dumps(body).encode()
        req.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(req, data, timeout=60) as r:
            return r.status, json.load(r)
    except urllib.error.HTTPError as e:
        try:
            return e.code, json.load(e)
        except ValueError:
            return e.code, {}


def register(user, password_file):
    password = one_line(password_file)
    key = one_line(SHARED_SECRET)
    status, v = call("GET", "/_synapse/admin/v1/register")
    nonce = v.get("nonce")
    if status != 200 or not nonce:
        sys.exit(f"no registration nonce from Synapse: HTTP {status} {v}")
    mac = hmac.new(key, digestmod=hashlib.sha1)
    mac.update(b"\x00".join([nonce.encode(), user.encode(), password, b"admin"]))
    body = {
        "nonce": nonce,
        "username": user,
        "password": password.decode("utf-8"),
        "admin": True,
        "mac": mac.hexdigest(),
    }
    status, v = call("POST", "/_synapse/admin/v1/register", body)
    if status == 200:
        print(f"registered {user}")
    elif status == 400 and v.get("errcode") == "M_USER_IN_USE":
        print(f"{user} exists")
    else:
        sys.exit(f"registering {user}: HTTP {status} {v.get('errcode')} {v.get('error')}")


def turnserver(template, out, realm_from, secret_file):
    realm = json.load(open(realm_from))["server_name"]
    secret = one_line(secret_file).decode("utf-8")
    text = open(template).read()
    text = text.replace("@REALM@", realm).replace("@SECRET@", '"' + secret + '"')
    tmp = out + ".tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o640)
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.replace(tmp, out)


def main():
    if len(sys.argv) == 4 and sys.argv[1] == "register":
        register(sys.argv[2], sys.argv[3])
    elif len(sys.argv) == 6 and sys.argv[1] == "turnserver":
        turnserver(*sys.argv[2:])
    else:
        sys.exit(__doc__)


main()
