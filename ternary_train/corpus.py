"""Rebuild the English prose training corpus from Debian packages.

    python -m ternary_train.corpus --out ~/.cache/ternary-engine/corpus

Downloads (``apt-get download``, no installation) and unpacks (``dpkg-deb -x``):

- r-cran-janeaustenr: Jane Austen's six novels, an R lazy-load database
  (janeaustenr/data/Rdata.rdb + .rdx, XDR serialization; read by ``read_rdb``).
- sword-text-web: the World English Bible, a SWORD zText module (OSIS markup).
- sword-comm-mhcc: Matthew Henry's Concise Commentary, SWORD zCom (OSIS).
- sword-comm-tdavid: Spurgeon's Treasury of David, SWORD zCom (OSIS).

Output: ``train.txt`` and ``val.txt``, one paragraph per line (UTF-8, no empty
lines), and ``sources.json`` (bytes and paragraphs per source). The split is
fixed: paragraph i of the concatenated, ordered corpus goes to validation when
i % 100 == 99.
"""
from __future__ import annotations

import argparse
import gzip
import html
import json
import os
import re
import struct
import subprocess
import sys
import tempfile
import zlib
from pathlib import Path

DEFAULT_OUT = Path.home() / ".cache" / "ternary-engine" / "corpus"
VAL_EVERY = 100

PACKAGES = ["r-cran-janeaustenr", "sword-text-web", "sword-comm-mhcc", "sword-comm-tdavid"]

# (package, module directory relative to the unpacked root, driver prefix, source name)
SWORD_MODULES = [
    ("sword-text-web", "usr/share/sword/modules/texts/ztext/engWEB2015eb", "b", "web"),
    ("sword-comm-mhcc", "usr/share/sword/modules/comments/zcom/mhcc", "b", "mhcc"),
    ("sword-comm-tdavid", "usr/share/sword/modules/comments/zcom/tdavid", "c", "tdavid"),
]
AUSTEN_RDB = "usr/lib/R/site-library/janeaustenr/data/Rdata"
AUSTEN_BOOKS = ["sensesensibility", "prideprejudice", "mansfieldpark", "emma",
                "northangerabbey", "persuasion"]


# ----------------------------------------------------------------------------
# R serialization (XDR, format versions 2 and 3), enough for data objects:
# vectors, character vectors, pairlists, symbols, references.
# Reference: R's src/main/serialize.c (ReadItem) and src/library/base/R/lazyload.R.

