"""Regenerate the README/notebook diagrams in this folder.

Uses matplotlib only (no graphviz), so it runs anywhere the notebooks run, CI included:

    python imgs/make_diagrams.py [OUTPUT_DIR]

Output is deterministic: no timestamps or software tag in the PNGs, bundled DejaVu fonts.
"""

import sys
from dataclasses import dataclass
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # headless: CI has no display

import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.patches import FancyArrowPatch, FancyBboxPatch  # noqa: E402

# 8 in x 200 dpi = 1600 px wide: sharp when GitHub scales it to ~850 px.
WIDTH = 16  # data units across; 1 unit = 0.5 in, so sizes below are in half-inches
DPI = 200

# kind -> (fill, edge); text labels carry the meaning, colours only group it.
PALETTE = {
    "phase": ("#f1f5f9", "#475569"),
    "data": ("#dbeafe", "#1d4ed8"),
    "job": ("#ffedd5", "#c2410c"),
    "model": ("#dcfce7", "#15803d"),
    "user": ("#f3e8ff", "#7e22ce"),
    "stream": ("#ccfbf1", "#0f766e"),
}
INK = "#1e293b"
MUTED = "#475569"
TITLE_PT, LABEL_PT, DETAIL_PT, CODE_PT = 15, 11.5, 10, 10
LINE = 1.25 / 36  # text line height in data units per point (36 pt = 1 unit)

STYLE = {
    "font.family": "DejaVu Sans",  # ships with matplotlib: same glyphs on every machine
    "font.monospace": ["DejaVu Sans Mono"],
    "text.color": INK,
    "figure.facecolor": "white",
}


@dataclass
class Box:
    x: float  # centre
    y: float
    w: float
    h: float

    # Anchor points for arrows.
    @property
    def left(self):
        return (self.x - self.w / 2, self.y)

    @property
    def right(self):
        return (self.x + self.w / 2, self.y)

    @property
    def top(self):
        return (self.x, self.y + self.h / 2)

    @property
    def bottom(self):
        return (self.x, self.y - self.h / 2)


def canvas(height):
    """A white figure whose data units are half-inches, origin bottom-left."""
    fig = plt.figure(figsize=(WIDTH / 2, height / 2), dpi=DPI)
    ax = fig.add_axes((0, 0, 1, 1))
    ax.set_xlim(0, WIDTH)
    ax.set_ylim(0, height)
    ax.set_axis_off()
    return fig, ax


def title(ax, text):
    ax.text(0.35, ax.get_ylim()[1] - 0.3, text, fontsize=TITLE_PT, fontweight="bold", va="top")


def box(ax, x, y, w, h, label, detail=None, kind="phase", dashed=False, mono=False):
    """Rounded box centred on (x, y): bold label, optional smaller detail lines below it."""
    fill, edge = PALETTE[kind]
    ax.add_patch(
        FancyBboxPatch(
            (x - w / 2, y - h / 2),
            w,
            h,
            boxstyle="round,pad=0,rounding_size=0.22",
            facecolor=fill,
            edgecolor=edge,
            linewidth=1.6,
            linestyle=(0, (4, 2.5)) if dashed else "solid",
        )
    )
    # Stack label and detail as one block centred vertically in the box.
    label_h = (label.count("\n") + 1) * LABEL_PT * LINE
    detail_h = (detail.count("\n") + 1) * DETAIL_PT * LINE + 0.08 if detail else 0
    top = y + (label_h + detail_h) / 2
    ax.text(x, top, label, fontsize=LABEL_PT, fontweight="bold", ha="center", va="top", linespacing=1.15)
    if detail:
        ax.text(
            x,
            top - label_h - 0.08,
            detail,
            fontsize=DETAIL_PT,
            color=MUTED,
            ha="center",
            va="top",
            linespacing=1.15,
            family="monospace" if mono else None,
        )
    return Box(x, y, w, h)


