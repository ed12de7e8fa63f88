"""The report as one self-contained HTML page: inline CSS, inline SVG, a few lines of script.

Every piece of user text (problem, metric and optimizer names, the command,
the store URL) goes through :func:`html.escape`. A Content-Security-Policy
forbids the page any network request.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from html import escape

from adaptim.lab.protocol import MAX_REACH_DECADES
from adaptim.lab.report.data import Footer, Improvements, Row, Style, Verdict

CSS = """
:root { color-scheme: light; --muted: #555; --line: #ddd; }
body { font: 15px/1.5 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; color: #1a1a1a;
       max-width: 1060px; margin: 0 auto; padding: 24px 28px 60px; }
h1 { font-size: 26px; margin: 0 0 4px; } h2 { font-size: 21px; margin: 40px 0 8px;
  border-bottom: 2px solid #222; padding-bottom: 4px; } h3 { font-size: 17px; margin: 26px 0 6px; }
.lede { color: var(--muted); margin: 0 0 18px; }
.verdict { background: #eef6ee; border-left: 6px solid #009E73; padding: 12px 16px; margin: 12px 0; }
.verdict.none { background: #fbeeee; border-left-color: #D55E00; }
.verdict .headline { font-size: 17px; font-weight: 600; margin: 0 0 6px; }
.verdict ul { margin: 4px 0 0 18px; padding: 0; }
.verdict .problem { font-weight: 400; color: var(--muted); }
table { border-collapse: collapse; font-size: 14px; margin: 6px 0; }
/* a table wider than the page scrolls inside its box; the page itself never scrolls sideways */
.table-box { overflow-x: auto; max-width: 100%; }
@media (max-width: 900px) {
  body { padding: 16px 12px 48px; }
  table { font-size: 13px; } th, td { padding: 3px 6px; }
  footer dt { float: none; width: auto; } footer dd { margin: 0 0 6px 12px; }
}
th, td { padding: 4px 10px; border-bottom: 1px solid var(--line); text-align: right; }
th:first-child, td:first-child { text-align: left; }
td:nth-child(5) { white-space: nowrap; } /* "± 0.028" stays on one line */
th { background: #f4f4f4; font-weight: 600; }
tr.recommended td { font-weight: 700; background: #eef6ee; }
.swatch { display: inline-block; width: 12px; height: 12px; border-radius: 2px;
          margin-right: 6px; vertical-align: -1px; }
figure { margin: 14px 0 24px; } figure svg { width: 100%; height: auto; }
figcaption { color: var(--muted); font-size: 14px; margin-bottom: 4px; }
figcaption b { color: #1a1a1a; }
.toggles { position: sticky; top: 0; background: rgba(255,255,255,.95); padding: 8px 0;
           border-bottom: 1px solid var(--line); z-index: 2; font-size: 14px; }
.toggles label { margin-right: 14px; cursor: pointer; white-space: nowrap; }
.note { color: var(--muted); font-size: 13px; }
footer { margin-top: 48px; border-top: 1px solid var(--line); padding-top: 10px; font-size: 13px; }
footer dt { font-weight: 600; float: left; clear: left; width: 150px; }
footer dd { margin: 0 0 4px 160px; } code { font-size: 13px; word-break: break-all; }
"""

SCRIPT = """
document.querySelectorAll('.toggles input').forEach(function (box) {
  box.addEventListener('change', function () {
    var prefix = 'opt' + box.dataset.index + '-';
    document.querySelectorAll('[id^="' + prefix + '"]').forEach(function (el) {
      el.style.display = box.checked ? '' : 'none';
    });
  });
});
"""

#: No network at all: styles and scripts inline, images only as data: URIs.
CSP = "default-src 'none'; style-src 'unsafe-inline'; script-src 'unsafe-inline'; img-src data:"

COLUMNS = (
    ("optimizer", "The recommended one in bold."),
    (
        "standing",
        "Against the leader (the best mean on validation without a diverged re-run): worse "
        "(separated, Holm-adjusted), equivalent (TOST within the margin), not distinguishable "
        "with these seeds, or diverged (out of contention).",
    ),
    (
        "chosen lr",
        "Best learning rate of the tuning sweep; * marks the edge of the searched range, "
        f"** an edge as far as grids grow ({MAX_REACH_DECADES} decades beyond the declared range), "
        "(--set) a rate fixed on the command line, (problem) one the problem fixes.",
    ),
    ("test mean", "Final main metric on test, mean over the re-run seeds."),
    ("95% CI", "Half-width of the 95% confidence interval of that mean (Student's t)."),
    ("seeds", "Re-run seeds that finished."),
    ("diverged", "Diverged re-runs, and diverged tuning runs of all tried."),
    (
        "vs leader",
        "This optimizer minus the leader on validation, paired by seed, with its 95% CI: "
        "the difference behind the standing (a diverged seed scores as the worst value reached).",
    ),
    ("P(leader better)", "Probability that a leader's run beats this one's (Agarwal et al. 2021)."),
    (
        "steps to target",
        "Time-to-target as AlgoPerf defines it: each re-run seed's first evaluation step whose "
        "validation metric reaches the target, median over the seeds (a seed that never "
        "reaches it counts as infinite; never: the median seed does not).",
    ),
    ("seconds", "Training wall time to the target (evaluation excluded), median over the seeds."),
    (
        "good lr range",
        "Contiguous grid steps of learning rates that get 98% of the way from the initial value "
        "to the optimizer's best: robustness. On the tuning seed, and for tied optimizers also "
        "on re-run seed 1 (their tuned settings are run again there).",
    ),
)


@dataclass
class Figure:
    title: str
    how_to_read: str
    svg: str


@dataclass
class ProblemSection:
    name: str
    description: str
    metric: str
    goal: str
    verdict: Verdict
    rows: list[Row]
    figures: list[Figure] = field(default_factory=list)
    #: Which split decided and which is reported.
    splits: str = ""


def _verdict(section: ProblemSection, with_name: bool, headline_only: bool = False) -> str:
    v = section.verdict
    none = " none" if not any(r.recommended for r in section.rows) else ""
    name = f'<span class="problem">{escape(section.name)}: </span>' if with_name else ""
    items = "" if headline_only else "".join(f"<li>{escape(s)}</li>" for s in v.evidence)
    return (
        f'<div class="verdict{none}"><p class="headline">{name}{escape(v.headline)}</p>'
        + (f"<ul>{items}</ul>" if items else "")
        + "</div>"
    )


def _table(section: ProblemSection, styles: dict[str, Style]) -> str:
    head = "".join(f'<th title="{escape(tip)}">{escape(c)}</th>' for c, tip in COLUMNS)
    body = []
    for r in section.rows:
        style = styles[r.optimizer]
        cells = [
            f'<span class="swatch" style="background:{style.color}"></span>{escape(r.optimizer)}',
            escape(r.status),
            escape(r.lr) + ("**" if r.lr_at_limit else "*" if r.lr_at_edge else ""),
            escape(r.mean),
            escape(r.ci95),
            str(r.seeds),
            f"{r.diverged_reruns} · {escape(r.diverged_tuning)} tuning",
            escape(r.vs_leader),
            escape(r.improvement),
            escape(r.steps_to_target),
            escape(r.seconds_to_target),
            escape(r.good_lr),
        ]
        tr = ' class="recommended"' if r.recommended else ""
        body.append(f"<tr{tr}>" + "".join(f"<td>{c}</td>" for c in cells) + "</tr>")
    target = section.verdict.target
    caption = (
        f"Target for the speed columns: validation {escape(section.metric)} {target:.4g}, "
        + (
            "the problem's fixed target."
            if section.verdict.target_fixed
            else "reached by every seed of the best two (this problem sets no target)."
        )
        if target is not None
        else "No speed target: the problem sets none, and it needs two optimizers that "
        "finished every seed."
    )
    legend = " ".join(f"<b>{escape(c)}</b>: {escape(tip)}" for c, tip in COLUMNS[1:])
    return (
        f'<div class="table-box"><table><thead><tr>{head}</tr></thead>'
        f"<tbody>{''.join(body)}</tbody></table></div>"
        f'<p class="note">{caption} {legend}</p>'
    )


def _improvements(table: Improvements) -> str:
    head = "".join(f"<th>{escape(n)}</th>" for n in table.names)
    body = "".join(
        f"<tr><td>{escape(x)}</td>"
        + "".join(
            f"<td>{escape(table.cells[x, y])}</td>" if x != y else "<td>–</td>" for y in table.names
        )
        + "</tr>"
        for x in table.names
    )
    return (
        "<h3>Probability of improvement</h3>"
        f'<div class="table-box"><table><thead><tr><th>P(row beats column)</th>{head}</tr>'
        f"</thead><tbody>{body}</tbody></table></div>"
        f'<p class="note">Over {table.problems} problems: the chance that a re-run of the row '
        "optimizer ends better than one of the column optimizer on the same problem, averaged "
        "over problems (Agarwal et al. 2021; test values, a diverged run scores as the worst "
        "value reached). In brackets the 95% stratified-bootstrap interval: runs are resampled "
        "within each problem. 0.5 means no difference; an interval entirely above 0.5 means the "
        "row tends to beat the column (each interval on its own: no correction for the many "
        "pairs shown).</p>"
    )


def _figure(figure: Figure) -> str:
    return (
        f'<figure class="plot"><figcaption><b>{escape(figure.title)}.</b> '
        f"{escape(figure.how_to_read)}</figcaption>{figure.svg}</figure>"
    )


def render(
    *,
    sections: list[ProblemSection],
    styles: dict[str, Style],
    profile: Figure | None,
    improvements: Improvements | None = None,
    footer: Footer,
    protocol: str,
    config: list[tuple[str, str]],
) -> str:
    """The whole page."""
    many = len(sections) > 1
    title = "Which optimizer? " + ", ".join(s.name for s in sections)
    parts = [
        "<!doctype html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f'<meta http-equiv="Content-Security-Policy" content="{CSP}">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>{escape(title)} · adaptim report</title>",
        f"<style>{CSS}</style></head><body>",
        "<h1>Which optimizer should you use?</h1>",
        f'<p class="lede">adaptim lab report: {len(sections)} problem{"s" if many else ""} × '
        f"{len(styles)} optimizers, each tuned with the same budget and re-run on fresh seeds. "
        "The recommendation comes first; the figures below show why.</p>",
    ]
    parts += [_verdict(s, with_name=many) for s in sections]
    toggles = "".join(
        f'<label><input type="checkbox" checked data-index="{style.index}">'
        f'<span class="swatch" style="background:{style.color}"></span>{escape(name)}</label>'
        for name, style in styles.items()
    )
    parts.append(f'<div class="toggles">Show: {toggles}</div>')
    if profile is not None or improvements is not None:
        parts.append("<h2>Across problems</h2>")
    if improvements is not None:
        parts.append(_improvements(improvements))
    if profile is not None:
        parts.append(_figure(profile))
    for s in sections:
        goal = "lower" if s.goal == "min" else "higher"
        parts += [
            f"<h2>Problem: {escape(s.name)}</h2>",
            f'<p class="lede">{escape(s.description)}. Main metric: <b>{escape(s.metric)}</b> '
            f"({goal} is better). {escape(s.splits)}</p>",
        ]
        if many:  # the evidence is in the summary at the top
            parts.append(_verdict(s, with_name=False, headline_only=True))
        parts += ["<h3>Ranking</h3>", _table(s, styles)]
        parts += [_figure(f) for f in s.figures]
    rows = "".join(f"<dt>{escape(k)}</dt><dd>{escape(v)}</dd>" for k, v in config)
    parts += [
        "<h2>How this was measured</h2>",
        f"<p>{escape(protocol)}</p>",
        f"<dl>{rows}</dl>",
        "<footer><h3>Reproduce</h3><dl>",
        f"<dt>command</dt><dd><code>{escape(footer.command)}</code></dd>",
        f"<dt>versions</dt><dd>{escape(footer.versions)}</dd>",
        f"<dt>seeds</dt><dd>{escape(footer.seeds)}</dd>",
        f"<dt>store</dt><dd><code>{escape(footer.store)}</code></dd>",
        f"<dt>study</dt><dd><code>{escape(footer.study)}</code> "
        "(re-render: <code>adaptim report DIR</code>)</dd>",
        "</dl></footer>",
        f"<script>{SCRIPT}</script></body></html>",
    ]
    return "\n".join(parts)