class RUnserializer:
    NILVALUE, EMPTYENV, BASEENV, GLOBALENV, UNBOUNDVALUE, MISSINGARG, BASENAMESPACE = (
        254, 242, 241, 253, 252, 251, 247)
    REFSXP = 255
    ALTREP = 238
    ATTRLANGSXP, ATTRLISTSXP = 240, 239

    def __init__(self, data: bytes):
        self.d = data
        self.p = 0
        self.refs: list = []

    def int(self) -> int:
        v = struct.unpack_from(">i", self.d, self.p)[0]
        self.p += 4
        return v

    def length(self) -> int:
        n = self.int()
        if n == -1:
            hi, lo = self.int(), self.int()
            n = (hi << 32) + lo
        return n

    def header(self):
        fmt = self.d[:2]
        if fmt != b"X\n":
            raise ValueError(f"not an XDR R serialization (starts {fmt!r})")
        self.p = 2
        version = self.int()
        self.int()  # writer R version
        self.int()  # minimal reader R version
        if version == 3:
            n = self.int()
            self.p += n  # native encoding name
        elif version != 2:
            raise ValueError(f"unsupported R serialization version {version}")

    def read(self):
        self.header()
        return self.item()

    def pairlist(self, t, has_attr, has_tag):
        """LISTSXP / LANGSXP pairlist cells, read iteratively along the CDR chain."""
        out = {}
        items = []
        while True:
            attr = self.item() if (has_attr or t in (self.ATTRLISTSXP, self.ATTRLANGSXP)) else None
            tag = self.item() if has_tag else None
            car = self.item()
            key = tag[1] if isinstance(tag, tuple) and tag and tag[0] == "sym" else None
            items.append((key, car))
            del attr
            # CDR: continue iteratively while it is another pairlist cell
            flags = self.int()
            t = flags & 0xFF
            has_attr = bool(flags & (1 << 9))
            has_tag = bool(flags & (1 << 10))
            if t == self.NILVALUE:
                break
            if t not in (2, 6, self.ATTRLISTSXP, self.ATTRLANGSXP):
                self.p -= 4
                items.append((None, self.item()))
                break
        for k, v in items:
            out[k if k is not None else len(out)] = v
        return ("pairlist", out)

    def altrep(self):
        """An ALTREP object: compact integer sequences expanded, wrappers unwrapped."""
        info = self.item()
        state = self.item()
        attr = self.item()
        del attr
        cls = info[1][0][1] if isinstance(info, tuple) else None
        if cls == "compact_intseq":
            n, start, step = (int(x) for x in state)
            return list(range(start, start + n * step, step))
        if cls in ("wrap_string", "wrap_integer", "wrap_real", "wrap_logical"):
            return state[1][0] if isinstance(state, tuple) else state[0]
        return state

    def item(self):
        flags = self.int()
        t = flags & 0xFF
        levels = flags >> 12
        has_attr = bool(flags & (1 << 9))
        has_tag = bool(flags & (1 << 10))
        if t == self.NILVALUE:
            return None
        if t in (self.EMPTYENV, self.BASEENV, self.GLOBALENV, self.UNBOUNDVALUE,
                 self.MISSINGARG, self.BASENAMESPACE):
            return ("special", t)
        if t == self.REFSXP:
            idx = flags >> 8
            if idx == 0:
                idx = self.int()
            return self.refs[idx - 1]
        if t == 1:  # SYMSXP
            name = self.item()
            sym = ("sym", name)
            self.refs.append(sym)
            return sym
        if t in (2, 6, self.ATTRLISTSXP, self.ATTRLANGSXP):  # LISTSXP / LANGSXP pairlists
            return self.pairlist(t, has_attr, has_tag)
        if t == 9:  # CHARSXP
            n = self.int()
            if n == -1:
                return None  # NA_character_
            raw = self.d[self.p:self.p + n]
            self.p += n
            latin1 = bool(levels & (1 << 2))
            return raw.decode("latin-1" if latin1 else "utf-8", errors="replace")
        if t in (10, 13):  # LGLSXP, INTSXP
            n = self.length()
            v = list(struct.unpack_from(f">{n}i", self.d, self.p))
            self.p += 4 * n
            value = v
        elif t == 14:  # REALSXP
            n = self.length()
            v = list(struct.unpack_from(f">{n}d", self.d, self.p))
            self.p += 8 * n
            value = v
        elif t == 16:  # STRSXP
            n = self.length()
            value = [self.item() for _ in range(n)]
        elif t in (19, 20):  # VECSXP, EXPRSXP
            n = self.length()
            value = [self.item() for _ in range(n)]
        elif t == 24:  # RAWSXP
            n = self.length()
            value = self.d[self.p:self.p + n]
            self.p += n
        elif t == self.ALTREP:
            return self.altrep()
        else:
            raise ValueError(f"unsupported R SEXP type {t} at byte {self.p - 4}")
        if has_attr:
            attrs = self.item()
            return ("attrs", value, attrs)
        return value


def r_unserialize(data: bytes):
    return RUnserializer(data).read()


def _strip_attrs(v):
    while isinstance(v, tuple) and v and v[0] == "attrs":
        v = v[1]
    return v


def read_rdb(prefix: str | Path) -> dict:
    """Read an R lazy-load database (prefix.rdx index + prefix.rdb objects).

    The .rdx is a serialized list(variables = named list of c(offset, length), ...),
    gzip- or zlib-compressed. Each object in the .rdb is a 4-byte big-endian
    uncompressed length followed by a zlib stream of a serialized object.
    Returns {name: object} for the variables.
    """
    prefix = str(prefix)
    raw = Path(prefix + ".rdx").read_bytes()
    if raw[:2] == b"\x1f\x8b":
        idx_bytes = gzip.decompress(raw)
    elif raw[:2] == b"X\n":
        idx_bytes = raw
    else:
        idx_bytes = zlib.decompress(raw[4:])
    index = r_unserialize(idx_bytes)
    # index: ("attrs", [variables, references, compressed], names-pairlist)
    _, parts, attrs = index
    names = _strip_attrs(attrs[1]["names"])
    variables = parts[names.index("variables")]
    _, offsets, vattrs = variables
    vnames = _strip_attrs(vattrs[1]["names"])
    rdb = Path(prefix + ".rdb").read_bytes()
    out = {}
    for name, (off, n) in zip(vnames, offsets):
        blob = rdb[off:off + n]
        ulen = struct.unpack(">I", blob[:4])[0]
        if blob[4:5] in (b"Z", b"2", b"X", b"0"):
            if blob[4:5] == b"Z":
                data = zlib.decompress(blob[5:])
            elif blob[4:5] == b"0":
                data = blob[5:]
            else:
                raise ValueError(f"{name}: bzip2/xz-compressed lazy-load objects are not supported")
        else:
            data = zlib.decompress(blob[4:])
        if len(data) != ulen:
            raise ValueError(f"{name}: expected {ulen} bytes, got {len(data)}")
        out[name] = _strip_attrs(r_unserialize(data))
    return out


