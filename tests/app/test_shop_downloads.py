"""Downloads: storage backends (local directory, S3 via moto), nginx hand-off
(X-Accel-Redirect / presigned redirect), revocation and storage failures."""

from __future__ import annotations

import contextlib
import re
import secrets
from pathlib import Path
from urllib.parse import parse_qs, unquote, urlparse

import pytest
import requests

from tests.support.servers import MotoS3Server
from tests.support.shop import Shopper, add_product, event, query, signed


@pytest.fixture(scope="module")
def moto():
    with MotoS3Server() as server:
        yield server


def _buy(app, stripe_server, slug="asset"):
    client = app.test_client()
    response = Shopper(client, stripe_server.url).buy(slug)
    assert response.status_code == 200, response.get_json()
    html = client.get(response.get_json()["redirect"]).get_data(as_text=True)
    return client, re.search(r'id="download-link" href="([^"]+)"', html).group(1)


def test_local_files_are_not_under_any_public_url(app, client, tmp_path):
    """Every GET route, fed the asset's key and its pieces, never returns the
    file; the file really is on disk (so a route serving it would be caught)."""
    content = b"paid content " + secrets.token_bytes(16)
    product = add_product(app, tmp_path, slug="asset", content=content)
    stored = Path(app.config["STORAGE_LOCAL_DIR"]) / product.asset_key
    assert stored.read_bytes() == content
    pieces = {product.asset_key, product.asset_filename, *product.asset_key.split("/"),
              f"../{product.asset_key}", f"../assets/{product.asset_key}"}
    probed = 0
    for rule in app.url_map.iter_rules():
        if "GET" not in rule.methods:
            continue
        for piece in pieces:
            path = rule.rule
            for argument in rule.arguments:
                path = re.sub(r"<(?:[^:>]+:)?" + argument + ">", piece, path)
            response = client.get(path)
            assert content not in response.data, path
            probed += 1
    assert probed > 20


@pytest.mark.parametrize("inside", ["static", "static/assets", "."])
def test_storage_inside_the_public_static_folder_is_refused(make_app, inside):
    import paydrop
    from paydrop.settings import SettingsError

    static = Path(paydrop.__file__).parent / "static"
    with pytest.raises(SettingsError, match="STORAGE_LOCAL_DIR"):
        make_app({"STORAGE_LOCAL_DIR": str((static.parent / inside).resolve())})


def test_x_accel_redirect_for_local_storage(make_app, stripe_server, tmp_path):
    app = make_app({"DOWNLOAD_ACCEL_PREFIX": "/_protected/"})
    product = add_product(app, tmp_path, slug="asset", filename="Field Guide é.pdf")
    client, link = _buy(app, stripe_server)
    response = client.get(link)
    assert response.status_code == 200
    assert response.data == b""
    assert response.headers["X-Accel-Redirect"] == (
        "/_protected/" + product.asset_key.replace(" ", "%20").replace("é", "%C3%A9"))
    assert response.headers["Content-Disposition"] == (
        "attachment; filename=\"Field Guide _.pdf\"; filename*=UTF-8''Field%20Guide%20%C3%A9.pdf")
    assert response.headers["Content-Type"] == "application/pdf"
    assert query(app, "SELECT download_count FROM download_grants") == [{"download_count": 1}]


@pytest.fixture
def s3_app(make_app, moto):
    bucket = f"paydrop-{secrets.token_hex(4)}"
    moto.create_bucket(bucket)

    def build(**env):
        return make_app({"STORAGE_BACKEND": "s3", "S3_BUCKET": bucket, "S3_ENDPOINT_URL": moto.url,
                         "S3_ACCESS_KEY_ID": moto.access_key,
                         "S3_SECRET_ACCESS_KEY": moto.secret_key, **env})

    return build


def test_s3_storage_streams_through_the_app(s3_app, stripe_server, tmp_path):
    app = s3_app()
    content = secrets.token_bytes(300_000)
    add_product(app, tmp_path, slug="asset", content=content, filename="big.bin")
    client, link = _buy(app, stripe_server)
    response = client.get(link)
    assert response.status_code == 200
    assert response.data == content
    assert response.headers["Content-Length"] == str(len(content))


