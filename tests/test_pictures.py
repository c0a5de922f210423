"""Pictures of patches: the PNG figure, the self-contained HTML page (rendered by a real headless
Chromium where one is installed), and `blt patches --png/--html`."""
import re
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest

from blt.cli import main
from blt.models.byte_lm import ByteLMConfig
from blt.patching.patchers import PatcherConfig
from blt.patching.pictures import PatchView, accumulated, byte_labels, draw_png, html_page, write_html
from blt.runs.config import RunConfig

CHROMIUM = Path("/usr/bin/chromium")
TEXT = "Marley was dead: to begin with.\r\nThere is no doubt — whatever about that. \t".encode()
DATA = TEXT + b"\xff\xc3(" + "é".encode()  # invalid UTF-8, then a valid two-byte character


def view(data: bytes = DATA, with_entropy: bool = True, kind: str = "entropy") -> PatchView:
    rng = np.random.default_rng(0)
    starts = rng.random(len(data)) < 0.3
    starts[0] = True
    entropy = rng.uniform(0, 4, len(data)) if with_entropy else None
    surprisal = rng.uniform(0, 6, len(data)) if with_entropy else None
    return PatchView(data, starts, entropy, surprisal, kind, f"{kind}Patcher(...)", 2.5, "a test <page>")


class Spans(HTMLParser):
    """The byte spans of a page (or a browser's DOM dump): their attributes, in order."""

    def __init__(self):
        super().__init__()
        self.spans, self.depth, self.text_depth = [], 0, None

    def handle_starttag(self, tag, attrs):
        self.depth += 1
        attrs = dict(attrs)
        if attrs.get("id") == "text":
            self.text_depth = self.depth
        elif tag == "span" and self.text_depth is not None and self.depth == self.text_depth + 1:
            self.spans.append(attrs)

    def handle_endtag(self, tag):
        if self.text_depth == self.depth:
            self.text_depth = None
        self.depth -= 1


def spans_of(page: str) -> list[dict]:
    parser = Spans()
    parser.feed(page)
    return parser.spans


def test_byte_labels():
    labels = byte_labels(b"a\n\t\r\x00\xff\xc3(" + "é—".encode())
    assert labels[:8] == ["a", "\u21b5", "\u21e5", "\\r", "\\x00", "\\xff", "\\xc3", "("]
    assert labels[8:] == ["é", "", "—", "", ""]  # a character on its first byte, continuations empty


def test_accumulated_restarts_at_every_patch():
    values = np.array([1.0, 2.0, 0.5, 3.0, 1.0])
    starts = np.array([True, False, True, False, False])
    assert accumulated(values, starts).tolist() == [1.0, 3.0, 0.5, 3.5, 4.5]


@pytest.mark.parametrize("kind", ["entropy", "equal_info"])
def test_png(tmp_path, kind):
    import matplotlib.image

    for data in (DATA, DATA * 6):  # bytes along the axis, then too many for that
        path = draw_png(view(data, kind=kind), tmp_path / "p.png")
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        image = matplotlib.image.imread(path)
        assert image.shape[0] > 300 and image.shape[1] > 800 and image[..., :3].std() > 0.05  # drawn, not blank
    draw_png(view(with_entropy=False), tmp_path / "marks.png")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["marks.png", "p.png"]  # no temporary file left


@pytest.mark.parametrize("with_entropy", [True, False])
def test_html_holds_every_byte_and_patch_and_fetches_nothing(with_entropy):
    v = view(with_entropy=with_entropy)
    page = html_page(v)
    spans = spans_of(page)
    assert bytes(int(s["data-b"]) for s in spans) == DATA
    assert [s.get("data-s") == "1" for s in spans] == v.starts.tolist()
    assert [("s" in s.get("class", "").split()) for s in spans] == v.starts.tolist()
    if with_entropy:
        assert np.allclose([float(s["data-h"]) for s in spans], v.entropy, atol=1e-4)
        assert np.allclose([float(s["data-u"]) for s in spans], v.surprisal, atol=1e-4)
    assert "a test &lt;page&gt;" in page  # the title is escaped
    # self-contained: no external resource of any kind
    assert not re.search(r"\b(src|href)\s*=|url\(|@import|https?://", page)


