"""`archsae serve`: the concept explorer, a Flask app over one run directory (see RunView).

Pages: models (Table 1, stability per pair of runs, the verdict, figures), a model's concepts (paginated,
searchable, sortable), a concept, an image (its token grid and its decomposition into concepts), an uploaded
image, the classifier's classes and one class. Thumbnails with heatmaps are JPEG routes drawn on demand.
"""

from __future__ import annotations

import base64
import io
import math
import threading
from pathlib import Path

import numpy as np
import torch
from flask import Flask, Response, abort, redirect, render_template, request, send_from_directory, url_for
from jinja2 import ChoiceLoader, PackageLoader

from ..data import load_image
from ..errors import ArchsaeError
from ..report.gallery import DENSE, colour_scale
from ..report.html import METRICS, format_metric, verdict_rows
from .run import NEAR_DUPLICATE, RunView, jpeg, overlay
from .stats import QUANTILES, TOP

PAGE = 50  # concepts per page
SORTS = {"id": "concept", "freq": "frequency", "peak": "peak activation", "purity": "label purity",
         "ood": "OOD", "stability": "stability", "class": "class alignment"}
MAX_UPLOAD = 20 * 2**20  # bytes
TOKEN_CONCEPTS = 12  # concepts listed for a clicked token (its largest)


