"""What every part of the HTML export shares: escaping, numbers, the page's style and its script
(clicking anything with ``data-start``/``data-end`` plays that span of the embedded audio), and
small reads of the manifest.  Plugins' export sections build their HTML with :func:`esc` and
:func:`number` too."""

from __future__ import annotations

import datetime
import html
import struct
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from probe.store import Trace


# a word diff (diff_html): struck-through red for the first text's words, green for the second's
DIFF_STYLE = "del.diff{background:#fde2e1;color:#8b1a1a}ins.diff{background:#dff3e4;color:#14532d;text-decoration:none}"

PAGE_STYLE = DIFF_STYLE + """
body{font:16px/1.5 system-ui,-apple-system,"Segoe UI",Roboto,"Noto Sans","Noto Sans CJK SC","Noto Sans Arabic",
"Noto Sans Devanagari",sans-serif,"Noto Color Emoji","Symbola";margin:0;color:#1d1d1f;
background:#f6f6f8}
main{max-width:1100px;margin:0 auto;padding:24px 28px 48px}
header h1{margin:0 0 4px;font-size:28px;word-break:break-word}
.meta{color:#555;margin:0 0 16px}
section{background:#fff;border-radius:10px;padding:16px 20px;margin:16px 0;
box-shadow:0 1px 3px rgba(0,0,0,.08)}
h2{font-size:19px;margin:0 0 10px}
audio{width:100%;margin:4px 0 12px}
.transcript{font-size:22px;line-height:1.9;word-break:break-word}
.hint{color:#666;font-size:13px;margin:6px 0}
.words{display:flex;flex-wrap:wrap;gap:6px;margin-top:8px}
.words button{font:inherit;font-size:14px;border:1px solid #ccd;border-radius:6px;
background:#fafaff;padding:2px 8px;cursor:pointer}
.words button small{color:#777;margin-left:4px}
[data-start]{cursor:pointer}
.playing{outline:2px solid #1565c0;outline-offset:1px;border-radius:4px}
code.tok{background:#eef;border-radius:4px;padding:1px 6px;margin-right:4px;font-size:14px}
table{border-collapse:collapse;font-size:14px}
th,td{text-align:left;padding:3px 12px 3px 0;border-bottom:1px solid #eee;vertical-align:top}
td.num{text-align:right;font-variant-numeric:tabular-nums}
td code{white-space:pre;background:#f1f1f4;border-radius:3px;padding:0 2px}
.cols{display:flex;flex-wrap:wrap;gap:32px;align-items:flex-start}
figure{margin:18px 0 26px}
.scroll{overflow-x:auto}
figure img{height:auto;display:block}
figcaption{color:#444;font-size:14px;margin-top:4px}
.note{color:#8a6d00}
footer{color:#777;font-size:12px;text-align:center}
"""


PAGE_SCRIPT = """
(function(){
var audio=document.getElementById('audio');
if(!audio)return;
var stopAt=null,current=null,spans=[].slice.call(document.querySelectorAll('[data-start]'));
function mark(el){if(current)current.classList.remove('playing');current=el;
if(el)el.classList.add('playing');}
function watch(){if(stopAt!==null&&audio.currentTime>=stopAt){audio.pause();return;}
if(!audio.paused)requestAnimationFrame(watch);}
function play(el){stopAt=parseFloat(el.dataset.end);audio.currentTime=parseFloat(el.dataset.start);
mark(el);audio.play();}
spans.forEach(function(el){el.addEventListener('click',function(){play(el);});
el.addEventListener('keydown',function(e){if(e.key==='Enter'||e.key===' '){e.preventDefault();play(el);}});});
audio.addEventListener('play',function(){requestAnimationFrame(watch);});
audio.addEventListener('pause',function(){stopAt=null;mark(null);});
audio.addEventListener('timeupdate',function(){if(stopAt!==null)return;var t=audio.currentTime;
mark(spans.filter(function(el){return el.dataset.start<=t&&t<el.dataset.end;})[0]||null);});
})();
"""


def esc(text: Any) -> str:
    return html.escape(str(text), quote=True)


def number(value: Any, digits: int = 3) -> str:
    return f"{value:.{digits}f}" if isinstance(value, (int, float)) else "?"


def today() -> str:
    return datetime.date.today().isoformat()


def prompt_tokens(trace: Trace) -> list[dict]:
    """The first window's prompt, ``{"id", "token"}`` per token, as :func:`probe.tokens.prompt_entries` shows it."""
    from probe.tokens import prompt_entries

    return prompt_entries(trace.manifest)


def prompt_code(trace: Trace) -> str:
    """The first window's prompt as ``<code class="tok">`` chips (the export page and a notebook's trace)."""
    return "".join(f'<code class="tok">{esc(str(token.get("token")))}</code>' for token in prompt_tokens(trace))


def audio_field(trace: Trace, key: str) -> Any:
    audio = trace.manifest.get("audio")
    return audio.get(key) if isinstance(audio, dict) else None


def image_width(png: bytes, min_scale: float = 0.75) -> str:
    """CSS for a figure: its natural width, shrunk to the column but never below ``min_scale``
    of it, so a wide token-by-token figure scrolls sideways instead of becoming unreadable."""
    width = struct.unpack(">I", png[16:20])[0]  # the IHDR chunk's width field
    return f"width:{width}px;max-width:max(100%,{round(width * min_scale)}px)"


def diff_html(runs: list[tuple[str, str, str]]) -> str:
    """A word diff (:func:`probe.metrics.word_diff`) as one line of HTML: words only the first text
    has struck through in red, words only the second has in green."""
    parts = []
    for op, old, new in runs:
        if op == "equal":
            parts.append(esc(old))
            continue
        if old:
            parts.append(f'<del class="diff" title="only in the clean transcript">{esc(old)}</del>')
        if new:
            parts.append(f'<ins class="diff" title="only in the intervened transcript">{esc(new)}</ins>')
    return " ".join(part for part in parts if part)