def arrow(ax, start, end, label=None, label_offset=(0, 0.3), mono=False, shrink_start=3):
    """Arrow from start to end; optional label near its middle, on a white patch."""
    ax.add_patch(
        FancyArrowPatch(
            start,
            end,
            arrowstyle="-|>",
            mutation_scale=16,
            linewidth=1.6,
            color=MUTED,
            shrinkA=shrink_start,
            shrinkB=3,
        )
    )
    if label:
        mx = (start[0] + end[0]) / 2 + label_offset[0]
        my = (start[1] + end[1]) / 2 + label_offset[1]
        ax.text(
            mx,
            my,
            label,
            fontsize=CODE_PT if mono else DETAIL_PT,
            color=INK,
            ha="center",
            va="center",
            linespacing=1.2,
            family="monospace" if mono else None,
            bbox=dict(boxstyle="round,pad=0.25", facecolor="white", edgecolor="none"),
        )


def line(ax, points):
    """Plain connector (no head), for the fan-out bus in deploy.png."""
    xs, ys = zip(*points)
    ax.plot(xs, ys, color=MUTED, linewidth=1.6, solid_joinstyle="miter")


def save(fig, path):
    # No "Software" tag and Pillow writes no timestamp: same bytes on every run.
    fig.savefig(path, dpi=DPI, facecolor="white", metadata={"Software": None}, pil_kwargs={"optimize": True})
    plt.close(fig)


# --- the five diagrams ---------------------------------------------------------------------


def deploy(path):
    fig, ax = canvas(9.0)
    title(ax, "Three ways to deploy a model")
    y = 6.85
    design = box(ax, 2.7, y, 4.2, 1.35, "Design", "problem, data, metric")
    train = box(ax, 8, y, 4.2, 1.35, "Train", "experiments, model")
    operate = box(ax, 13.3, y, 4.2, 1.35, "Operate", "deploy, monitor")
    arrow(ax, design.right, train.left)
    arrow(ax, train.right, operate.left)

    # Operate fans out to the three lanes through one bus line.
    lanes_x, bus_y, lane_y, lane_h = (2.7, 8, 13.3), 5.3, 2.35, 3.9
    line(ax, [operate.bottom, (operate.x, bus_y), (lanes_x[0], bus_y)])
    lanes = [
        ("Batch", "offline", "job", "scoring job\non a schedule", "DB → job → DB"),
        ("Web service", "online, 1-to-1", "model", "request / response", "app ⇄ service"),
        ("Streaming", "online, 1-to-many", "stream", "events on a stream", "events → stream\n→ consumers"),
    ]
    for x, (name, mode, kind, what, flow) in zip(lanes_x, lanes):
        lane = box(ax, x, lane_y, 4.6, lane_h, f"{name}\n({mode})", f"{what}\n\n{flow}", kind=kind)
        arrow(ax, (x, bus_y), lane.top, shrink_start=0)
    save(fig, path)


def scoring_job(path):
    fig, ax = canvas(7.6)
    title(ax, "Batch: a scheduled scoring job")
    y = 2.0
    rides = box(ax, 2.35, y, 4.1, 1.8, "TLC trips", "last month\n(database / bucket)", "data")
    job = box(ax, 8, y, 4.1, 1.8, "scoring job", "reads, predicts,\nwrites", "job")
    preds = box(ax, 13.65, y, 4.1, 1.8, "predictions", "parquet / S3", "data")
    cron = box(ax, 4.6, 5.1, 3.8, 1.5, "scheduler", "every month (cron)", "phase")
    model = box(ax, 11.4, 5.1, 3.8, 1.5, "ride duration", "model", "model")
    arrow(ax, rides.right, job.left, "reads")
    arrow(ax, job.right, preds.left, "writes")
    arrow(ax, cron.bottom, (job.x - 1.0, job.top[1]), "triggers", label_offset=(-1.15, 0))
    arrow(ax, model.bottom, (job.x + 1.0, job.top[1]), "loads", label_offset=(0.95, 0))
    save(fig, path)