def test_s3_with_nginx_redirects_to_a_short_lived_presigned_url(s3_app, stripe_server, tmp_path):
    app = s3_app(DOWNLOAD_ACCEL_PREFIX="/_protected/")
    content = b"s3 bytes"
    product = add_product(app, tmp_path, slug="asset", content=content, filename="a é.zip")
    client, link = _buy(app, stripe_server)
    response = client.get(link)
    assert response.status_code == 302
    location = response.headers["Location"]
    query_string = parse_qs(urlparse(location).query)
    assert unquote(urlparse(location).path).endswith(product.asset_key)
    assert query_string["X-Amz-Expires"] == ["60"]
    assert query_string["response-content-disposition"] == [
        "attachment; filename=\"a _.zip\"; filename*=UTF-8''a%20%C3%A9.zip"]
    assert requests.get(location, timeout=10).content == content


def test_a_missing_file_is_503_and_does_not_use_up_the_link(app, stripe_server, tmp_path):
    product = add_product(app, tmp_path, slug="asset")
    client, link = _buy(app, stripe_server)
    (tmp_path / "assets" / product.asset_key).unlink()
    assert client.get(link).status_code == 503
    assert query(app, "SELECT download_count FROM download_grants") == [{"download_count": 0}]


def test_a_missing_file_behind_x_accel_redirect_does_not_use_up_the_link(make_app, stripe_server,
                                                                        tmp_path):
    app = make_app({"DOWNLOAD_ACCEL_PREFIX": "/_protected/"})
    product = add_product(app, tmp_path, slug="asset")
    client, link = _buy(app, stripe_server)
    (tmp_path / "assets" / product.asset_key).unlink()
    response = client.get(link)
    assert response.status_code == 503
    assert "X-Accel-Redirect" not in response.headers
    assert query(app, "SELECT download_count FROM download_grants") == [{"download_count": 0}]


def test_a_missing_s3_object_behind_a_presigned_redirect_does_not_use_up_the_link(
        s3_app, stripe_server, tmp_path):
    app = s3_app(DOWNLOAD_ACCEL_PREFIX="/_protected/")
    product = add_product(app, tmp_path, slug="asset")
    client, link = _buy(app, stripe_server)
    with app.app_context():
        from paydrop.shop.storage import get_storage

        storage = get_storage()
        storage.client.delete_object(Bucket=storage.bucket, Key=product.asset_key)
    response = client.get(link)
    assert response.status_code == 503
    assert query(app, "SELECT download_count FROM download_grants") == [{"download_count": 0}]


def test_refunded_order_links_are_403(app, stripe_server, tmp_path):
    add_product(app, tmp_path, slug="asset")
    client, link = _buy(app, stripe_server)
    [order] = query(app, "SELECT stripe_payment_intent_id AS pi, amount FROM orders")
    refund = event("charge.refunded", {"id": "ch_1", "object": "charge", "amount": order["amount"],
                                       "amount_refunded": order["amount"], "refunded": True,
                                       "payment_intent": order["pi"]})
    body, headers = signed(refund)
    assert client.post("/api/webhooks/stripe", data=body, headers=headers).status_code == 200
    response = client.get(link)
    assert response.status_code == 403
    assert "refunded" in response.get_data(as_text=True)



@pytest.mark.parametrize("storage", ["local", "s3"])
def test_head_with_nginx_hand_off_gives_away_nothing_and_counts_nothing(
        storage, make_app, s3_app, stripe_server, tmp_path):
    env = {"DOWNLOAD_ACCEL_PREFIX": "/_protected/"}
    app = s3_app(**env) if storage == "s3" else make_app(env)
    add_product(app, tmp_path, slug="asset", content=b"12345", filename="a.zip")
    client, link = _buy(app, stripe_server)
    for _ in range(8):  # more than DOWNLOAD_LIMIT
        response = client.head(link)
        assert response.status_code == 200
        assert "Location" not in response.headers
        assert "X-Accel-Redirect" not in response.headers
        assert response.headers["Content-Length"] == "5"
        assert response.headers["Content-Disposition"].startswith("attachment;")
    assert query(app, "SELECT download_count FROM download_grants") == [{"download_count": 0}]
    assert client.get(link).status_code == (302 if storage == "s3" else 200)


def _open_files(path):
    import os

    found = 0
    for fd in os.listdir("/proc/self/fd"):
        with contextlib.suppress(OSError):
            found += os.readlink(f"/proc/self/fd/{fd}") == str(path)
    return found


def test_an_unread_download_closes_its_file(app, stripe_server, tmp_path):
    product = add_product(app, tmp_path, slug="asset", content=b"x" * 200_000)
    client, link = _buy(app, stripe_server)
    path = (tmp_path / "assets" / product.asset_key).resolve()
    response = client.get(link, buffered=False)
    assert response.status_code == 200
    assert _open_files(path) == 1
    response.close()  # what the WSGI server does when the client goes away
    assert _open_files(path) == 0
