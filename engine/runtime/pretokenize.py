"""llama.cpp's BPE pre-tokenizers: the text -> words split that runs before the BPE merges.

    words = split("llama3", "Hello world 12345")   # ["Hello", " world", " ", "123", "45"]

A GGUF names its pre-tokenizer in `tokenizer.ggml.pre`; llama.cpp (src/llama-vocab.cpp) maps
that name to a LLAMA_VOCAB_PRE_TYPE (GGUF_PRE below) and each type to a list of regexes (TYPES).
The regexes run one after another (src/unicode.cpp unicode_regex_split): each splits every
current piece into its matches and the gaps between them, so later regexes refine earlier ones.

Ids only equal llama.cpp's if its regex dialect is reproduced, not the original tokenizer.json
regex: llama.cpp runs std::regex on a "collapsed" copy of the text in which every non-ASCII code
point becomes one byte standing for its Unicode category (letter 0xD2, number 0xD1, punctuation
0xD3, mark 0xD4, symbol 0xD5, whitespace 0x0B, other 0xD0), and each \\p{..} in the regex becomes
that byte plus the category's ASCII members. So \\p{Lu} and \\p{Ll} both mean any letter (the
tekken / gpt-4o case tricks only see ASCII case), and \\s, \\d, \\w, \\b are ASCII. Regexes without
\\p{..} run on the real code points, non-ASCII whitespace replaced by 0x0B. Here the same
rewritten regex runs with Python's `re` (re.ASCII) over the same collapsed view; matches cut
the original text. llama.cpp's hand-written fast paths for the gpt2 / llama3 / qwen2 / qwen35 /
newline regexes implement those regexes, so the regexes themselves stand in for them; its
digit-grouping fast path (afmoe, tiny_aya) has a port below (_digit_groups).
"""
from __future__ import annotations

import re

# Contractions as llama.cpp spells them ((?i:...) is not ECMAScript).
_C = "(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])"
_GPT2 = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)"
_LLAMA3 = _C + r"|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
_QWEN2 = _C + r"|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
_DS3 = (r"[!" + '"' + r"#$%&'()*+,\-./:;<=>?@\[\\\]^_`{|}~][A-Za-z]+|[^" + "\r\n" + r"\p{L}\p{P}\p{S}]?[\p{L}\p{M}]+"
        r"| ?[\p{P}\p{S}]+[" + "\r\n" + r"]*|\s*[" + "\r\n" + r"]+|\s+(?!\S)|\s+")  # raw CR LF, as llama.cpp
_DS3_ESC = _DS3.replace("\r\n", r"\r\n")  # afmoe spells CR LF as escapes
_UPPER = r"((?=[\p{L}])([^a-z]))"  # llama.cpp's stand-ins for [\p{Lu}...] / [\p{Ll}...]
_LOWER = r"((?=[\p{L}])([^A-Z]))"
_GPT4O = (rf"[^\r\n\p{{L}}\p{{N}}]?{_UPPER}*{_LOWER}+{_C}?|[^\r\n\p{{L}}\p{{N}}]?{_UPPER}+{_LOWER}*{_C}?"
          r"|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+")
_CASED = (r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+" + _C +
          r"?|[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*" + _C + "?")
_CJK_DS = "[\u4e00-\u9fa5\u0800-\u4e00\uac00-\ud7ff]+"
_CJK_DS3 = "[\u4e00-\u9fa5\u3040-\u309f\u30a0-\u30ff]+"
_NEWLINES = r"[^\n]+|[\n]+"
# llama.cpp replaces these two by its custom digit splitter (unicode_regex_split_custom_afmoe).
DIGIT_GROUPS = (r"\p{AFMoE_digits}", r"\d{1,3}(?=(?:\d{3})*\b)")