def create_app(run: RunView) -> Flask:
    """The explorer's Flask app over `run` (statistics are computed on first use; `serve` computes them all
    before it serves its first page)."""
    app = Flask(__name__)
    # The explorer's templates, then the report's (the verdict table is one template, shown by both).
    app.jinja_loader = ChoiceLoader([app.jinja_loader, PackageLoader("archsae", "report/templates")])
    app.config["MAX_CONTENT_LENGTH"] = MAX_UPLOAD
    app.jinja_env.filters["metric"] = lambda value, key: format_metric(key, value)
    # Inlined, so the first paint waits for no request queued behind the page's heatmaps.
    app.jinja_env.globals["css"] = (Path(app.static_folder) / "explorer.css").read_text()
    default = next(iter(run.paths))  # the model a page shows when none is asked for
    app.jinja_env.globals.update(colour_scale=colour_scale(), run=run, near_duplicate=NEAR_DUPLICATE, dense=DENSE,
                                 default_model=default)

    def model_or_404(name: str) -> str:
        if name not in run.paths:
            abort(404, f"no model {name!r} in this run")
        return name

    @app.route("/")
    def models():
        return render_template("models.html.j2", columns=METRICS, rows=_table_rows(run),
                               verdicts=verdict_rows(run.root), figures=_figures(run))

    @app.route("/model/<path:name>/concepts")
    def concepts(name: str):
        stats = run.stats(model_or_404(name))
        q = request.args.get("q", "").strip()
        sort = request.args.get("sort", "freq")
        sort = sort if sort in SORTS else "freq"
        descending = request.args.get("order", "desc") != "asc"
        live = np.flatnonzero(stats.freq > 0)
        names = run.class_names
        if q:
            needle = q.lower()
            live = np.array([i for i in live if needle == str(i) or needle in stats.label[i].lower()
                             or (names and stats.head_class[i] >= 0 and needle in names[stats.head_class[i]].lower())],
                            dtype=np.int64)
        key = {"id": live.astype(np.float64), "freq": stats.freq[live], "peak": stats.peak[live],
               "purity": stats.purity[live], "ood": stats.ood[live], "stability": stats.stability[live],
               "class": stats.head_cos[live]}[sort]
        key = -key if descending else key  # ties keep concept order; concepts without a value go last
        live = live[np.argsort(np.nan_to_num(key, nan=np.inf), kind="stable")]
        pages = max(1, math.ceil(len(live) / PAGE))
        page = min(max(1, request.args.get("page", 1, type=int)), pages)
        rows = [_concept_row(run, name, int(i)) for i in live[(page - 1) * PAGE:page * PAGE]]
        return render_template("concepts.html.j2", name=name, rows=rows, q=q, sort=sort, sorts=SORTS,
                               descending=descending, page=page, pages=pages, n_found=len(live),
                               n_live=int((stats.freq > 0).sum()), k=len(stats.freq), top=TOP)

    @app.route("/model/<path:name>/concept/<int:concept>")
    def concept(name: str, concept: int):
        stats = run.stats(model_or_404(name))
        if not 0 <= concept < len(stats.freq):
            abort(404, f"{name} has concepts 0..{len(stats.freq) - 1}")
        peers = []
        for peer, (index, cos) in stats.matches.items():
            j = int(index[concept])
            if j >= 0:
                peers.append({"name": peer, "concept": j, "cos": float(cos[concept]),
                              "images": _images(run.stats(peer).top_images[j][:6])})
        return render_template("concept.html.j2", name=name, c=_concept_row(run, name, concept),
                               top=list(zip(_images(stats.top_images[concept]), stats.top_values[concept])),
                               quantiles=_quantiles(stats, concept),
                               hist=_histogram(stats, concept), peers=peers, anchors=_anchors(run, name, concept),
                               classes=_classes_of_atom(run, name, concept))

    @app.route("/images")
    def images():
        n = len(run.store.images)
        if n == 0:
            abort(404, "this store was imported from a matrix: it has no images")
        if request.args.get("i", "").strip():
            i = request.args.get("i", type=int)
            if i is None or not 0 <= i < n:
                abort(404, f"the store has images 0..{n - 1}")
            return redirect(url_for("image", image=i, model=model_or_404(request.args.get("model", default))))
        seed = request.args.get("seed", 0, type=int)
        picks = np.sort(np.random.default_rng(seed).choice(n, size=min(48, n), replace=False))
        return render_template("images.html.j2", name=model_or_404(request.args.get("model", default)), picks=picks.tolist(),
                               seed=seed, n=n)

    @app.route("/image/<int:image>")
    def image(image: int):
        if not 0 <= image < len(run.store.images):
            abort(404, f"the store has images 0..{len(run.store.images) - 1}")
        name = model_or_404(request.args.get("model", default))
        dec = run.decompose_stored(name, image)
        meta = run.store.images[image]
        return render_template("image.html.j2", name=name, title=f"image {image}", label=meta["label"],
                               photo=url_for("photo", image=image), image=image,
                               **_decomposition(run, name, dec, lambda c: url_for("heat", name=name, concept=c,
                                                                                  image=image, scale="image")))

    @app.route("/upload", methods=["POST"])
    def upload():
        name = model_or_404(request.form.get("model", default))
        file = request.files.get("image")
        if file is None or not file.filename:
            abort(400, "choose an image file to upload")
        try:
            picture = load_image(io.BytesIO(file.read()), name=file.filename)
        except ArchsaeError:
            abort(400, f"{file.filename} is not an image archsae can read: upload a JPEG, PNG or another image "
                       "format Pillow opens")
        try:
            acts, pos = run.tokens_of(picture)
        except ArchsaeError as e:
            abort(400, str(e))
        crop = run.view(picture)
        dec = run.decompose(name, acts, pos)
        grid = run.store.header["grid"]

        def heat(c: int) -> str:
            return _data_url(jpeg(overlay(crop, dec.codes_tk[:, c], dec.pos_t, grid, float(dec.codes_tk[:, c].max()))))

        return render_template("image.html.j2", name=name, title=f"uploaded: {file.filename}", label="",
                               photo=_data_url(jpeg(crop)), image=None, **_decomposition(run, name, dec, heat))

    @app.route("/classes")
    def classes():
        name = model_or_404(request.args.get("model", default))
        q = request.args.get("q", "").strip().lower()
        heads = run.heads[0]
        rows = []
        if heads is not None:
            best = run.class_cosines(name).max(0)
            rows = [{"index": c, "name": n, "best": float(best.values[c]), "concept": int(best.indices[c])}
                    for c, n in enumerate(run.class_names) if not q or q in n.lower()]
        return render_template("classes.html.j2", name=name, rows=rows, q=q, heads_from=run.heads[1])

    @app.route("/class/<int:index>")
    def class_page(index: int):
        name = model_or_404(request.args.get("model", default))
        if run.heads[0] is None or not 0 <= index < len(run.heads[0]):
            abort(404, "no such class in the classifier head")
        cos = run.class_cosines(name)[:, index]
        top = cos.topk(min(12, len(cos)))
        concepts = [{**_concept_row(run, name, int(i)), "cos": float(v),
                     "images": _images(run.stats(name).top_images[int(i)][:6])} for v, i in zip(top.values, top.indices)]
        return render_template("class.html.j2", name=name, index=index, class_name=run.class_names[index],
                               concepts=concepts)

    @app.route("/heat/<path:name>/<int:concept>/<int:image>.jpg")
    def heat(name: str, concept: int, image: int):
        stats = run.stats(model_or_404(name))
        if not (0 <= concept < len(stats.freq) and 0 <= image < len(run.store.images)):
            abort(404)
        if request.args.get("scale") == "image":  # to the concept's largest activation in this image
            vmax = float(run.decompose_stored(name, image).codes_tk[:, concept].max())
        else:  # to its peak over the store, so the images of one concept compare
            vmax = float(stats.peak[concept])
        return _jpeg_response(jpeg(run.heat(name, concept, image, vmax)))

    @app.route("/photo/<int:image>.jpg")
    def photo(image: int):
        if not 0 <= image < len(run.store.images):
            abort(404)
        return _jpeg_response(jpeg(run.crop(image)))

    @app.route("/figure/<path:file>")
    def figure(file: str):
        if not file.endswith(".png") or not file.startswith(("report/", "stability/", "benchmarks/")):
            abort(404)
        return send_from_directory(run.root.resolve(), file)

    @app.errorhandler(400)
    @app.errorhandler(404)
    def error(e):
        return render_template("error.html.j2", code=e.code, message=e.description), e.code

    return app


