"""Static files: content-hashed URLs with a year of caching."""

from __future__ import annotations

import hashlib
import re
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