# LLAMA_VOCAB_PRE_TYPE (lower case, without the prefix) -> its regexes, from
# llm_tokenizer_bpe's constructor. Byte-level (GPT-2 byte encoding) types only.
TYPES = {
    "default": [r"[\p{P}\$\+<=>\^~\|]+", _GPT2, r"\p{N}+", "[0-9][0-9][0-9]"],
    "llama3": [_LLAMA3],
    "jais2": [_C + r"|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+"
              + "".join(rf"|\s{{{n}}}(?!\S)" for n in (512, 256, 128, 64, 32, 16, 8, 4)) + r"|\s{1,2}(?!\S)|\s{1}"],
    "dbrx": [_LLAMA3], "smaug": [_LLAMA3], "chatglm4": [_LLAMA3],
    "deepseek_llm": ["[\r\n]",
                     "\\s?[A-Za-z\u00b5\u00c0-\u00d6\u00d8-\u00f6\u00f8-\u01ba\u01bc-\u01bf\u01c4-\u0293\u0295-\u02af"
                     "\u0370-\u0373\u0376\u0377\u037b-\u037d\u037f\u0386\u0388-\u038a\u038c\u038e-\u03a1\u03a3-\u03f5"
                     "\u03f7-\u0481\u048a-\u052f\u0531-\u0556\u10a0-\u10c5\u13a0-\u13f5\u13f8-\u13fd\u1c90-\u1cba"
                     "\u1cbd-\u1cbf\u1d00-\u1d2b\u1d6b-\u1d77\u1d79-\u1d9a\u1e00-\u1f15\u1f18-\u1f1d\u1f20-\u1f45"
                     "\u1f48-\u1f4d\u1f50-\u1f57\u1f59\u1f5b\u1f5d\u1f5f-\u1f7d\u1f80-\u1fb4\u1fb6-\u1fbc\u1fbe"
                     "\u1fc2-\u1fc4\u1fc6-\u1fcc\u1fd0-\u1fd3\u1fd6-\u1fdb\u1fe0-\u1fec\u1ff2-\u1ff4\u1ff6-\u1ffc"
                     "\u2102\u2107\u210a-\u2113\u2115\u2119-\u211d\u2124\u2126\u2128\u212a-\u212d\u212f-\u2134\u2139"
                     "\u213c-\u213f\u2145-\u2149\u214e\u2183\u2184\u2c00-\u2c7b\u2c7e-\u2ce4\u2ceb-\u2cee\u2cf2\u2cf3"
                     "\ua640-\ua66d\ua680-\ua69b\ua722-\ua76f\ua771-\ua787\ua78b-\ua78e\uab70-\uabbf\ufb00-\ufb06"
                     "\ufb13-\ufb17\uff21-\uff3a\uff41-\uff5a\U00010400-\U0001044f\U000104b0-\U000104d3"
                     "\U000104d8-\U000104fb\U00010c80-\U00010cb2\U00010cc0-\U00010cf2\U000118a0-\U000118df"
                     "\U0001e900-\U0001e943]+",
                     "\\s?[!-/:-~\uff01-\uff0f\uff1a-\uff5e\u2018-\u201f\u3000-\u3002]+",
                     "\\s+$", _CJK_DS, r"\p{N}+"],
    "deepseek3_llm": [r"\p{N}{1,3}", _CJK_DS3, _DS3],
    "spark2_5": [r"\p{N}{1,3}", _CJK_DS3, _DS3.replace("[\r\n]*|\\s*[\r\n]+", "|[\r\n]"), r"\p{N}"],
    "youtu": ["[\uac00-\ud7a3\u3131-\u318e]+|[\uff01\u2026\u201c\u201d\u2018\u2019\u2014\uff1a\uff1b\uff0c"
              "\u3001-\u303f\ufe30-\ufe4f]+|[\u3105-\u312f]+|[\u4e00-\u9fa5\u3040-\u309f\u30a0-\u30ff]+",
              _CASED + r"|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+"],
    "deepseek_coder": ["[\r\n]", r"\s?\p{L}+", r"\s?\p{P}+", _CJK_DS, r"\p{N}"],
    "falcon": [r"[\p{P}\$\+<=>\^~\|`]+", _GPT2, "[0-9][0-9][0-9]"],
    "starcoder": [r"\p{N}", _GPT2],
    "gpt2": [_GPT2],
    "qwen2": [_QWEN2],
    "qwen35": [_C + r"|[^\r\n\p{L}\p{N}]?[\p{L}\p{M}]+|\p{N}| ?[^\s\p{L}\p{M}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"],
    "poro": [" ?[^(\\s|.,!?\u2026\u3002\uff0c\u3001\u0964\u06d4\u060c)]+"],
    "viking": [" ?[^(\\s|.,!?\u2026\u3002\uff0c\u3001\u0964\u06d4\u060c)]+", r"\p{N}"],
    "tekken": [rf"[^\r\n\p{{L}}\p{{N}}]?{_UPPER}*{_LOWER}+|[^\r\n\p{{L}}\p{{N}}]?{_UPPER}+{_LOWER}*"
               r"|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+"],
    "chameleon": ["<sentinel:[0-9]+>", "(IMGIMG)((A|B|C|D|E|F|G|H|I){1,4})Z", "([\\t\\n]|    |  )",
                  r"\p{N}", r"[\p{P}!-/:-@\[-`{-~]", _GPT2],
    "gpt4o": [_GPT4O],
    "granite_emb_multi": [_GPT4O.replace(r"(?=[\p{L}])", r"(?=[\p{L}\p{M}])")],
    "tiny_aya": [DIGIT_GROUPS[1], _CASED + r"|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+"],
    "superbpe": [r"\p{N}+", r"(?=(\d{3})+(?!\d))"],
    "bailingmoe": [r"'(?:[sSdDmMtT]|[lL][lL]|[vV][eE]|[rR][eE])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}"
                   r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]|\s+(?!\S)|\s+"],
    "seed_coder": [_C + r"|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1}| ?[^\s\p{L}\p{N}\r\n]+|\s*[\r\n]+|\s+(?!\S)|\s+"],
    "ufakzeka": [_QWEN2[len(_C) + 1:]],
    "grok_2": [_QWEN2],
    "afmoe": [DIGIT_GROUPS[0],
              "[\u4e00-\u9fff\u3400-\u4dbf\u8c48-\ufaff\u3040-\u309f\u30a0-\u30ff\uff65-\uff9f\u2f00-\u2fdf"
              "\u0e40-\u0e7f\u0e80-\u0eff\u1780-\u17ff\u1000-\u109f\uaa60-\uaa7f\ua9e0-\ua9ff\uac00-\ud7af"
              "\u1100-\u11ff]+", _DS3_ESC],
    "laguna": [_NEWLINES, _QWEN2],
    "exaone_moe": [_C + r"|[^\r\n\p{L}\p{N}]?(?:\p{L}\p{M}*(?: \p{L}\p{M}*)*)+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n/]?"
                   r"|\s*[\r\n]|\s+(?!\S)|\s+"],
    "minicpm5": [r"\p{N}{1,3}", _C + r"|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}+| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"],
}
for _same, _as in {"hunyuan_dense": "deepseek3_llm", "joyai_llm": "deepseek3_llm", "hy_v4": "deepseek3_llm",
                   "refact": "starcoder", "command_r": "starcoder", "smollm": "starcoder", "codeshell": "starcoder",
                   "exaone": "starcoder", "minerva": "starcoder", "mellum2": "starcoder",
                   "mpt": "gpt2", "olmo": "gpt2", "jais": "gpt2", "trillion": "gpt2", "granite_docling": "gpt2",
                   "stablelm2": "qwen2", "hunyuan": "qwen2", "solar_open": "qwen2", "bloom": "poro",
                   "gpt3_finnish": "poro", "minimax_m2": "gpt4o"}.items():
    TYPES[_same] = TYPES[_as]