# ---- what the pages show --------------------------------------------------------------------------------
def _images(row) -> list[int]:
    return [int(i) for i in row if i >= 0]


def _quantiles(stats, i: int) -> list[tuple[str, list[tuple[int, float]]]]:
    """The quantile examples of concept i with their peaks, each image shown once on the page (top images
    included)."""
    seen, out = set(_images(stats.top_images[i])), []
    for level, row, values in zip(QUANTILES, stats.quantile_images[i], stats.quantile_values[i]):
        shown = [(int(im), float(v)) for im, v in zip(row, values) if im >= 0 and im not in seen]
        seen.update(im for im, _ in shown)
        out.append((f"around the {int(100 * level)}th percentile", shown))
    return out


def _concept_row(run: RunView, name: str, i: int) -> dict:
    s = run.stats(name)
    names = run.class_names
    return {"index": i, "label": s.label[i], "freq": float(s.freq[i]), "peak": float(s.peak[i]),
            "purity": float(s.purity[i]), "ood": float(s.ood[i]), "stability": float(s.stability[i]),
            "nearest": float(s.nearest[i]), "duplicate": bool(s.nearest[i] > NEAR_DUPLICATE),
            "class_index": int(s.head_class[i]), "class": names[s.head_class[i]] if s.head_class[i] >= 0 and names else "",
            "class_cos": float(s.head_cos[i]), "top": int(s.top_images[i][0])}


def _histogram(stats, i: int) -> dict:
    counts = stats.hist[i].astype(float)
    top = max(counts.max(), 1.0)
    return {"bars": [float(c / top) for c in counts], "counts": [int(c) for c in counts], "peak": float(stats.peak[i]),
            "tokens": stats.hist_tokens, "fired": int(counts.sum())}


def _anchors(run: RunView, name: str, i: int) -> list[dict]:
    """For an archetypal atom: the candidates carrying most of its W row, their weight, and the images of the
    tokens nearest each candidate."""
    stats = run.stats(name)
    if stats.candidate_images is None:
        return []
    dictionary = run.model(name).dictionary
    weights = dictionary.weights[i].detach()  # row i of W, over its support (or over all of C)
    columns = dictionary.support[i] if dictionary.support is not None else torch.arange(len(weights))
    top = weights.topk(min(4, len(weights)))
    return [{"candidate": int(columns[j]), "weight": float(w),
             "images": list(dict.fromkeys(_images(stats.candidate_images[columns[j]])))[:4]}
            for w, j in zip(top.values, top.indices) if w > 0]


def _classes_of_atom(run: RunView, name: str, i: int) -> list[dict]:
    if run.heads[0] is None:
        return []
    cos = run.class_cosines(name)[i]
    top = cos.topk(min(5, len(cos)))
    return [{"index": int(c), "name": run.class_names[int(c)], "cos": float(v)} for v, c in zip(top.values, top.indices)]


