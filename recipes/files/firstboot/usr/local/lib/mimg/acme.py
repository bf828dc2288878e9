#!/usr/bin/python3
"""mimg-acme: the TLS certificate of a `tls = "acme"` overlay.

Gets one certificate for the overlay's three names (homeserver, server
name, web client) from its ACME server with certbot over HTTP-01 (nginx
serves the challenges from the webroot on port 80), then has sites.py
install the seed's sites (https; they wait for first boot to be done too).
Until then port 80 answers "not configured yet", never a redirect to nothing.
A failure is logged with certbot's reason and retried with backoff (15 s,
doubling, at most an hour) until a certificate comes. certbot's own timer
renews it; the renewal reloads nginx (--deploy-hook).

  acme.py          get the certificate (if missing) and install the sites

Values come from /etc/mimg/overlay.json (validated by mimg seed); certbot
is run with an argument list, never through a shell.
"""
import json
import os
import subprocess
import sys
import time

CONF = "/etc/mimg/overlay.json"


def log(msg):
    print(f"mimg-acme: {msg}", flush=True)


def install_sites():
    """The sites replace the waiting page once first boot is done too."""
    here = os.path.dirname(os.path.abspath(__file__))
    subprocess.run([sys.executable, os.path.join(here, "sites.py"), "install"], check=True)
    log("certificate in place")


def certbot(a):
    args = [
        "certbot", "certonly", "--non-interactive", "--agree-tos",
        "--webroot", "-w", a["webroot"],
        "--cert-name", a["cert_name"], "--expand",
        "--server", a["directory"],
        "--deploy-hook", "systemctl reload nginx",
    ]
    for n in a["names"]:
        args += ["-d", n]
    if a.get("email"):
        args += ["-m", a["email"], "--no-eff-email"]
    else:
        args += ["--register-unsafely-without-email"]
    env = dict(os.environ)
    if a.get("ca_file"):
        env["REQUESTS_CA_BUNDLE"] = a["ca_file"]
    return subprocess.run(args, env=env, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True)


def main():
    a = json.load(open(CONF)).get("acme")
    if not a:
        log("the overlay does not say tls = \"acme\": nothing to do")
        return
    os.makedirs(a["webroot"], exist_ok=True)
    live = f"/etc/letsencrypt/live/{a['cert_name']}/fullchain.pem"
    wait = 15
    while not os.path.exists(live):
        log(f"asking {a['directory']} for a certificate for {', '.join(a['names'])}")
        r = certbot(a)
        if r.returncode == 0 and os.path.exists(live):
            break
        lines = [l for l in r.stdout.splitlines() if l.strip()]
        reason = " | ".join(lines[-6:]) or f"exit status {r.returncode}"
        log(f"certbot failed ({reason}); trying again in {wait} s")
        time.sleep(wait)
        wait = min(wait * 2, 3600)
    install_sites()


if __name__ == "__main__":
    sys.exit(main())