# tokenizer.ggml.pre -> (type, ignore_merges, add_bos default) as llm_vocab::impl::load sets them.
# ignore_merges: a word that is itself in the vocabulary is one token, merges or not.
_IM, _BOS = 1, 2
_NAMES = {
    "default": ("default", 0), "minicpm5": ("minicpm5", _IM),
    **{n: ("llama3", _IM | _BOS) for n in ("llama3", "llama-v3", "llama-bpe", "falcon3", "falcon-h1", "pixtral",
                                           "midm-2.0", "lfm2", "jina-v5-nano")},
    "deepseek-llm": ("deepseek_llm", 0), "deepseek-coder": ("deepseek_coder", 0),
    "deepseek-v3": ("deepseek3_llm", 0), "spark2_5": ("spark2_5", 0), "youtu": ("youtu", _IM),
    "falcon": ("falcon", 0), "mpt": ("mpt", 0), "starcoder": ("starcoder", 0),
    **{n: ("gpt2", 0) for n in ("gpt-2", "phi-2", "jina-es", "jina-de", "gigachat", "jina-v2-es", "jina-v2-de",
                                "a.x-4.0", "mellum", "modern-bert", "jina-v1-en", "jina-v2-code", "roberta-bpe",
                                "exaone4")},
    "jais-2": ("jais2", 0), "refact": ("refact", 0), "command-r": ("command_r", 0),
    **{n: ("qwen2", 0) for n in ("qwen2", "deepseek-r1-qwen", "kormo", "f2llmv2", "megrez")},
    "qwen35": ("qwen35", 0), "stablelm2": ("stablelm2", 0), "olmo": ("olmo", 0), "dbrx": ("dbrx", 0),
    "smaug-bpe": ("smaug", 0), "poro-chat": ("poro", 0), "chatglm-bpe": ("chatglm4", 0),
    "glm4": ("chatglm4", _IM), "glm5": ("chatglm4", _IM), "viking": ("viking", 0), "jais": ("jais", 0),
    "tekken": ("tekken", _IM | _BOS), "smollm": ("smollm", 0), "codeshell": ("codeshell", 0),
    "bloom": ("bloom", 0), "gpt3-finnish": ("gpt3_finnish", 0), "exaone": ("exaone", 0),
    "exaone-moe": ("exaone_moe", 0), "chameleon": ("chameleon", _BOS), "minerva-7b": ("minerva", 0),
    **{n: ("gpt4o", 0) for n in ("gpt-4o", "llama4", "kanana2", "talkie")},
    "granite-embed-multi-97m": ("granite_emb_multi", _IM), "tiny_aya": ("tiny_aya", 0),
    "cohere2moe": ("tiny_aya", 0), "superbpe": ("superbpe", 0), "trillion": ("trillion", 0),
    "granite-docling": ("granite_docling", 0),
    **{n: ("bailingmoe", 0) for n in ("bailingmoe", "bailingmoe2", "llada-moe")},
    "seed-coder": ("seed_coder", 0), "hunyuan": ("hunyuan", 0), "hunyuan-dense": ("hunyuan_dense", 0),
    "hy_v4": ("hy_v4", 0), "joyai-llm": ("joyai_llm", 0), "ufakzeka": ("ufakzeka", 0), "grok-2": ("grok_2", 0),
    "afmoe": ("afmoe", 0), "laguna": ("laguna", 0), "minimax-m2": ("minimax_m2", 0),
    "solar-open": ("solar_open", 0), "mellum2": ("mellum2", 0),
}
GGUF_PRE = {name: {"type": t, "ignore_merges": bool(f & _IM), "add_bos": bool(f & _BOS)}
            for name, (t, f) in _NAMES.items()}