def austen_paragraphs(lines: list) -> list[str]:
    """Lines of a janeaustenr book -> paragraphs (blank lines separate them)."""
    paras, cur = [], []
    for line in lines:
        line = (line or "").strip()
        if line:
            cur.append(line)
        elif cur:
            paras.append(_clean(" ".join(cur)))
            cur = []
    if cur:
        paras.append(_clean(" ".join(cur)))
    return paras


# ----------------------------------------------------------------------------
# SWORD zText / zCom modules.
# Per testament (ot/nt), prefix "b" (block per book) or "c" (block per chapter):
#   {t}.{p}zs: block index, entries uint32 LE (offset, compressed size, uncompressed size)
#   {t}.{p}zz: the zlib-compressed blocks
#   {t}.{p}zv: verse index, entries uint32 block, uint32 offset, then the size:
#              uint16 (zText/zCom: 10-byte entries) or uint32 (zText4/zCom4: 12 bytes)
# The .conf's ModDrv is not reliable for the entry size (mhcc says zCom4 but
# has 10-byte entries), so the size is chosen by which one indexes validly.

def _verse_entries(bzv: bytes, blocks: list[bytes]):
    candidates = []
    for size, fmt in ((10, "<IIH"), (12, "<III")):
        if len(bzv) % size:
            continue
        ents = [struct.unpack_from(fmt, bzv, i) for i in range(0, len(bzv), size)]
        ok = all(s == 0 or (b < len(blocks) and o + s <= len(blocks[b])) for b, o, s in ents)
        if ok:
            candidates.append(ents)
    if not candidates:
        raise ValueError("verse index matches neither 10- nor 12-byte entries")
    # both valid (rare): prefer the one covering more text
    return max(candidates, key=lambda e: sum(s for _, _, s in e))


def read_sword_module(moddir: str | Path, prefix: str) -> list[str]:
    """Return the raw (markup) entries of a zText/zCom module in canonical order,
    with repeated (linked) entries dropped."""
    moddir = Path(moddir)
    out = []
    for testament in ("ot", "nt"):
        zs, zz, zv = (moddir / f"{testament}.{prefix}z{c}" for c in "szv")
        if not zs.exists() or zs.stat().st_size == 0:
            continue
        bzs, bzz = zs.read_bytes(), zz.read_bytes()
        blocks = []
        for i in range(0, len(bzs), 12):
            off, size, usize = struct.unpack_from("<III", bzs, i)
            data = zlib.decompress(bzz[off:off + size]) if size else b""
            if len(data) != usize:
                raise ValueError(f"{zz}: block {i // 12} has {len(data)} bytes, index says {usize}")
            blocks.append(data)
        seen = set()
        for b, o, s in _verse_entries(zv.read_bytes(), blocks):
            if s == 0 or (b, o, s) in seen:
                continue
            seen.add((b, o, s))
            out.append(blocks[b][o:o + s].decode("utf-8", errors="replace"))
    return out


_PARA_BREAK = re.compile(
    r'<div\b[^>]*type="(?:x-p|paragraph|book|chapter|section|introduction|majorSection)"[^>]*/>'
    r"|<chapter\b[^>]*/>|<p\b[^>]*>|</p>|<lb\b[^>]*/>|<br\s*/?>|<l\b[^>]*>|</l>|<lg\b[^>]*>|</lg>",
    re.S)
_DROP = re.compile(r"<note\b.*?</note>|<title\b.*?</title>|<milestone\b[^>]*/>", re.S)
_TAG = re.compile(r"<[^>]*>")
_WS = re.compile(r"[ \t\r\n\u00a0]+")
PARA = "\x00"


def osis_to_text(entry: str) -> str:
    """OSIS markup -> plain text; paragraph boundaries marked with PARA."""
    s = _DROP.sub("", entry)
    s = _PARA_BREAK.sub(PARA, s)
    s = _TAG.sub("", s)
    s = html.unescape(s)
    return s


