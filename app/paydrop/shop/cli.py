"""Operator commands: ``flask --app paydrop products|orders|seed-demo ...``."""

from __future__ import annotations

import mimetypes
import re
from pathlib import Path, PurePosixPath

import click
import stripe
from flask import Flask, current_app
from flask.cli import AppGroup, with_appcontext

from ..db import get_db
from . import catalog, fulfilment, grants, orders, outbox, products
from .money import format_money, parse_major
from .storage import asset_key, get_storage, sha256_of
from .stripe_client import get_stripe

products_cli = AppGroup("products", help="Manage the catalog.")
orders_cli = AppGroup("orders", help="Look at and refund orders.")

# Demo catalog for the sandbox: (slug, title, description, price, currency, file).
DEMO_PRODUCTS = (
    ("field-guide", "Field Guide to Tiny Birds",
     "A short illustrated PDF about the smallest birds of Europe.", 500, "eur",
     "field-guide.pdf"),
    ("synth-loop", "Warm Synth Loop",
     "A one-bar synthesizer loop (WAV, 16-bit, 22 kHz), free to use in your tracks.", 300,
     "eur", "synth-loop.wav"),
    ("icon-set", "Line Icon Set",
     "Twelve hand-drawn SVG icons in one ZIP archive.", 900, "usd", "icon-set.zip"),
)
DEFAULT_ASSETS = Path(__file__).resolve().parents[3] / "files" / "sample-assets"


def add_product(slug: str, title: str, description: str, price_amount: int, currency: str,
                path: Path) -> products.Product:
    """Upload the file to storage, then insert the product (the one way products are made)."""
    if not products.SLUG.match(slug) or len(slug) > 80:
        raise click.BadParameter("lower-case letters, digits and single dashes", param_hint="slug")
    filename = PurePosixPath(path.name).name
    content_type = mimetypes.guess_type(filename)[0] or "application/octet-stream"
    with path.open("rb") as stream:
        key = asset_key(slug, filename, sha256_of(stream))
        get_storage().put(key, stream, content_type)
    with get_db().transaction() as cur:
        product = products.create(
            cur, slug=slug, title=title, description=description, price_amount=price_amount,
            currency=currency, asset_key=key, asset_filename=filename,
            asset_content_type=content_type, asset_size=path.stat().st_size,
        )
    catalog.invalidate()
    return product


@products_cli.command("add")
@click.option("--slug", required=True, help="URL name, e.g. field-guide")
@click.option("--title", required=True)
@click.option("--description", default="")
@click.option("--price", required=True, help="in major units, e.g. 4.99")
@click.option("--currency", default="eur", show_default=True)
@click.option("--file", "path", required=True,
              type=click.Path(exists=True, dir_okay=False, path_type=Path))
def products_add(slug: str, title: str, description: str, price: str, currency: str,
                 path: Path) -> None:
    """Add a product and upload its file."""
    currency = currency.lower()
    if not re.fullmatch(r"[a-z]{3}", currency):
        raise click.BadParameter("a three-letter ISO code such as eur", param_hint="--currency")
    if not 1 <= len(title) <= 200:
        raise click.BadParameter("1 to 200 characters", param_hint="--title")
    try:
        amount = parse_major(price, currency)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--price") from None
    with get_db().transaction() as cur:
        if products.get_by_slug(cur, slug, active_only=False):
            raise click.ClickException(f"a product with slug {slug!r} exists")
    product = add_product(slug, title, description, amount, currency, path)
    click.echo(f"added {product.slug}: {format_money(product.price_amount, product.currency)}")


@products_cli.command("list")
def products_list() -> None:
    """Every product, active or not."""
    with get_db().transaction() as cur:
        rows = products.list_all(cur)
    for p in rows:
        state = "active" if p.active else "inactive"
        click.echo(f"{p.slug:<30} {format_money(p.price_amount, p.currency):>14}  {state:<8}  "
                   f"{p.title}")


@products_cli.command("deactivate")
@click.argument("slug")
def products_deactivate(slug: str) -> None:
    """Stop selling a product (existing buyers keep their downloads)."""
    with get_db().transaction() as cur:
        product = products.set_active(cur, slug, False)
    if product is None:
        raise click.ClickException(f"no product {slug!r}")
    catalog.invalidate()
    click.echo(f"deactivated {slug}")


@products_cli.command("activate")
@click.argument("slug")
def products_activate(slug: str) -> None:
    """Sell a deactivated product again."""
    with get_db().transaction() as cur:
        product = products.set_active(cur, slug, True)
    if product is None:
        raise click.ClickException(f"no product {slug!r}")
    catalog.invalidate()
    click.echo(f"activated {slug}")


def _order_or_fail(order_id: str) -> orders.Order:
    with get_db().transaction() as cur:
        order = orders.get(cur, order_id)
    if order is None:
        raise click.ClickException(f"no order {order_id!r}")
    return order


