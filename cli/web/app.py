"""The ASGI app ``saejobs serve`` runs (Starlette, Jinja2; uvicorn serves it). Pages are read-only but for
cancel and retry, which take a per-process form token (no other site can post them). Bound beyond the
loopback interface, every request needs the access token (``?token=`` once: it becomes a cookie). Every
response forbids anything from elsewhere (CSP) and every text is escaped (Jinja autoescape)."""

from __future__ import annotations

import hmac
import secrets
from pathlib import Path
from urllib.parse import parse_qs

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.middleware import Middleware
from starlette.middleware.base import BaseHTTPMiddleware
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, RedirectResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.templating import Jinja2Templates

from saejobs.engine.errors import NotFoundError, SaejobsError
from saejobs.cli.web import pages
from saejobs.tasks.neuronpedia import loopback

HERE = Path(__file__).parent
CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
       "form-action 'self'; base-uri 'none'; frame-ancestors 'none'")
COOKIE = "saejobs_token"


class Guard(BaseHTTPMiddleware):
    """The access token where one is set, and the security headers on every response."""

    def __init__(self, app, token: str | None):
        super().__init__(app)
        self.token = token

    async def dispatch(self, request: Request, call_next):
        if self.token is None and not loopback(request.url.hostname or ""):
            # no token: only pages asked for by this machine's name, so a page elsewhere cannot rebind its DNS name to
            # 127.0.0.1 and read these pages (or their form token) as its own origin
            return _headed(PlainTextResponse("saejobs serve: unexpected Host header", status_code=400))
        if self.token is not None:
            given = request.query_params.get("token")
            if given is not None and hmac.compare_digest(given, self.token):  # once: a cookie from now on
                resp: Response = RedirectResponse(request.url.remove_query_params("token"), status_code=303)
                resp.set_cookie(COOKIE, self.token, httponly=True, samesite="strict")
                return _headed(resp)
            bearer = request.headers.get("authorization", "").removeprefix("Bearer ")
            if not any(hmac.compare_digest(t, self.token) for t in (request.cookies.get(COOKIE, ""), bearer) if t):
                return _headed(PlainTextResponse("saejobs serve: this server needs its access token (?token=...)",
                                                 status_code=401))
        return _headed(await call_next(request))


def _headed(resp: Response) -> Response:
    resp.headers.update({"Content-Security-Policy": CSP, "X-Content-Type-Options": "nosniff",
                         "Referrer-Policy": "no-referrer", "X-Frame-Options": "DENY"})
    return resp


def create_app(token: str | None = None) -> Starlette:
    """``token``: required on every request when given (``serve`` gives one whenever it binds beyond loopback)."""
    templates = Jinja2Templates(directory=HERE / "templates")
    env = templates.env
    env.globals.update(url=server_url, fmt=fmt, static=False)
    form_token = secrets.token_urlsafe(24)  # what cancel/retry forms carry; unknown to any other site

    def page(name: str, request: Request, status: int = 200, **ctx) -> Response:
        return templates.TemplateResponse(request, name, {"form_token": form_token, **ctx}, status_code=status)

    def guarded(fn):
        """A view run in Starlette's thread pool (the database calls block), its errors as a page."""
        def view(request: Request) -> Response:
            try:
                return fn(request)
            except NotFoundError as e:
                return page("error.html", request, message=str(e).splitlines()[0], status=404)
            except SaejobsError as e:
                return page("error.html", request, message=str(e).splitlines()[0], status=e_status(e))
        return view

    def index(request):
        return page("jobs.html", request, **pages.job_list())

    def job(request):
        return page("job.html", request, **pages.job_page(request.path_params["job"]))

    def sweep(request):
        q = request.query_params
        return page("sweep.html", request, **pages.sweep_page(request.path_params["job"], _int(q.get("group")),
                                                            _int(q.get("cols"))))

    def generation(request):
        return page("generation.html", request, **pages.generation_page(request.path_params["gen"]))

    def compare(request):
        a, b = request.query_params.get("a", ""), request.query_params.get("b", "")
        return page("compare.html", request, result=pages.compare_page(a, b))

    def neuronpedia(request):
        return page("neuronpedia.html", request, result=pages.neuronpedia_page(request.path_params["job"]),
                    job=request.path_params["job"])

    def api_jobs(request):
        ids = [i for i in request.query_params.get("ids", "").split(",") if i]
        from saejobs.db import jobs

        found = [jobs.get(i) for i in ids] if ids else jobs.listing(limit=pages.JOBS_SHOWN)
        return JSONResponse([{k: d[k] for k in ("id", "state", "progress", "message", "summary", "cancellable",
                                                "retryable")} for d in map(pages.job_dict, found)])

    async def act(request):
        form = parse_qs((await request.body()).decode("utf-8", "replace"))  # a urlencoded form; no multipart parser
        if not hmac.compare_digest((form.get("form_token") or [""])[0], form_token):
            return PlainTextResponse("saejobs serve: this form is not from this server", status_code=403)
        return await run_in_threadpool(guarded(_act), request)

    def _act(request):
        from saejobs.db import jobs

        ref, action = request.path_params["job"], request.path_params["action"]
        if action == "cancel":
            jobs.cancel(ref)
        elif action == "retry":
            from saejobs.tasks.submit import dispatch

            job = jobs.get(ref)
            dispatch(job.id, jobs.reset_for_retry(job.id))
        else:
            raise NotFoundError(f"no action '{action}'")
        return RedirectResponse(server_url("job", job=ref), status_code=303)

    routes = [Route("/", guarded(index)), Route("/jobs/{job}", guarded(job)),
              Route("/jobs/{job}/{action}", act, methods=["POST"]),
              Route("/sweeps/{job}", guarded(sweep)), Route("/sweeps/{job}/neuronpedia", guarded(neuronpedia)),
              Route("/generations/{gen:int}", guarded(generation)), Route("/compare", guarded(compare)),
              Route("/api/jobs", guarded(api_jobs)), Mount("/static", StaticFiles(directory=HERE / "static"))]
    return Starlette(routes=routes, middleware=[Middleware(Guard, token=token)])


def e_status(e: SaejobsError) -> int:
    return 400 if getattr(e, "exit_code", 1) == 2 else 409


def _int(v: str | None) -> int:
    try:
        return int(v or 0)
    except ValueError:
        return 0


def server_url(name: str, **kw) -> str:
    """Every link a page makes, by name: the server's paths (the static export maps the same names to files)."""
    match name:
        case "index":
            return "/"
        case "job":
            return f"/jobs/{kw['job']}"
        case "sweep":
            extra = "&".join(f"{k}={kw[k]}" for k in ("group", "cols") if kw.get(k))
            return f"/sweeps/{kw['job']}" + (f"?{extra}" if extra else "")
        case "generation":
            return f"/generations/{kw['gen']}"
        case "neuronpedia":
            return f"/sweeps/{kw['job']}/neuronpedia"
        case "compare":
            return f"/compare?a={kw['a']}&b={kw['b']}"
        case "static":
            return f"/static/{kw['file']}"
    raise KeyError(name)


def fmt(v, digits: int = 3) -> str:
    """A score for people: None as "–", floats to ``digits`` significant digits."""
    if v is None:
        return "–"
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, float):
        return f"{v:.{digits}g}"
    return str(v)
