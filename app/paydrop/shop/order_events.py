"""Order events on Redis pub/sub (channel ``paydrop:orders``), sent after commit.

Pub/sub is fire-and-forget: a subscriber that is down misses messages, and the
database stays the record of truth. A Redis outage never fails a payment.
"""

from __future__ import annotations

import json
import logging
from datetime import UTC, datetime
from typing import Any

import redis

from .. import metrics
from ..redis_store import get_redis

CHANNEL = "paydrop:orders"
log = logging.getLogger(__name__)


def publish(event: str, payload: dict[str, Any]) -> None:
    message = {"event": event, "at": datetime.now(UTC).isoformat(), **payload}
    try:
        get_redis().publish(CHANNEL, json.dumps(message, sort_keys=True))
    except redis.RedisError as exc:
        metrics.DEPENDENCY_ERRORS.labels(dependency="redis").inc()
        log.warning("could not publish %s for order %s: %s", event, payload.get("order_id"), exc)