def marketing_example(path):
    fig, ax = canvas(4.8)
    title(ax, "Batch example: churn offers")
    y, w, h = 1.95, 3.45, 2.2
    xs = (1.95, 6.0, 10.05, 14.1)
    rides = box(ax, xs[0], y, w, h, "rides", "last month", "data")
    job = box(ax, xs[1], y, w, h, "scoring job", "churn model,\nmonthly", "job")
    churn = box(ax, xs[2], y, w, h, "likely churners", "riders likely to churn\nto ride-hailing apps", "data")
    offer = box(ax, xs[3], y, w, h, "marketing", "send an offer", "user")
    arrow(ax, rides.right, job.left)
    arrow(ax, job.right, churn.left)
    arrow(ax, churn.right, offer.left)
    save(fig, path)


def web_service(path):
    fig, ax = canvas(7.8)
    title(ax, "Web service: one request, one prediction")
    app = box(ax, 2.3, 3.3, 3.8, 2.4, "taxi app", "(user)", "user")
    # Service drawn as an outer box with the model inside it.
    svc = box(ax, 12.9, 3.3, 5.6, 5.0, "", kind="phase")
    ax.text(svc.x, svc.y + 2.1, "ride duration service", fontsize=LABEL_PT, fontweight="bold", ha="center", va="top")
    ax.text(svc.x, svc.y + 1.55, "Flask + gunicorn", fontsize=DETAIL_PT, color=MUTED, ha="center", va="top")
    box(ax, svc.x, svc.y - 0.55, 3.6, 1.6, "model", "predict(ride)", "model", mono=True)

    request = '{"PULocationID": 130,\n "DOLocationID": 205,\n "trip_distance": 3.66}'
    arrow(ax, (app.right[0], app.y + 0.85), (svc.left[0], app.y + 0.85), request, label_offset=(0, 0.95), mono=True)
    arrow(
        ax,
        (svc.left[0], app.y - 0.85),
        (app.right[0], app.y - 0.85),
        '{"duration": 12.3}  # minutes',
        label_offset=(0, -0.45),
        mono=True,
    )
    for dy, word in ((0.45, "request"), (-0.45, "response")):
        ax.text(
            (app.right[0] + svc.left[0]) / 2,
            app.y + dy,
            word,
            fontsize=DETAIL_PT,
            color=MUTED,
            ha="center",
            va="center",
        )
    save(fig, path)


def streaming(path):
    fig, ax = canvas(8.4)
    title(ax, "Streaming: one event, many consumers")
    rows = (5.7, 3.45, 1.2)
    producer = box(ax, 1.75, rows[1], 3.0, 1.9, "producer", "taxi app\nbackend", "user")
    events = box(ax, 5.95, rows[1], 3.0, 1.9, "ride_events", "Kinesis stream", "stream")
    arrow(ax, producer.right, events.left, "put")
    consumers = [
        ("duration model", "Lambda", "ride_predictions", False),
        ("tip model", "Lambda", "tip_predictions", False),
        ("fraud / other", "more consumers", "…", True),
    ]
    for y, (name, runtime, out, more) in zip(rows, consumers):
        # Dashed row: "and so on", any number of further consumers.
        c = box(ax, 9.85, y, 3.3, 1.6, name, runtime, "model", dashed=more)
        o = box(ax, 13.95, y, 3.5, 1.6, out, "its own stream" if more else "stream", "stream", dashed=more)
        arrow(ax, events.right, c.left)
        arrow(ax, c.right, o.left)
    save(fig, path)


DIAGRAMS = {
    "deploy.png": deploy,
    "scoring_job.png": scoring_job,
    "marketing_example.png": marketing_example,
    "web_service.png": web_service,
    "streaming.png": streaming,
}


def main(argv=None):
    args = sys.argv[1:] if argv is None else argv
    out = Path(args[0]) if args else Path(__file__).resolve().parent
    out.mkdir(parents=True, exist_ok=True)
    with matplotlib.rc_context(STYLE):
        for name, draw in DIAGRAMS.items():
            draw(out / name)
            print(out / name)


if __name__ == "__main__":
    main()