# Names llama.cpp knows whose tokenizers are not a byte-level regex split plus BPE: raw UTF-8
# pieces with "▁" for spaces (gemma4, sarvam-moe, granite-embed-multi-311m), a whitespace
# splitter, and Kimi-K2's hand-written splitter with Han exclusion.
UNSUPPORTED_PRE = ("gemma4", "granite-embed-multi-311m", "sarvam-moe", "whitespace", "kimi-k2")


class PreTokenizerError(ValueError):
    pass


def gguf_pre(name: str | None) -> dict:
    """{type, ignore_merges, add_bos} for a tokenizer.ggml.pre value (absent: "default", as llama.cpp)."""
    name = "default" if not name else name
    if name in GGUF_PRE:
        return dict(GGUF_PRE[name])
    if name in UNSUPPORTED_PRE:
        raise PreTokenizerError(f"GGUF pre-tokenizer {name!r} is not a byte-level BPE split; not supported")
    raise PreTokenizerError(f"unknown GGUF pre-tokenizer {name!r} (llama.cpp's names: see "
                            "engine/runtime/pretokenize.py GGUF_PRE)")


# ---------------------------------------------------------------------------------------------
# llama.cpp's regex dialect (unicode_regex_split)

_CAT_BYTE = {"N": "\xd1", "L": "\xd2", "P": "\xd3", "M": "\xd4", "S": "\xd5"}
_UCAT = {"\\p{N}": "N", "\\p{L}": "L", "\\p{P}": "P", "\\p{M}": "M", "\\p{S}": "S",
         "\\p{Lu}": "L", "\\p{Ll}": "L", "\\p{Lt}": "L", "\\p{Lm}": "L", "\\p{Lo}": "L"}
