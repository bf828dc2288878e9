"""Print the overlay values a NoCloud seed's user-data writes.

`seed-overlay.py USER-DATA`: the content `mimg seed` gave the file
/etc/mimg/overlay.json in user-data's write_files (cloud-init writes it
there later in the boot, in its network stage). mimg-firstboot --early reads
it from the seed volume itself, so the data disk and PostgreSQL are made
while cloud-init runs. Exit status 3: the user-data has no such file (not a
mimg seed); 1: it cannot be read.
"""
import base64
import sys

import yaml

PATH = "/etc/mimg/overlay.json"

with open(sys.argv[1], "rb") as f:
    text = f.read().decode("utf-8")
if not text.startswith("#cloud-config"):
    sys.exit(3)
doc = yaml.safe_load(text) or {}
for entry in doc.get("write_files") or []:
    if not isinstance(entry, dict) or entry.get("path") != PATH:
        continue
    content = entry.get("content", "")
    if str(entry.get("encoding", "")).lower() in ("b64", "base64"):
        content = base64.b64decode(content).decode("utf-8")
    sys.stdout.write(content)
    sys.exit(0)
sys.exit(3)