@orders_cli.command("show")
@click.argument("order_id")
def orders_show(order_id: str) -> None:
    """An order, its Stripe ids and its download links."""
    order = _order_or_fail(order_id)
    rows = [
        ("order", order.id),
        ("status", order.status + ("  (FLAGGED)" if order.flagged else "")),
        ("product", f"{order.product_slug} ({order.product_title})"),
        ("amount", format_money(order.amount, order.currency)),
        ("refunded", format_money(order.amount_refunded, order.currency)),
        ("email", order.email),
        ("user id", str(order.user_id or "guest")),
        ("mode", order.checkout_mode),
        ("payment intent", order.stripe_payment_intent_id or "-"),
        ("checkout session", order.stripe_checkout_session_id or "-"),
        ("charge", order.stripe_charge_id or "-"),
        ("created", f"{order.created_at:%Y-%m-%d %H:%M:%S %z}"),
        ("paid", f"{order.paid_at:%Y-%m-%d %H:%M:%S %z}" if order.paid_at else "-"),
        ("failure", order.failure_message or "-"),
        ("refund failed", f"{order.refund_failed_at:%Y-%m-%d %H:%M:%S %z}: "
                          f"{order.refund_failure_reason}" if order.refund_failed_at else "-"),
    ]
    for label, value in rows:
        click.echo(f"{label:>17}: {value}")
    with get_db().transaction() as cur:
        grant = grants.usable_for_order(cur, order.id)
    if grant is not None:
        from .downloads import download_url

        click.echo(f"{'download':>17}: {download_url(grant.id)} "
                   f"({grant.remaining} left, until {grant.expires_at:%Y-%m-%d %H:%M %z})")


@orders_cli.command("refund")
@click.argument("order_id")
def orders_refund(order_id: str) -> None:
    """Refund the whole order through Stripe and revoke its downloads."""
    order = _order_or_fail(order_id)
    if order.status != "paid":
        raise click.ClickException(f"order is {order.status}; only paid orders are refunded")
    if not order.stripe_payment_intent_id:
        raise click.ClickException("order has no Stripe payment to refund")
    try:
        refund = get_stripe().refund(order_id=order.id,
                                     payment_intent_id=order.stripe_payment_intent_id)
    except stripe.StripeError as exc:
        with get_db().transaction() as cur:
            fulfilment.record_refund_failure(cur, order.id, f"Stripe refused: {exc}")
        raise click.ClickException(f"Stripe refused the refund (recorded on the order): "
                                   f"{exc}") from None
    # charge.refunded will say the same later; the transition happens once.
    with get_db().transaction() as cur:
        change = fulfilment.mark_refunded(cur, order.id, amount_refunded=order.amount, fully=True)
    fulfilment.after_commit([change])
    click.echo(f"refunded {format_money(order.amount, order.currency)} ({refund['id']}); "
               "downloads revoked")


@orders_cli.command("restore")
@click.argument("order_id")
def orders_restore(order_id: str) -> None:
    """Give a refunded or disputed order its access back (a support decision)."""
    order = _order_or_fail(order_id)
    with get_db().transaction() as cur:
        change = fulfilment.restore(cur, order.id)
    if change is None:
        raise click.ClickException(f"order is {order.status}; only refunded or disputed orders "
                                   "are restored")
    fulfilment.after_commit([change])
    from .downloads import download_url

    assert change.grant is not None  # noqa: S101 - restore always issues a grant
    click.echo(f"restored {order.id} to paid; new download link: {download_url(change.grant.id)}")


@click.command("seed-demo")
@with_appcontext
@click.option("--assets", type=click.Path(exists=True, file_okay=False, path_type=Path),
              default=None, help=f"directory with the sample files [default: {DEFAULT_ASSETS}]")
def seed_demo(assets: Path | None) -> None:
    """Load the demo products (skips slugs that exist)."""
    directory = assets or DEFAULT_ASSETS
    if not directory.is_dir():
        raise click.ClickException(f"no sample assets in {directory}; pass --assets DIR")
    for slug, title, description, amount, currency, filename in DEMO_PRODUCTS:
        with get_db().transaction() as cur:
            exists = products.get_by_slug(cur, slug, active_only=False) is not None
        if exists:
            click.echo(f"{slug}: exists")
            continue
        add_product(slug, title, description, amount, currency, directory / filename)
        click.echo(f"{slug}: added ({format_money(amount, currency)})")
    if current_app.config["STORAGE_BACKEND"] == "local":
        click.echo(f"files in {current_app.config['STORAGE_LOCAL_DIR']}")


mail_cli = AppGroup("mail", help="The mail outbox.")


@mail_cli.command("retry-dead")
def mail_retry_dead() -> None:
    """Queue every dead message again (after fixing the mail server)."""
    click.echo(f"{outbox.retry_dead()} message(s) queued again")


@mail_cli.command("status")
def mail_status() -> None:
    """Messages in the outbox by status."""
    for status, count in outbox.counts().items():
        click.echo(f"{status:<8} {count}")


def init_app(app: Flask) -> None:
    from .worker import worker_command

    app.cli.add_command(products_cli)
    app.cli.add_command(orders_cli)
    app.cli.add_command(mail_cli)
    app.cli.add_command(seed_demo)
    app.cli.add_command(worker_command)
