"""The corpus readers parse tiny handmade R lazy-load databases and SWORD modules."""
import gzip
import struct
import zlib

from ternary_train import corpus

# --- a minimal R XDR serializer (version 3), enough for the lazy-load index + STRSXP


def _i(v):
    return struct.pack(">i", v)


def _charsxp(s):
    if s is None:
        return _i(9) + _i(-1)
    b = s.encode("utf-8")
    return _i(9 | (1 << 3) << 12) + _i(len(b)) + b      # UTF8 flag in levels


def _strsxp(items):
    return _i(16) + _i(len(items)) + b"".join(_charsxp(s) for s in items)


def _names_attr(names):
    # pairlist(names = c(...)): LISTSXP with tag, tag = SYMSXP "names", then NILVALUE
    return _i(2 | (1 << 10)) + _i(1) + _charsxp("names") + _strsxp(names) + _i(254)


def _named(type_flags_and_body, names):
    flags, body = type_flags_and_body
    return _i(flags | (1 << 9)) + body + _names_attr(names)


def _header():
    return b"X\n" + _i(3) + _i(0x040201) + _i(0x030500) + _i(5) + b"UTF-8"


def _lazyload_db(objects: dict):
    rdb = b""
    offsets = []
    for name, lines in objects.items():
        ser = _header() + _strsxp(lines)
        blob = struct.pack(">I", len(ser)) + zlib.compress(ser)
        offsets.append((len(rdb), len(blob)))
        rdb += blob
    # variables: named list of INTSXP c(offset, length)
    variables = _named((19, _i(len(objects)) + b"".join(_i(13) + _i(2) + _i(o) + _i(n) for o, n in offsets)),
                       list(objects))
    references = _i(19) + _i(0)
    compressed = _i(10) + _i(1) + _i(1)
    index = _header() + _named((19, _i(3) + variables + references + compressed),
                               ["variables", "references", "compressed"])
    return rdb, gzip.compress(index)


def test_read_rdb(tmp_path):
    books = {"emma": ["EMMA", "", "Emma Woodhouse, handsome,", "clever, and rich", "", None, "Ünïcode"],
             "persuasion": ["Sir Walter Elliot"]}
    rdb, rdx = _lazyload_db(books)
    (tmp_path / "Rdata.rdb").write_bytes(rdb)
    (tmp_path / "Rdata.rdx").write_bytes(rdx)
    got = corpus.read_rdb(tmp_path / "Rdata")
    assert got == books
    assert corpus.austen_paragraphs(got["emma"]) == [
        "EMMA", "Emma Woodhouse, handsome, clever, and rich", "Ünïcode"]


# --- a tiny SWORD zText module: one testament, two blocks

def _sword(tmp_path, entry_size):
    verses = [[b"", b'<chapter n="1" osisID="Gen.1" sID="Gen.1"/>',
               b'<w lemma="x">In</w> the beginning<note placement="foot">a note</note>.',
               b'God said &amp; it was.<div sID="p1" type="x-p"/>'],
              [b'<title>Heading</title>And it was good.', b"Evening came."]]
    blocks, bzs, bzv = [], b"", b""
    for bi, vs in enumerate(verses):
        data, off = b"", 0
        for v in vs:
            fmt = "<IIH" if entry_size == 10 else "<III"
            bzv += struct.pack(fmt, bi, off, len(v))
            data += v
            off += len(v)
        blocks.append(data)
    bzz = b""
    for data in blocks:
        c = zlib.compress(data)
        bzs += struct.pack("<III", len(bzz), len(c), len(data))
        bzz += c
    d = tmp_path / f"mod{entry_size}"
    d.mkdir()
    (d / "ot.bzs").write_bytes(bzs)
    (d / "ot.bzz").write_bytes(bzz)
    (d / "ot.bzv").write_bytes(bzv)
    return d


def test_read_sword_both_entry_sizes(tmp_path):
    for size in (10, 12):
        entries = corpus.read_sword_module(_sword(tmp_path, size), "b")
        assert len(entries) == 5
        paras = corpus.sword_paragraphs(entries, verse_joined=True)
        assert paras == ["In the beginning. God said & it was.", "And it was good. Evening came."]
        comm = corpus.sword_paragraphs(entries, verse_joined=False)
        assert comm[0] == "In the beginning."


def test_split_is_fixed():
    paras = [f"p{i}" for i in range(250)]
    train, val = corpus.split(paras)
    assert val == ["p99", "p199"] and len(train) == 248