def _decomposition(run: RunView, name: str, dec, heat_url) -> dict:
    """The image page's data: the token grid with each token's concepts, and the concepts by share."""
    grid = run.store.header["grid"]
    tokens = []
    for t, pos in enumerate(dec.pos_t):
        if pos < 0:
            continue
        z = dec.codes_tk[t]
        active = np.flatnonzero(z > 0)
        shown = active[np.argsort(-z[active])][:TOKEN_CONCEPTS]
        tokens.append({"pos": int(pos), "row": int(pos) // grid[1], "col": int(pos) % grid[1], "active": len(active),
                       "concepts": [[int(c), round(float(z[c]), 3)] for c in shown]})
    order = np.argsort(-dec.share_k)[:20]
    stats = run.stats(name)
    parts = [{"index": int(c), "share": float(dec.share_k[c]), "label": stats.label[c], "heat": heat_url(int(c))}
             for c in order if dec.share_k[c] > 0]
    return {"grid": grid, "tokens": tokens, "parts": parts, "explained": float(dec.share_k[order].sum())}


def _table_rows(run: RunView) -> list[dict]:
    """Table 1: per group, its mean row, then its runs (metrics.json)."""
    if not run.metrics:
        return []
    models, rows = run.metrics["models"], []
    for group, g in run.metrics["groups"].items():
        values = {}
        for key, *_ in METRICS:
            if key in ("stability", "mmcs", "max_cosine"):
                values[key] = g.get(key)
            else:
                vals = [models[n][key] for n in g["runs"] if models[n].get(key) is not None]
                values[key] = sum(vals) / len(vals) if vals else None
        rows.append({"name": f"{group} (mean of {len(g['runs'])})", "group": True, "values": values, "link": None})
        rows += [{"name": n, "group": False, "values": models[n], "link": f"models/{n}"} for n in g["runs"]]
    return rows


def _figures(run: RunView) -> list[tuple[str, str]]:
    found = [("Stability against R² (Fig. 3)", "report/tradeoff.png")]
    found += [(p.stem.replace("_", " "), f"stability/{p.name}") for p in sorted((run.root / "stability").glob("*.png"))]
    return [(title, f) for title, f in found if (run.root / f).exists()]


def _data_url(jpeg_bytes: bytes) -> str:
    return "data:image/jpeg;base64," + base64.b64encode(jpeg_bytes).decode()


def _jpeg_response(jpeg_bytes: bytes):
    return Response(jpeg_bytes, mimetype="image/jpeg", headers={"Cache-Control": "max-age=3600"})


def _warm(run: RunView) -> None:
    """Load the backbone before the first upload asks for it (an imported store has none: uploads say so)."""
    try:
        run.backbone
    except ArchsaeError:
        pass


def serve(run_dir: str | Path, host: str = "127.0.0.1", port: int = 8000, echo=print) -> None:
    """Take the port, compute every model's concept statistics (cached), then serve the explorer until
    interrupted, telling `echo` what it does and its URL. Raises ArchsaeError for a run directory without store
    or models, or a port out of range or taken."""
    from werkzeug.serving import make_server

    if not 0 <= port <= 65535:
        raise ArchsaeError(f"--port must be in 0-65535 (0 = any free port), got {port}")
    run = RunView(run_dir)
    try:  # the port first: a taken one is said before minutes of statistics, not after
        server = make_server(host, port, create_app(run), threaded=True)
    except (OSError, SystemExit):  # werkzeug explains a taken port, then exits
        raise ArchsaeError(f"cannot listen on {host}:{port}; choose another --port") from None
    echo(f"{len(run.paths)} models; their per-concept statistics are cached in {run.root / 'explorer' / 'stats'} "
         "(computed once: a pass over the store per model)")
    try:
        run.prepare()
        threading.Thread(target=_warm, args=(run,), daemon=True).start()
        echo(f"archsae explorer on http://{host}:{server.server_port}/ (Ctrl-C to stop)")
        try:
            server.serve_forever()
        except KeyboardInterrupt:  # the way to stop serving, not an interruption
            pass
    finally:  # also when the statistics fail or are interrupted: the port is free again
        server.server_close()
