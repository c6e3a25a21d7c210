"""Operator commands: products add/list/deactivate, orders show/refund, seed-demo."""

from __future__ import annotations

import pytest

from tests.support.shop import SAMPLE_ASSETS, Shopper, query


@pytest.fixture
def cli(app):
    runner = app.test_cli_runner()

    def run(*args):
        result = runner.invoke(args=list(args))
        return result

    return run


def test_products_add_list_deactivate(app, cli, tmp_path):
    asset = tmp_path / "notes.txt"
    asset.write_bytes(b"notes")
    result = cli("products", "add", "--slug", "notes", "--title", "Notes", "--price", "4.99",
                 "--currency", "EUR", "--file", str(asset))
    assert result.exit_code == 0, result.output
    assert "added notes: 4.99 EUR" in result.output
    [product] = query(app, "SELECT price_amount, currency, asset_size, asset_content_type, "
                           "asset_key FROM products")
    assert product["price_amount"] == 499 and product["currency"] == "eur"
    assert product["asset_size"] == 5 and product["asset_content_type"] == "text/plain"
    assert (tmp_path / "assets" / product["asset_key"]).read_bytes() == b"notes"

    client = app.test_client()
    assert "Notes" in client.get("/").get_data(as_text=True)  # now cached

    assert cli("products", "add", "--slug", "notes", "--title", "Again", "--price", "1",
               "--file", str(asset)).exit_code != 0
    assert cli("products", "add", "--slug", "bad slug", "--title", "x", "--price", "1",
               "--file", str(asset)).exit_code != 0
    for price in ("0", "-1", "1.234", "abc"):
        assert cli("products", "add", "--slug", "x", "--title", "x", "--price", price,
                   "--file", str(asset)).exit_code != 0, price
    bad_currency = cli("products", "add", "--slug", "x", "--title", "x", "--price", "1",
                       "--currency", "euro", "--file", str(asset))
    assert bad_currency.exit_code == 2 and "three-letter" in bad_currency.output

    result = cli("products", "list")
    assert "notes" in result.output and "active" in result.output

    assert cli("products", "deactivate", "notes").exit_code == 0
    assert "Notes" not in client.get("/").get_data(as_text=True)  # cache invalidated
    assert client.get("/products/notes").status_code == 404
    assert "inactive" in cli("products", "list").output
    assert cli("products", "deactivate", "nope").exit_code != 0
    assert cli("products", "activate", "notes").exit_code == 0
    assert client.get("/products/notes").status_code == 200


def test_seed_demo_loads_the_sample_assets_once(app, cli, tmp_path):
    result = cli("seed-demo")
    assert result.exit_code == 0, result.output
    rows = query(app, "SELECT slug, asset_key, asset_size FROM products ORDER BY slug")
    assert [r["slug"] for r in rows] == ["field-guide", "icon-set", "synth-loop"]
    for row in rows:
        stored = (tmp_path / "assets" / row["asset_key"]).read_bytes()
        assert stored == (SAMPLE_ASSETS / row["asset_key"].rsplit("/", 1)[1]).read_bytes()
    again = cli("seed-demo")
    assert again.exit_code == 0 and again.output.count("exists") == 3
    assert len(query(app, "SELECT id FROM products")) == 3


def test_orders_show_and_refund_through_stripe(app, cli, stripe_server):
    cli("seed-demo")
    client = app.test_client()
    response = Shopper(client, stripe_server.url).buy("field-guide", email="buyer@example.com")
    order_id = response.get_json()["redirect"].rsplit("/", 1)[1]
    html = client.get(f"/checkout/orders/{order_id}").get_data(as_text=True)
    link = html.split('id="download-link" href="')[1].split('"')[0]

    shown = cli("orders", "show", order_id)
    assert shown.exit_code == 0
    assert "paid" in shown.output and "5.00 EUR" in shown.output and "pi_" in shown.output
    assert "/downloads/" in shown.output

    refunded = cli("orders", "refund", order_id)
    assert refunded.exit_code == 0, refunded.output
    assert "refunded 5.00 EUR (re_" in refunded.output
    assert query(app, "SELECT status, amount_refunded FROM orders") == [
        {"status": "refunded", "amount_refunded": 500}]
    assert client.get(link).status_code == 403
    assert cli("orders", "refund", order_id).exit_code != 0  # only paid orders
    assert cli("orders", "show", "00000000-0000-0000-0000-000000000000").exit_code != 0

    # The order page says what happened.
    assert "was refunded" in client.get(f"/checkout/orders/{order_id}").get_data(as_text=True)
    assert 'id="card-element"' in client.get("/products/field-guide").get_data(as_text=True)