_ASCII_OF = {"N": "\x30-\x39", "L": "\x41-\x5A\x61-\x7A", "M": "",
             "P": "\x21-\x23\x25-\x2A\x2C-\x2F\x3A-\x3B\x3F-\x40\\\x5B-\\\x5D\x5F\\\x7B\\\x7D",
             "S": "\\\x24\\\x2B\x3C-\x3E\x5E\x60\\\x7C\\\x7E"}
# Unicode White_Space above ASCII (llama.cpp unicode_set_whitespace): collapsed to 0x0B.
_WHITESPACE = frozenset(map(chr, (0x85, 0xA0, 0x1680, *range(0x2000, 0x200B), 0x2028, 0x2029, 0x202F,
                                  0x205F, 0x3000)))
_collapsed_cache: dict = {}
_wide_cache: dict = {}
_compiled: dict = {}


_categories = []  # [compiled regex], built on first use


def _category(ch: str) -> str | None:
    """One of N L P M S for a non-ASCII code point, None for the rest (C*, Z*, unassigned)."""
    if not _categories:
        import regex  # Unicode tables newer than the interpreter's unicodedata, as llama.cpp's

        _categories.append(regex.compile(r"(?P<N>\p{N})|(?P<L>\p{L})|(?P<P>\p{P})|(?P<M>\p{M})|(?P<S>\p{S})"))
    m = _categories[0].match(ch)
    return m.lastgroup if m else None


def _collapse(text: str) -> str:
    """llama.cpp's text_collapsed: ASCII kept, each other code point one category byte."""
    out = []
    for ch in text:
        if ch < "\x80":
            out.append(ch)
            continue
        c = _collapsed_cache.get(ch)
        if c is None:
            cat = _category(ch)
            c = "\x0b" if ch in _WHITESPACE else _CAT_BYTE[cat] if cat else "\xd0"
            _collapsed_cache[ch] = c
        out.append(c)
    return "".join(out)


def _widen(text: str) -> str:
    """The text std::wregex sees: non-ASCII whitespace as 0x0B."""
    return "".join("\x0b" if ch in _WHITESPACE else ch for ch in text)


def _uses_categories(expr: str) -> bool:
    return any(u in expr for u in _UCAT)