def _clean(p: str) -> str:
    p = _WS.sub(" ", p).strip()
    return p


def sword_paragraphs(entries: list[str], verse_joined: bool) -> list[str]:
    """Bible text: verses run on until a paragraph marker. Commentary: each entry
    starts a new paragraph too."""
    paras: list[str] = []
    cur: list[str] = []

    def flush():
        p = _clean(" ".join(cur))
        if p and re.search(r"[A-Za-z]{2}", p):
            paras.append(p)
        cur.clear()

    for e in entries:
        text = osis_to_text(e)
        if not verse_joined:
            flush()
        pieces = text.split(PARA)
        for i, piece in enumerate(pieces):
            if i > 0:
                flush()
            if piece.strip():
                cur.append(piece)
    flush()
    return paras


def _commentary_filter(p: str) -> bool:
    # drop bare headings like "Verse 15" / "Verses 1-3" / "Psalm 24 OVERVIEW"
    return len(p) > 40 or p.endswith((".", "?", "!", '"', "\u201d", ";", ":"))


# ----------------------------------------------------------------------------

def fetch_packages(workdir: Path, packages=PACKAGES, update=True) -> Path:
    """apt-get download + dpkg-deb -x into workdir/root. No installation."""
    debs = workdir / "debs"
    root = workdir / "root"
    debs.mkdir(parents=True, exist_ok=True)
    root.mkdir(parents=True, exist_ok=True)
    if update:
        subprocess.run(["apt-get", "update", "-qq"], check=False)
    subprocess.run(["apt-get", "download", "-q", *packages], cwd=debs, check=True)
    for deb in sorted(debs.glob("*.deb")):
        subprocess.run(["dpkg-deb", "-x", str(deb), str(root)], check=True)
    return root


def build_sources(root: Path) -> dict[str, list[str]]:
    sources: dict[str, list[str]] = {}
    books = read_rdb(root / AUSTEN_RDB)
    austen = []
    for name in AUSTEN_BOOKS:
        austen.extend(austen_paragraphs(books[name]))
    sources["austen"] = austen
    for _pkg, moddir, prefix, name in SWORD_MODULES:
        entries = read_sword_module(root / moddir, prefix)
        paras = sword_paragraphs(entries, verse_joined=(name == "web"))
        if name != "web":
            paras = [p for p in paras if _commentary_filter(p)]
        sources[name] = paras
    return sources


def split(paragraphs: list[str]) -> tuple[list[str], list[str]]:
    train = [p for i, p in enumerate(paragraphs) if i % VAL_EVERY != VAL_EVERY - 1]
    val = [p for i, p in enumerate(paragraphs) if i % VAL_EVERY == VAL_EVERY - 1]
    return train, val


def write_corpus(sources: dict[str, list[str]], out: Path) -> dict:
    out.mkdir(parents=True, exist_ok=True)
    allp = [p for name in sources for p in sources[name]]
    train, val = split(allp)
    for fname, paras in (("train.txt", train), ("val.txt", val)):
        tmp = out / (fname + ".tmp")
        tmp.write_text("".join(p + "\n" for p in paras), encoding="utf-8")
        os.replace(tmp, out / fname)
    info = {
        "sources": {k: {"paragraphs": len(v), "bytes": sum(len(p.encode()) + 1 for p in v)}
                    for k, v in sources.items()},
        "train": {"paragraphs": len(train), "bytes": (out / "train.txt").stat().st_size},
        "val": {"paragraphs": len(val), "bytes": (out / "val.txt").stat().st_size},
        "val_rule": f"paragraph i -> val iff i % {VAL_EVERY} == {VAL_EVERY - 1}",
    }
    (out / "sources.json").write_text(json.dumps(info, indent=1))
    return info


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT)
    ap.add_argument("--root", type=Path, default=None,
                    help="already unpacked package root (skips apt-get)")
    ap.add_argument("--no-update", action="store_true", help="skip apt-get update")
    args = ap.parse_args(argv)
    out = args.out.expanduser()
    if args.root is not None:
        info = write_corpus(build_sources(args.root), out)
    else:
        with tempfile.TemporaryDirectory(prefix="ternary-corpus-") as tmp:
            root = fetch_packages(Path(tmp), update=not args.no_update)
            info = write_corpus(build_sources(root), out)
    print(json.dumps(info, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
