"""The baseline of benchmark 1: a bare WSGI "hello" that make bench runs in the
app's own image, with the app's gunicorn.conf.py and environment, behind the
same nginx. What the shop's pages cost beyond it is the shop's own work."""

BODY = b"Hello, world!\n"


def app(environ, start_response):
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(BODY)))])
    return [BODY]
