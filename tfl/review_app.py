"""`tfl review`'s local web app (Flask, the optional extra tfl[review]): the page, the photos of the queue only, and
the decisions, each written to review.csv before the answer; bound to 127.0.0.1."""

from __future__ import annotations

import threading
from importlib import resources
from urllib.parse import urlparse
from typing import Callable

from tfl.errors import TflError
from tfl.review import Review

HOST = "127.0.0.1"  # never another interface: the photos are the user's
LOCAL_NAMES = ("127.0.0.1", "localhost")  # the Host a request may name (another is DNS rebinding: refused)


def flask_module():
    try:
        import flask
    except ImportError:
        raise TflError("tfl review needs Flask, an optional part of tfl: pip install 'tfl[review]'.") from None
    return flask


def create_app(review: Review):
    """The app: GET / (the page), /api/state, /photo/N and /heatmap/N (the N-th photo of the queue: nothing else is
    served, so no path reaches another file), POST /api/decide {position, decision, label} and /api/undo (JSON
    bodies only, from the page's own origin: another site's page cannot post one without the browser asking)."""
    flask = flask_module()
    from werkzeug.exceptions import HTTPException

    app = flask.Flask("tfl.review")
    app.json.sort_keys = False
    lock = threading.Lock()  # one decision at a time: each rewrites review.csv whole

    @app.before_request
    def same_machine_and_page():
        request = flask.request
        if request.host.rsplit(":", 1)[0] not in LOCAL_NAMES:
            flask.abort(403, "this server answers requests for 127.0.0.1 only")
        origin = request.headers.get("Origin")
        if request.method == "POST" and (not request.is_json or origin and urlparse(origin).netloc != request.host):
            flask.abort(403, "decisions come from the review page itself, as JSON")

    @app.after_request
    def no_guessing(response):
        response.headers["X-Content-Type-Options"] = "nosniff"
        response.headers["Cache-Control"] = "no-store"  # position N is another photo in another queue
        return response

    @app.get("/")
    def page():
        html = resources.files("tfl").joinpath("review.html").read_text(encoding="utf-8")
        return flask.Response(html, mimetype="text/html")

    @app.get("/api/state")
    def state():
        with lock:
            return review.state()

    def queued(position: int):
        if not 0 <= position < len(review.queue):
            flask.abort(404, f"no photo at position {position}")
        return review.queue[position]

    @app.get("/photo/<int:position>")
    def photo(position: int):
        item = queued(position)
        return flask.send_file(item.shown or item.path)

    @app.get("/heatmap/<int:position>")
    def heatmap(position: int):
        item = queued(position)
        if item.heatmap is None:
            flask.abort(404, "this photo has no heatmap")
        return flask.send_file(item.heatmap)

    @app.post("/api/decide")
    def decide():
        body = flask.request.get_json(silent=True)
        if not isinstance(body, dict) or not isinstance(body.get("position"), int) \
                or not isinstance(body.get("decision"), str) or not isinstance(body.get("label", ""), str):
            flask.abort(400, "send JSON: {\"position\": N, \"decision\": \"keep|relabel|exclude|label\", "
                             "\"label\": \"class\"}")
        with lock:
            try:
                made = review.decide(body["position"], body["decision"], body.get("label", ""))
            except ValueError as error:
                flask.abort(400, str(error))
            return {"decided": {"decision": made.decision, "label": made.label}, "done": len(review.decided),
                    "next": review.first_undecided()}

    @app.post("/api/undo")
    def undo():
        with lock:
            position = review.undo()
            return {"position": position, "done": len(review.decided)}

    @app.errorhandler(HTTPException)
    def http_error(error):
        return flask.jsonify(error=error.description), error.code

    @app.errorhandler(Exception)
    def any_error(error):  # never a traceback to the page; the terminal says what failed
        app.logger.error("tfl review: %s: %s", type(error).__name__, error)
        return flask.jsonify(error=f"{type(error).__name__}: {error}"), 500

    return app


def serve(review: Review, port: int = 0, open_browser: bool = True, echo: Callable[[str], None] = print) -> None:
    """Serve the review on 127.0.0.1 (`port` 0: a free one) until Ctrl-C, one server per run; print the URL, open it
    in the browser."""
    from werkzeug.serving import make_server

    from tfl.runs import review_lock

    with review_lock(review.run.path):
        try:
            server = make_server(HOST, port, create_app(review), threaded=True)
        except OSError as error:
            raise TflError(f"tfl review could not listen on {HOST}:{port} ({error.strerror}). Pass another --port, "
                           "or leave it out for a free one.") from None
        run_server(server, review, open_browser, echo)


def run_server(server, review: Review, open_browser: bool, echo: Callable[[str], None]) -> None:
    import logging

    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # no line per request
    url = f"http://{HOST}:{server.server_port}/"
    echo(f"Reviewing {len(review.queue)} photo(s) of {review.run.name} ({len(review.decided)} decided): {url}\n"
         f"Each decision is saved to {review.file} at once; Ctrl-C stops the server. Then: "
         f"tfl finetune --data DATA --corrections {review.file}")
    if open_browser:  # from a thread: a text-mode browser in the terminal would hold the server back
        import webbrowser

        threading.Thread(target=webbrowser.open, args=(url,), daemon=True).start()
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        echo("Stopped; every decision is in the review file.")
    finally:
        server.server_close()
