"""Static files: content-hashed URLs with a year of caching, and an export for nginx."""

from __future__ import annotations

import hashlib
import os
import re
import subprocess
import sys
from pathlib import Path

from paydrop import static_files

from tests.support.shop import add_product


def test_pages_link_static_files_by_content_hash_with_long_caching(app, client, tmp_path):
    add_product(app, tmp_path, slug="field-guide")
    html = client.get("/products/field-guide").get_data(as_text=True)
    urls = re.findall(r'(?:href|src)="(/static/[^"]+)"', html)
    assert {Path(u).name.split(".")[0] for u in urls} == {"shop", "checkout"}
    for url in urls:
        original = re.sub(r"\.[0-9a-f]{10}(\.\w+)$", r"\1", url.removeprefix("/static/"))
        content = (static_files.STATIC_DIR / original).read_bytes()
        assert hashlib.sha256(content).hexdigest()[:10] in url
        response = client.get(url)
        assert response.status_code == 200 and response.data == content
        assert response.headers["Cache-Control"] == "public, max-age=31536000, immutable"
    assert client.get("/static/js/checkout.0000000000.js").status_code == 404


def test_a_changed_file_gets_a_new_url(tmp_path):
    (tmp_path / "js").mkdir()
    (tmp_path / "js" / "checkout.js").write_text("one")
    before = static_files.manifest(tmp_path)["js/checkout.js"]
    (tmp_path / "js" / "checkout.js").write_text("two")
    after = static_files.manifest(tmp_path)["js/checkout.js"]
    assert before != after and before.startswith("js/checkout.") and after.endswith(".js")


def test_export_for_nginx_needs_no_settings_and_only_adds(tmp_path):
    out = tmp_path / "static"
    env = {"PATH": os.environ["PATH"], "HOME": str(tmp_path)}
    paydrop = Path(sys.executable).with_name("paydrop")
    command = [str(paydrop), "static", "export", str(out)]
    first = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
    assert first.returncode == 0, first.stderr
    expected = static_files.manifest()
    for original, hashed in expected.items():
        assert (out / hashed).read_bytes() == (static_files.STATIC_DIR / original).read_bytes()
    (out / "css" / "shop.0123456789.css").write_text("an older release's file")
    second = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
    assert "0 file(s) exported" in second.stdout
    assert (out / "css" / "shop.0123456789.css").exists()
