"""A stand-in for Stripe's Checkout Sessions API, which localstripe lacks.

It records every request (form fields and headers) so tests can check what the
app sent (amounts from the database, idempotency keys), and lets a test mark a
session paid to exercise the success page's reconciliation.
"""

from __future__ import annotations

import json
import secrets
from typing import Any

from werkzeug.wrappers import Request, Response


class FakeCheckoutStripe:
    def __init__(self) -> None:
        self.sessions: dict[str, dict[str, Any]] = {}
        self.requests: list[dict[str, Any]] = []
        self.read_status: int | None = None  # set to make every GET fail with this status

    def pay(self, session_id: str, payment_intent: str | None = None) -> dict[str, Any]:
        session = self.sessions[session_id]
        session.update(status="complete", payment_status="paid",
                       payment_intent=payment_intent or f"pi_{secrets.token_hex(8)}")
        return session

    def __call__(self, environ: dict[str, Any], start_response: Any) -> Any:
        request = Request(environ)
        self.requests.append({
            "method": request.method,
            "path": request.path,
            "form": request.form.to_dict(),
            "headers": dict(request.headers),
        })
        if request.method == "POST" and request.path == "/v1/checkout/sessions":
            response = self._create(request.form.to_dict())
        elif request.method == "GET" and self.read_status is not None:
            response = _json({"error": {"type": "api_error", "message": "failing on purpose"}},
                             self.read_status)
        elif request.method == "GET" and request.path.startswith("/v1/checkout/sessions/"):
            session = self.sessions.get(request.path.rsplit("/", 1)[1])
            response = (_json(session) if session else
                        _json({"error": {"type": "invalid_request_error",
                                         "message": "No such checkout session"}}, 404))
        else:
            response = _json({"error": {"type": "invalid_request_error",
                                        "message": "not faked"}}, 404)
        return response(environ, start_response)

    def _create(self, form: dict[str, str]) -> Response:
        session_id = f"cs_test_{secrets.token_hex(12)}"
        session = {
            "id": session_id,
            "object": "checkout.session",
            "url": f"https://checkout.stripe.test/c/pay/{session_id}",
            "status": "open",
            "payment_status": "unpaid",
            "mode": form.get("mode"),
            "amount_total": int(form["line_items[0][price_data][unit_amount]"]),
            "currency": form["line_items[0][price_data][currency]"],
            "client_reference_id": form.get("client_reference_id"),
            "customer_email": form.get("customer_email"),
            "metadata": {"order_id": form.get("metadata[order_id]"),
                         "product": form.get("metadata[product]")},
            "payment_intent": None,
            "success_url": form.get("success_url"),
            "cancel_url": form.get("cancel_url"),
        }
        self.sessions[session_id] = session
        return _json(session)


def _json(body: Any, status: int = 200) -> Response:
    return Response(json.dumps(body), status=status, mimetype="application/json")
