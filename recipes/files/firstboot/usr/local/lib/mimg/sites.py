#!/usr/bin/python3
"""nginx serves a customer's names only when the VM is ready.

nginx includes /run/mimg/nginx/*.conf (the seed's
/etc/nginx/conf.d/mimg-matrix.conf). /run is empty at every boot, so until
this module installs the seed's sites there, every name gets the image's
"not configured yet" page (503).

  sites.py pending   tls = "acme": port 80 with the ACME challenges (and a
                     503 "not configured yet") while the certificate is
                     missing; the first-boot script calls it first
  sites.py ready     first boot is done (the first-boot script calls it
                     last): the sites are installed, unless tls = "acme"
                     has no certificate yet (mimg-acme installs them once
                     certbot has it)
  sites.py install   mimg-acme, once certbot has the certificate: the
                     sites are installed if first boot is done

Each change is atomic (a rename), checked with `nginx -t` and followed by a
reload; two callers take turns (a lock in /run).
"""
import fcntl
import json
import os
import subprocess
import sys

CONF = "/etc/mimg/overlay.json"
SITES = "/etc/mimg/nginx/mimg-matrix.conf"
PENDING = "/etc/mimg/nginx/mimg-matrix-pending.conf"
RUN = "/run/mimg/nginx"
ACTIVE = RUN + "/mimg-matrix.conf"
READY = "/run/mimg/ready"


def log(msg):
    print(f"mimg-sites: {msg}", flush=True)


def certificate_missing():
    a = json.load(open(CONF)).get("acme")
    if not a:
        return False
    return not os.path.exists(f"/etc/letsencrypt/live/{a['cert_name']}/fullchain.pem")


def put(source):
    """Serve `source` (atomic copy into /run), reload nginx if it changed."""
    with open(source, "rb") as f:
        data = f.read()
    try:
        with open(ACTIVE, "rb") as f:
            if f.read() == data:
                return False
    except FileNotFoundError:
        pass
    tmp = ACTIVE + ".mimg-tmp"
    with open(tmp, "wb") as f:
        f.write(data)
    os.replace(tmp, ACTIVE)
    subprocess.run(["nginx", "-t", "-q"], check=True)
    subprocess.run(["systemctl", "reload-or-restart", "nginx"], check=True)
    return True


def main():
    if len(sys.argv) != 2 or sys.argv[1] not in ("pending", "ready", "install"):
        sys.exit(__doc__)
    what = sys.argv[1]
    os.makedirs(RUN, exist_ok=True)
    with open("/run/mimg/sites.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if what == "pending":
            if os.path.exists(PENDING) and certificate_missing():
                put(PENDING)
            return
        if what == "ready":
            with open(READY, "w"):
                pass
        elif not os.path.exists(READY):
            log("the certificate is in place; the sites follow when first boot is done")
            return
        if not os.path.exists(SITES):
            return
        if certificate_missing():
            log("first boot is done; the sites follow when certbot has the certificate")
            return
        if put(SITES):
            log("nginx serves the customer's names")


if __name__ == "__main__":
    main()