def chromium(*args: str, tmp: Path) -> subprocess.CompletedProcess:
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
             "--disable-component-update", "--no-first-run", f"--user-data-dir={tmp / 'profile'}"]
    return subprocess.run([str(CHROMIUM), *flags, *args], capture_output=True, text=True, timeout=120)


@pytest.mark.skipif(not CHROMIUM.exists(), reason="no Chromium at /usr/bin/chromium")
def test_html_renders_in_headless_chromium(tmp_path):
    v = view()
    page = write_html(v, tmp_path / "page.html")
    proc = chromium("--dump-dom", page.as_uri(), tmp=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    spans = spans_of(proc.stdout)
    assert bytes(int(s["data-b"]) for s in spans) == DATA
    assert [("s" in s.get("class", "").split()) for s in spans] == v.starts.tolist()
    # the page's script ran over the DOM: every byte numbered, its patch counted
    n_patches = int(v.starts.sum())
    assert [int(s["data-i"]) for s in spans] == list(range(len(DATA)))
    assert [int(s["data-p"]) for s in spans] == (np.cumsum(v.starts) - 1).tolist()
    assert f"{len(DATA)} bytes in {n_patches} patches" in proc.stdout
    # the hover panel, filled for the byte the address names
    proc = chromium("--dump-dom", page.as_uri() + "#b=3", tmp=tmp_path)
    panel = re.search(r'<div id="info">([^<]*)</div>', proc.stdout).group(1)
    assert panel.startswith(f"byte 3: 0x{DATA[3]:02x} ({DATA[3]})  patch {int(np.cumsum(v.starts)[3]) - 1}")
    assert f"entropy {v.entropy[3]:.3f} nats" in panel and f"surprisal {v.surprisal[3]:.3f} nats" in panel
    shot = tmp_path / "shot.png"
    proc = chromium("--screenshot=" + str(shot), "--window-size=900,400", page.as_uri(), tmp=tmp_path)
    assert proc.returncode == 0 and shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", proc.stderr[-2000:]


def test_patches_command_writes_both_pictures(make_run, tmp_path, capsysbinary):
    run = make_run(RunConfig(model_kind="byte", model=ByteLMConfig(dim=32, n_layers=1, n_heads=2, context=32)))
    source = tmp_path / "in.txt"
    source.write_bytes(TEXT * 3)
    png, page = tmp_path / "p.png", tmp_path / "p.html"
    args = ["patches", str(run), "--input", str(source), "--color", "never", "--png", str(png), "--html", str(page)]
    assert main([*args, "--kind", "equal_info", "--target-patch-size", "3"]) == 0
    out = capsysbinary.readouterr().out.decode("utf-8", "replace")
    assert "EqualInfoPatcher" in out and "calibrated on this file" in out
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    spans = spans_of(page.read_text())
    assert bytes(int(s["data-b"]) for s in spans) == TEXT * 3
    n_patches = sum("s" in s.get("class", "").split() for s in spans)
    mean = float(out.splitlines()[-1].split()[3])
    assert n_patches == pytest.approx(len(TEXT * 3) / mean, abs=1)
    assert main([*args, "--kind", "space"]) == 0  # a patcher without entropies still gets its entropy line
    assert "data-h=" in page.read_text()
    assert main([*args[:-2], "--html", str(tmp_path / "missing" / "p.html")]) == 2


def test_patches_command_refuses_a_signal_the_run_lacks(make_run, tmp_path, capsys):
    """A BLT patching by spaces carries no entropy model: it cannot cut equal-information patches."""
    cfg = RunConfig(model_kind="blt", patching=PatcherConfig(kind="space"))
    cfg.blt.hash_buckets = 61
    source = tmp_path / "in.txt"
    source.write_bytes(TEXT)
    assert main(["patches", str(make_run(cfg)), "--input", str(source), "--kind", "equal_info"]) == 2
    assert "needs an entropy model" in capsys.readouterr().err
