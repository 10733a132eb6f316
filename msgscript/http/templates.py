"""HTML of the browse pages: one layout with inline CSS (no external assets) and a few page bodies."""

from __future__ import annotations

from datetime import UTC, datetime
from html import escape
from string import Template
from urllib.parse import quote

from msgscript import __version__
from msgscript.cron import CronSchedule, tick_text
from msgscript.script import Script

TITLE_PREFIX = "Msgscript"
NEXT_RUNS = 5
"""How many run times of a scheduled script its info page lists."""

_CSS = """
:root {
  color-scheme: light dark;
  --fg: #1f2328; --muted: #59636e; --bg: #ffffff; --panel: #f6f8fa; --border: #d1d9e0;
  --accent: #0969da; --accent-soft: #ddf4ff;
}
@media (prefers-color-scheme: dark) {
  :root {
    --fg: #e6edf3; --muted: #9198a1; --bg: #0d1117; --panel: #151b23; --border: #3d444d;
    --accent: #4493f8; --accent-soft: #121d2f;
  }
}
* { box-sizing: border-box; }
body {
  margin: 0; color: var(--fg); background: var(--bg);
  font: 16px/1.6 system-ui, -apple-system, "Segoe UI", Roboto, "Helvetica Neue", sans-serif;
}
header { background: var(--panel); border-bottom: 1px solid var(--border); }
nav, main, footer { max-width: 62rem; margin: 0 auto; padding-left: 1.5rem; padding-right: 1.5rem; }
nav { display: flex; align-items: baseline; gap: 1.5rem; padding-top: .8rem; padding-bottom: .8rem; }
nav .brand { font-weight: 700; font-size: 1.15rem; color: var(--fg); letter-spacing: .02em; }
nav .brand span { color: var(--accent); }
main { padding-top: 1.5rem; padding-bottom: 2rem; }
footer { color: var(--muted); font-size: .85rem; padding-bottom: 2rem; }
a { color: var(--accent); text-decoration: none; }
a:hover { text-decoration: underline; }
h1 { font-size: 1.8rem; line-height: 1.25; margin: .2rem 0 1rem; }
h2 { font-size: 1.3rem; margin: 2rem 0 .8rem; padding-bottom: .3rem; border-bottom: 1px solid var(--border); }
code, pre { font-family: ui-monospace, SFMono-Regular, "SF Mono", Menlo, Consolas, "Liberation Mono", monospace; }
code { font-size: .9em; }
:not(pre) > code {
  background: var(--panel); border: 1px solid var(--border); border-radius: 4px; padding: .05em .35em;
}
pre {
  background: var(--panel); border: 1px solid var(--border); border-radius: 8px;
  padding: 1rem 1.2rem; overflow: auto; line-height: 1.45; font-size: .9rem;
}
table { border-collapse: collapse; margin: 1rem 0; }
th, td { border: 1px solid var(--border); padding: .45rem .8rem; text-align: left; vertical-align: top; }
thead th, .props th { background: var(--panel); }
.props { min-width: min(100%, 32rem); }
.props th { width: 11rem; font-weight: 600; }
.crumbs { color: var(--muted); font-size: .9rem; margin-bottom: .3rem; }
.crumbs a { color: var(--muted); }
.lead { color: var(--muted); margin-top: -.5rem; }
.links {
  list-style: none; padding: 0; margin: 1rem 0; border: 1px solid var(--border); border-radius: 8px; overflow: hidden;
}
.links li + li { border-top: 1px solid var(--border); }
.links a { display: block; padding: .65rem 1rem; font-family: ui-monospace, Menlo, Consolas, monospace; }
.links a:hover { background: var(--accent-soft); text-decoration: none; }
.links a::after { content: "\\203A"; float: right; color: var(--muted); }
.tag {
  display: inline-block; padding: 0 .55rem; border-radius: 1rem; font-size: .85rem; border: 1px solid var(--border);
}
.tag.yes { background: var(--accent-soft); color: var(--accent); border-color: var(--accent); }
.empty { color: var(--muted); font-style: italic; }
.runs { margin: 0; padding-left: 1.2rem; }
.readme img { max-width: 100%; }
"""

_ICON = (
    "data:image/svg+xml,%3Csvg xmlns='http://www.w3.org/2000/svg' viewBox='0 0 32 32'%3E"
    "%3Crect width='32' height='32' rx='7' fill='%230969da'/%3E"
    "%3Ctext x='16' y='23' font-size='20' text-anchor='middle' fill='white' font-family='sans-serif'%3Em%3C/text%3E"
    "%3C/svg%3E"
)

_LAYOUT = Template(
    """<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>$title</title>
<link rel="icon" href="$icon">
<style>$css</style>
</head>
<body>
<header><nav><a class="brand" href="/_/">msg<span>script</span></a><a href="/_/list">Subjects</a></nav></header>
<main>
$content
</main>
<footer>msgscript $version</footer>
</body>
</html>
"""
)