def _collapse_regex(expr: str) -> str:
    """llama.cpp's regex_expr_collapsed: each \\p{..} -> [category byte + its ASCII members]."""
    out, inside, i = [], False, 0
    while i < len(expr):
        ch = expr[i]
        if ch == "[" and (i == 0 or expr[i - 1] != "\\"):
            out.append("[")
            inside = True
        elif inside and ch == "]" and expr[i - 1] != "\\":
            out.append("]")
            inside = False
        elif expr.startswith("\\p{", i) and i + 3 < len(expr):
            close = expr.find("}", i + 3)
            pat = expr[i:close + 1] if 0 <= close <= i + 10 else ""
            if pat in _UCAT:
                cls = _CAT_BYTE[_UCAT[pat]] + _ASCII_OF[_UCAT[pat]]
                out.append(cls if inside else "[" + cls + "]")
                i = close
            else:
                out.append(ch)
        else:
            out.append(ch)
        i += 1
    return "".join(out)


def _compile(expr: str):
    """(compiled pattern, collapsed?) for one llama.cpp regex. ECMAScript's $ is end of input
    only (Python's also matches before a final newline), and \\s \\d \\w \\b are ASCII there."""
    if expr not in _compiled:
        collapsed = _uses_categories(expr)
        py = _collapse_regex(expr) if collapsed else expr
        py = _end_anchor(py)
        _compiled[expr] = (re.compile(py, re.ASCII), collapsed)
    return _compiled[expr]


def _end_anchor(expr: str) -> str:
    """Every $ outside a character class -> \\Z."""
    out, inside, i = [], False, 0
    while i < len(expr):
        ch = expr[i]
        if ch == "\\":
            out.append(expr[i:i + 2])
            i += 2
            continue
        if ch == "[" and not inside:
            inside = True
        elif ch == "]" and inside:
            inside = False
        out.append("\\Z" if ch == "$" and not inside else ch)
        i += 1
    return "".join(out)


def _regex_pieces(view: str, pattern, lengths: list[int]) -> list[int]:
    """unicode_regex_split_stl: every piece -> its matches and the gaps between them."""
    out, start = [], 0
    for n in lengths:
        pos = 0
        for m in pattern.finditer(view, start, start + n):
            a, b = m.start() - start, m.end() - start
            if a > pos:
                out.append(a - pos)
            out.append(b - a)
            pos = b
        if pos < n:
            out.append(n - pos)
        start += n
    return out


def _digit_groups(text: str, lengths: list[int]) -> list[int]:
    """unicode_regex_split_custom_afmoe: a run of n digits -> n % 3 leading digits, then
    threes; text before a run joins its first group (llama.cpp's _add_token keeps it)."""
    out, start = [], 0
    for n in lengths:
        end, prev, pos = start + n, start, start
        while pos < end:
            if _is_number(text[pos]):
                run = pos
                while pos < end and _is_number(text[pos]):
                    pos += 1
                cut = run + (pos - run) % 3
                cuts = ([cut] if cut > run else []) + list(range(cut + 3, pos + 1, 3))
                for c in cuts:
                    out.append(c - prev)
                    prev = c
            else:
                pos += 1
        if prev < end:
            out.append(end - prev)
        start = end
    return out


def _is_number(ch: str) -> bool:
    return "0" <= ch <= "9" if ch < "\x80" else _category(ch) == "N"


def split(pre_type: str, text: str) -> list[str]:
    """The words llama.cpp's BPE tokenizer of type `pre_type` (a TYPES key) makes of `text`."""
    exprs = TYPES.get(pre_type)
    if exprs is None:
        raise PreTokenizerError(f"unknown llama.cpp pre-tokenizer type {pre_type!r}")
    lengths = [len(text)] if text else []
    collapsed = wide = None
    for expr in exprs:
        if expr in DIGIT_GROUPS:
            lengths = _digit_groups(text, lengths)
            continue
        pattern, use_collapsed = _compile(expr)
        if use_collapsed:
            collapsed = _collapse(text) if collapsed is None else collapsed
            view = collapsed
        else:
            wide = _widen(text) if wide is None else wide
            view = wide
        lengths = _regex_pieces(view, pattern, lengths)
    words, start = [], 0
    for n in lengths:
        words.append(text[start:start + n])
        start += n
    return words
