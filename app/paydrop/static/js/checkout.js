/*
 * The card form on a product page ("finalize payments on the server").
 *
 * 0. Ask our server for a CSRF token (the page carries none, so it can be
 *    cached and shared), once.
 * 1. Ask our server for a SetupIntent and let Stripe.js collect the card with
 *    confirmCardSetup: Stripe creates the PaymentMethod (and runs 3-D Secure
 *    if the card wants it). Card numbers never touch our server.
 * 2. Send the SetupIntent id to our server, which charges the price it keeps
 *    in its own database (the page never sends an amount).
 * 3. If the bank asks for authentication, finish it with confirmCardPayment and
 *    let the server check the result.
 *
 * Only the server knows whether money was taken. When its answer is not a
 * definite one (a 504 from the load balancer, a lost connection, "unknown"),
 * the page says so and keeps the SetupIntent: pressing Pay again posts the
 * same one, which resumes the same order and cannot charge twice.
 */
(function () {
  "use strict";

  var form = document.getElementById("payment-form");
  if (!form) { return; }
  var button = document.getElementById("pay-button");
  var errorBox = document.getElementById("payment-error");
  var emailInput = document.getElementById("email");
  // Fetched when the buyer first pays: the page itself carries no token, so
  // the load balancer can hand the same page to every visitor.
  var csrfToken = null;
  // The SetupIntent of a payment whose outcome we do not know yet.
  var unsettledSetupIntent = null;
  var UNKNOWN = "We did not get an answer about your payment, so it may have gone through. " +
    "Check your e-mail or 'My orders' before paying again; pressing Pay again continues " +
    "the same order and cannot charge you twice.";

  function showError(message, orderUrl) {
    errorBox.textContent = message;
    if (orderUrl) {
      var link = document.createElement("a");
      link.href = orderUrl;
      link.textContent = " See the order.";
      errorBox.appendChild(link);
    }
    errorBox.hidden = false;
    errorBox.focus();
  }

  if (typeof Stripe === "undefined") {
    showError("Card payments are unavailable right now. Please try again later.");
    button.disabled = true;
    return;
  }

  var stripe = Stripe(form.dataset.publishableKey);
  var card = stripe.elements().create("card");
  card.mount("#card-element");

  async function fetchCsrfToken() {
    var response = await fetch(form.dataset.csrfUrl, {
      credentials: "same-origin",
      cache: "no-store",
      headers: { "Accept": "application/json" }
    });
    var data = await response.json();
    if (!response.ok || !data.csrf_token) { throw new Error("no CSRF token"); }
    return data.csrf_token;
  }

  async function post(url, body) {
    if (!csrfToken) { csrfToken = await fetchCsrfToken(); }
    return fetch(url, {
      method: "POST",
      credentials: "same-origin",
      headers: {
        "Content-Type": "application/json",
        "Accept": "application/json",
        "X-CSRFToken": csrfToken
      },
      body: JSON.stringify(body)
    }).then(function (response) {
      return response.json().catch(function () { return {}; }).then(function (data) {
        return { ok: response.ok, status: response.status, data: data };
      });
    });
  }

  async function pay() {
    if (emailInput && !emailInput.checkValidity()) {
      showError("Enter a valid e-mail address for your receipt.");
      return;
    }
    if (!unsettledSetupIntent) {
      var setup = await post(form.dataset.setupUrl, {});
      if (!setup.ok) {
        showError(setup.data.error || "The payment could not be started. Please try again.");
        return;
      }
      var confirmed = await stripe.confirmCardSetup(setup.data.client_secret, {
        payment_method: { card: card }
      });
      if (!confirmed || confirmed.error) {
        showError((confirmed && confirmed.error && confirmed.error.message) ||
                  "Your card was not accepted. Check the details and try again.");
        return;
      }
      unsettledSetupIntent = confirmed.setupIntent.id;
    }
    var body = { setup_intent_id: unsettledSetupIntent };
    if (emailInput) { body.email = emailInput.value; }
    var result = await post(form.dataset.payUrl, body);
    if (result.ok && result.data.status === "requires_action") {
      // The server re-checks the PaymentIntent whatever Stripe.js reports here.
      await stripe.confirmCardPayment(result.data.client_secret);
      result = await post(result.data.confirm_url, {});
    }
    if (result.ok && result.data.redirect) {
      unsettledSetupIntent = null;
      window.location.assign(result.data.redirect);
      return;
    }
    if (result.status >= 400 && result.status < 500) {
      // A definite answer: this attempt is over (the server says whether anything was charged).
      unsettledSetupIntent = null;
      showError(result.data.error || "The payment did not go through.", result.data.order_url);
      return;
    }
    showError(result.data.error || UNKNOWN, result.data.order_url);
  }

  form.addEventListener("submit", function (event) {
    event.preventDefault();
    errorBox.hidden = true;
    button.disabled = true;
    button.setAttribute("aria-busy", "true");
    pay().catch(function () {
      showError(unsettledSetupIntent ? UNKNOWN :
                "We could not reach the server. Check your connection and try again.");
    }).finally(function () {
      button.disabled = false;
      button.removeAttribute("aria-busy");
    });
  });
}());
