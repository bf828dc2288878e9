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
  secrets.py matterbridge TEMPLATE OUT PASSWORD_FILE
      the bridge's Matrix user: register the user TEMPLATE's [matrix.*]
      Login names (not an admin) with the password in PASSWORD_FILE (made
      once, 0600, on the data disk: it survives an image swap), and write
      matterbridge's config OUT: TEMPLATE with `Password = "..."` after the
      Login line, mode 0640, group matterbridge (its service user)
  secrets.py turnserver TEMPLATE OUT OVERLAY_JSON
      write coturn's config from TEMPLATE and the TURN server's values in
      OVERLAY_JSON (the seed's /etc/mimg/overlay.json): its realm, relay
      ports and address, and one static-auth-secret line per secret file
      (the secret in quotes: coturn strips one leading and one trailing
      quote and takes what is between as it is; coturn accepts every
      listed secret, so one can be rotated); with tls = "files", the
      seed's chain and a copy of its key that coturn's group may read
"""
import base64
import hashlib
import hmac
import json
import grp
import os
import sys
import tomllib
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


def register(user, password_file, admin=True):
    password = one_line(password_file)
    key = one_line(SHARED_SECRET)
    status, v = call("GET", "/_synapse/admin/v1/register")
    nonce = v.get("nonce")
    if status != 200 or not nonce:
        sys.exit(f"no registration nonce from Synapse: HTTP {status} {v}")
    mac = hmac.new(key, digestmod=hashlib.sha1)
    role = b"admin" if admin else b"notadmin"
    mac.update(b"\x00".join([nonce.encode(), user.encode(), password, role]))
    body = {
        "nonce": nonce,
        "username": user,
        "password": password.decode("utf-8"),
        "admin": admin,
        "mac": mac.hexdigest(),
    }
    status, v = call("POST", "/_synapse/admin/v1/register", body)
    if status == 200:
        print(f"registered {user}")
    elif status == 400 and v.get("errcode") == "M_USER_IN_USE":
        print(f"{user} exists")
    else:
        sys.exit(f"registering {user}: HTTP {status} {v.get('errcode')} {v.get('error')}")


TLS_CHAIN = "/etc/mimg/tls/fullchain.pem"
TLS_KEY = "/etc/mimg/secrets/tls.key"
TURN_KEY = "/etc/mimg/secrets/turnserver-tls.key"


def write_private(path, text, mode, group=None):
    tmp = path + ".tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)
    if group is not None:
        os.chown(tmp, 0, group)
    os.chmod(tmp, mode)
    os.replace(tmp, path)


def turnserver(template, out, overlay_json):
    o = json.load(open(overlay_json))
    try:
        group = grp.getgrnam("turnserver").gr_gid
    except KeyError:
        group = None
    secrets = [one_line(f).decode("utf-8") for f in o["turn_secret_files"]]
    if not secrets:
        sys.exit("the seed names no TURN secret")
    lines = {
        "@REALM@": ["realm=" + o["realm"]],
        "@PORTS@": ["min-port=%d" % o["min_port"], "max-port=%d" % o["max_port"]],
        # Relays on the VM's own address, the one clients reach.
        "@RELAY@": ["relay-ip=" + o["address"]] if o.get("address") else [],
        "@SECRETS@": ['static-auth-secret="' + s + '"' for s in secrets],
        "@TLS@": [],
    }
    if o.get("tls") == "files":
        write_private(TURN_KEY, open(TLS_KEY).read(), 0o640, group)
        lines["@TLS@"] = ["cert=" + TLS_CHAIN, "pkey=" + TURN_KEY]
    text = []
    for line in open(template).read().splitlines():
        text.extend(lines.get(line.strip(), [line]))
    write_private(out, "\n".join(text) + "\n", 0o640, group)


def matterbridge(template, out, password_file):
    text = open(template).read()
    matrix = tomllib.loads(text).get("matrix") or {}
    if len(matrix) != 1:
        sys.exit(f"{template}: one [matrix.NAME] account expected, found {len(matrix)}")
    user = next(iter(matrix.values())).get("Login")
    if not user:
        sys.exit(f"{template}: the [matrix] account has no Login")
    if not os.path.exists(password_file):
        os.makedirs(os.path.dirname(password_file), exist_ok=True)
        write_private(password_file, base64.urlsafe_b64encode(os.urandom(32)).decode().rstrip("=") + "\n", 0o600)
    register(user, password_file, admin=False)
    password = one_line(password_file).decode("utf-8")
    lines, section = [], None
    for line in text.splitlines():
        lines.append(line)
        t = line.strip()
        if t.startswith("["):
            section = t
        elif section and section.startswith("[matrix.") and t.startswith("Login"):
            # A TOML basic string: JSON's escaping is valid there.
            lines.append("Password = " + json.dumps(password))
    try:
        group = grp.getgrnam("matterbridge").gr_gid
    except KeyError:
        sys.exit("no group matterbridge: is this image's matterbridge layer there?")
    os.makedirs(os.path.dirname(out), exist_ok=True)
    write_private(out, "\n".join(lines) + "\n", 0o640, group)
    print(f"matterbridge logs in as {user}")


def main():
    if len(sys.argv) == 4 and sys.argv[1] == "register":
        register(sys.argv[2], sys.argv[3])
    elif len(sys.argv) == 5 and sys.argv[1] == "matterbridge":
        matterbridge(*sys.argv[2:])
    elif len(sys.argv) == 5 and sys.argv[1] == "turnserver":
        turnserver(*sys.argv[2:])
    else:
        sys.exit(__doc__)


if __name__ == "__main__":
    main()
