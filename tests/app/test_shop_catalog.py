"""Catalog pages, the Redis product cache, the read replica and its fallback."""

from __future__ import annotations

import re
from html.parser import HTMLParser

import pytest

from tests.support.servers import free_port
from tests.support.shop import Shopper, add_product, csrf_token, query


class _Inputs(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.inputs: list[dict[str, str | None]] = []
        self.labels: set[str] = set()
        self.viewport = False
        self.scripts: list[dict[str, str | None]] = []
        self.inline_script = False
        self._in_script = False

    def handle_starttag(self, tag, attrs):
        attributes = dict(attrs)
        if tag == "input" and attributes.get("type") != "hidden":
            self.inputs.append(attributes)
        if tag == "label" and attributes.get("for"):
            self.labels.add(attributes["for"])
        if tag == "meta" and attributes.get("name") == "viewport":
            self.viewport = "width=device-width" in (attributes.get("content") or "")
        if tag == "script":
            self.scripts.append(attributes)
            self._in_script = "src" not in attributes

    def handle_data(self, data):
        if self._in_script and data.strip():
            self.inline_script = True

    def handle_endtag(self, tag):
        if tag == "script":
            self._in_script = False


def _check_page(html: str) -> _Inputs:
    parsed = _Inputs()
    parsed.feed(html)
    assert parsed.viewport
    assert not parsed.inline_script  # CSP-friendly: all JS comes from files
    for field in parsed.inputs:
        assert field.get("id") in parsed.labels, field
    return parsed


def test_catalog_and_product_pages(app, client, tmp_path, stripe_server):
    add_product(app, tmp_path, slug="field-guide", title="Field Guide", price=1250)
    add_product(app, tmp_path, slug="yen-thing", title="Yen Thing", price=500, currency="jpy")
    index = client.get("/")
    assert index.status_code == 200
    html = index.get_data(as_text=True)
    _check_page(html)
    assert "12.50 EUR" in html and "500 JPY" in html
    assert 'href="/products/field-guide"' in html

    page = client.get("/products/field-guide").get_data(as_text=True)
    parsed = _check_page(page)
    scripts = [s.get("src") for s in parsed.scripts]
    assert scripts[0] == stripe_server.js_url and len(scripts) == 2
    assert re.fullmatch(r"/static/js/checkout\.[0-9a-f]{10}\.js", scripts[1])
    assert client.get(scripts[1]).status_code == 200
    assert 'id="card-element"' in page and "Pay 12.50 EUR" in page
    assert "data-publishable-key=\"pk_test_paydrop\"" in page
    stylesheet = re.search(r'href="(/static/css/shop\.[0-9a-f]{10}\.css)"', page).group(1)
    assert client.get(stylesheet).status_code == 200

    for path in ("/account/login", "/account/register"):
        _check_page(client.get(path).get_data(as_text=True))


def test_product_data_is_cached_and_invalidated_on_change(app, client, tmp_path, redis_client):
    add_product(app, tmp_path, slug="field-guide", title="Field Guide")
    assert "Field Guide" in client.get("/products/field-guide").get_data(as_text=True)
    query(app, "UPDATE products SET title = 'Changed Behind The Cache' RETURNING id")
    assert "Field Guide" in client.get("/products/field-guide").get_data(as_text=True)
    assert redis_client.keys("paydrop:catalog:*")

    with app.app_context():
        from paydrop.shop import catalog

        catalog.invalidate()
    assert "Changed Behind The Cache" in client.get("/products/field-guide").get_data(as_text=True)


def _redis_commands(app, monkeypatch) -> list[tuple[str, ...]]:
    """Every command the app's Redis client sends from now on."""
    sent: list[tuple[str, ...]] = []
    client = app.extensions["paydrop.redis"]
    execute = client.execute_command

    def counting(*args, **options):
        sent.append(tuple(str(arg) for arg in args))
        return execute(*args, **options)

    monkeypatch.setattr(client, "execute_command", counting)
    return sent


def test_a_cached_page_view_asks_redis_for_the_catalog_version_only(app, client, tmp_path, monkeypatch):
    """Each process keeps the entries it read, under the versioned key: one round trip per view."""
    add_product(app, tmp_path, slug="field-guide", title="Field Guide")
    client.get("/")
    client.get("/products/field-guide")
    sent = _redis_commands(app, monkeypatch)
    assert "Field Guide" in client.get("/").get_data(as_text=True)
    assert "Field Guide" in client.get("/products/field-guide").get_data(as_text=True)
    assert [command for command in sent if "paydrop:catalog" in " ".join(command)] == [
        ("GET", "paydrop:catalog:version"), ("GET", "paydrop:catalog:version")]


def test_another_process_changing_the_catalog_shows_at_once(make_app, tmp_path):
    """The per-process copy never hides a change another process (the CLI, the other
    app host) made and announced: the new version is a new key."""
    shop, operator = make_app(), make_app()
    add_product(shop, tmp_path, slug="field-guide", title="Field Guide")
    client = shop.test_client()
    assert "Field Guide" in client.get("/products/field-guide").get_data(as_text=True)
    assert "Field Guide" in client.get("/products/field-guide").get_data(as_text=True)
    query(shop, "UPDATE products SET title = 'New Title' RETURNING id")
    with operator.app_context():
        from paydrop.shop import catalog

        catalog.invalidate()
    assert "New Title" in client.get("/products/field-guide").get_data(as_text=True)


def test_catalog_works_without_redis(make_app, tmp_path):
    app = make_app({"REDIS_URL": f"redis://127.0.0.1:{free_port()}/0",
                    "HEALTH_CHECK_TIMEOUT_SECONDS": "1"})
    add_product(app, tmp_path, slug="field-guide", title="Field Guide")
    client = app.test_client()
    assert "Field Guide" in client.get("/").get_data(as_text=True)
    assert client.get("/products/field-guide").status_code == 200


@pytest.fixture
def replica_url(pg_server, database_url):
    from paydrop import migrate

    url = pg_server.create_database("paydrop_replica_test", exist_ok=True)
    migrate.upgrade(url)
    import psycopg2

    conn = psycopg2.connect(url)
    with conn, conn.cursor() as cur:
        cur.execute("TRUNCATE products RESTART IDENTITY CASCADE")
    conn.close()
    return url


def test_catalog_reads_go_to_the_replica_but_checkout_charges_the_primary_price(
        make_app, replica_url, tmp_path, stripe_server):
    replica = make_app({"DATABASE_URL": replica_url})
    add_product(replica, tmp_path, slug="field-guide", title="Field Guide", price=1)
    app = make_app({"DATABASE_REPLICA_URL": replica_url})
    add_product(app, tmp_path, slug="field-guide", title="Field Guide", price=500)

    client = app.test_client()
    page = client.get("/products/field-guide").get_data(as_text=True)
    assert "Pay 0.01 EUR" in page  # what the (lagging) replica says

    response = Shopper(client, stripe_server.url).buy("field-guide")
    assert response.status_code == 200
    assert query(app, "SELECT amount, status FROM orders") == [{"amount": 500, "status": "paid"}]


def test_catalog_falls_back_to_the_primary_when_the_replica_is_down(make_app, tmp_path):
    app = make_app({"DATABASE_REPLICA_URL": f"postgresql://postgres@127.0.0.1:{free_port()}/x",
                    "DATABASE_CONNECT_TIMEOUT": "1"})
    add_product(app, tmp_path, slug="field-guide", title="Field Guide")
    client = app.test_client()
    assert "Field Guide" in client.get("/").get_data(as_text=True)
    assert client.get("/products/field-guide").status_code == 200


def test_error_pages_are_readable_html_and_json(client):
    page = client.get("/products/nope")
    assert page.status_code == 404
    assert "text/html" in page.headers["Content-Type"]
    assert "no longer for sale" in page.get_data(as_text=True)
    api = client.post("/checkout/nope/pay", json={})
    assert api.status_code == 400  # CSRF first
    assert api.get_json()["error"]


def test_checkout_throttles_card_attempts_per_ip(make_app, tmp_path, stripe_server):
    app = make_app(CHECKOUT_RATE_LIMIT="2/300")
    add_product(app, tmp_path, slug="field-guide")
    client = app.test_client()
    token = csrf_token(client)
    statuses = [client.post("/checkout/field-guide/setup-intent", json={},
                            headers={"X-CSRFToken": token}).status_code for _ in range(3)]
    assert statuses == [200, 200, 429]
