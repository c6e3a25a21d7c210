"""Amounts are integers in the currency's minor unit; this turns them into text."""

from __future__ import annotations

# Currencies Stripe treats as having no minor unit (https://docs.stripe.com/currencies).
ZERO_DECIMAL = frozenset({
    "bif", "clp", "djf", "gnf", "jpy", "kmf", "krw", "mga", "pyg", "rwf", "ugx", "vnd", "vuv",
    "xaf", "xof", "xpf",
})
THREE_DECIMAL = frozenset({"bhd", "jod", "kwd", "omr", "tnd"})


def exponent(currency: str) -> int:
    currency = currency.lower()
    if currency in ZERO_DECIMAL:
        return 0
    if currency in THREE_DECIMAL:
        return 3
    return 2


def format_money(amount: int, currency: str) -> str:
    """``format_money(1250, "eur")`` -> ``"12.50 EUR"``."""
    digits = exponent(currency)
    major = amount / (10**digits)
    return f"{major:,.{digits}f} {currency.upper()}"


def parse_major(text: str, currency: str) -> int:
    """Operator input ``"12.50"`` -> 1250 minor units; raises ValueError on anything else."""
    from decimal import Decimal, InvalidOperation

    try:
        value = Decimal(text.strip())
    except InvalidOperation as exc:
        raise ValueError(f"not a price: {text!r}") from exc
    minor = value * (10 ** exponent(currency))
    if minor != minor.to_integral_value() or minor <= 0:
        raise ValueError(f"price must be positive with at most {exponent(currency)} decimals")
    return int(minor)