def page(title: str, content: str) -> str:
    """A whole HTML document: `title` is plain text, `content` is HTML."""
    return _LAYOUT.substitute(title=escape(title), icon=_ICON, css=_CSS, content=content, version=escape(__version__))


def _path_part(value: str) -> str:
    """A subject or name as one URL path segment."""
    return quote(value, safe="*>$&+,;=:@!~'()")


def subject_href(subject: str) -> str:
    """The link to a subject's page."""
    return "/_/subject/" + _path_part(subject)


def info_href(subject: str, name: str) -> str:
    """The link to a script's page."""
    return f"/_/info/{_path_part(subject)}/{_path_part(name)}"


def _links(items: list[tuple[str, str]]) -> str:
    rows = "".join(f'<li><a href="{escape(href)}">{escape(text)}</a></li>\n' for href, text in items)
    return f'<ul class="links">\n{rows}</ul>'


def readme_page(body_html: str) -> str:
    """The home page: the rendered README."""
    return page(TITLE_PREFIX, f'<article class="readme">\n{body_html}\n</article>')


def list_page(subjects: list[str]) -> str:
    """Every subject that has scripts, each linking to its names."""
    if subjects:
        noun = "subject" if len(subjects) == 1 else "subjects"
        body = f'<p class="lead">{len(subjects)} {noun} with scripts.</p>\n' + _links(
            [(subject_href(s), s) for s in subjects]
        )
    else:
        body = '<p class="empty">No subjects found</p>'
    return page(f"{TITLE_PREFIX} :: List all subjects", f"<h1>Subject List</h1>\n{body}")


def names_page(subject: str, names: list[str]) -> str:
    """The names of the scripts of one subject."""
    crumbs = f'<div class="crumbs"><a href="/_/list">Subjects</a> / {escape(subject)}</div>'
    noun = "script" if len(names) == 1 else "scripts"
    body = f'<p class="lead">{len(names)} {noun} run for a message on <code>{escape(subject)}</code>.</p>\n'
    body += _links([(info_href(subject, n), n) for n in names])
    return page(
        f"{TITLE_PREFIX} :: Name list for subject {subject}",
        f"{crumbs}\n<h1>Names for subject {escape(subject)}</h1>\n{body}",
    )


def _schedule_rows(schedule: CronSchedule, now: datetime) -> list[tuple[str, str]]:
    described = f"<code>{escape(schedule.text)}</code><br>{escape(schedule.describe())}"
    runs = []
    for when in schedule.upcoming(now, NEXT_RUNS):
        text = when.strftime("%Y-%m-%d %H:%M:%S") + (f".{when.microsecond // 1000:03d}" if when.microsecond else "")
        local = f" ({when.astimezone(schedule.zone_info()).strftime('%H:%M %Z')})" if schedule.zone else ""
        runs.append(f'<li><time datetime="{tick_text(when)}">{text} UTC</time>{escape(local)}</li>')
    listed = f'<ul class="runs">{"".join(runs)}</ul>' if runs else '<span class="empty">None</span>'
    return [("Schedule", described), ("Next runs", listed)]


def info_page(script: Script, *, now: datetime | None = None) -> str:
    """One script: its properties (with its next run times when it has a schedule, counted from `now`) and its
    source."""
    subject, name = script.subject, script.name
    crumbs = (
        f'<div class="crumbs"><a href="/_/list">Subjects</a> / '
        f'<a href="{escape(subject_href(subject))}">{escape(subject)}</a> / {escape(name)}</div>'
    )
    html_tag = '<span class="tag yes">Yes</span>' if script.html else '<span class="tag">No</span>'
    libraries = ", ".join(script.libraries)
    libraries_cell = f"<code>{escape(libraries)}</code>" if libraries else '<span class="empty">None</span>'
    rows = [
        ("Subject", f"<code>{escape(subject)}</code>"),
        ("Name", f"<code>{escape(name)}</code>"),
        ("Is HTML?", html_tag),
        # "Libraires" is the Go page's spelling, kept for anyone matching on it.
        ("Libraires used", libraries_cell),
        ("Executor", f"<code>{escape(script.executor)}</code>"),
    ]
    if script.cron is not None:
        rows += _schedule_rows(script.cron, now or datetime.now(UTC))
    table = "".join(f"<tr><th>{label}</th><td>{cell}</td></tr>\n" for label, cell in rows)
    content = (
        f"{crumbs}\n<h1>Script information</h1>\n<h2>Properties</h2>\n"
        f'<table class="props">\n{table}</table>\n'
        f"<h2>Source</h2>\n<pre><code>{escape(script.content)}</code></pre>"
    )
    return page(f"{TITLE_PREFIX} :: Info for script {subject}/{name}", content)


def missing_page(title: str, message: str) -> str:
    """A page saying that what was asked for does not exist."""
    return page(f"{TITLE_PREFIX} :: {title}", f"<h1>{escape(title)}</h1>\n<p>{escape(message)}</p>")
