"""The app's Redis client (sessions, cache, rate limits, pub/sub)."""

from __future__ import annotations

import redis
from flask import Flask, current_app

_EXTENSION = "paydrop.redis"


def init_app(app: Flask) -> None:
    timeout = app.config["HEALTH_CHECK_TIMEOUT_SECONDS"]
    app.extensions[_EXTENSION] = redis.Redis.from_url(
        app.config["REDIS_URL"],
        socket_connect_timeout=timeout,
        socket_timeout=max(timeout, 5),
        health_check_interval=30,
        decode_responses=False,
    )


def get_redis() -> redis.Redis:
    client: redis.Redis = current_app.extensions[_EXTENSION]
    return client
