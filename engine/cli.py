"""ternary-run: generate text with a .tpk model from the command line.

    ternary-run "Once upon a time"                    # the embedded default model
    ternary-run model.tpk "prompt" -n 128 --temp 0.8 --seed 1
    ternary-run model.tpk --chat                      # interactive chat

User errors (no such file, not a .tpk, prompt too long, bad flag) print one line
`error: ...` on stderr and exit with status 2.
"""
from __future__ import annotations

import argparse
import os
import sys
import time


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # argparse prints usage + message; we print one line
        raise _UserError(message)


class _UserError(Exception):
    pass


# The sampling flags: (flag, SamplingParams field = Engine.generate keyword, type, metavar, help).
# Their defaults are engine.runtime.sampling.DEFAULTS, the same as Engine.generate's.
SAMPLING_FLAGS = (
    ("--temp", "temperature", float, "T", "sampling temperature: higher is more random, 0 is greedy "
                                          "(always the most likely token)"),
    ("--top-k", "top_k", int, "K", "sample only among the K most likely tokens; 0 disables"),
    ("--top-p", "top_p", float, "P", "nucleus sampling: sample among the most likely tokens whose "
                                     "probabilities sum to P; 1 disables"),
    ("--min-p", "min_p", float, "P", "drop tokens less likely than P times the most likely one; 0 disables"),
    ("--repeat-penalty", "repetition_penalty", float, "R",
     "divide the positive (multiply the negative) logits of the tokens in the last --repeat-last-n "
     "by R; 1 disables"),
    ("--frequency-penalty", "frequency_penalty", float, "F",
     "subtract F times its count in the last --repeat-last-n tokens from a token's logit; 0 disables"),
    ("--presence-penalty", "presence_penalty", float, "F",
     "subtract F from the logit of every token in the last --repeat-last-n tokens; 0 disables"),
    ("--repeat-last-n", "repeat_last_n", int, "N", "the penalties' window, in tokens"),
)


def _parser() -> argparse.ArgumentParser:
    p = _Parser(
        prog="ternary-run",
        description="Generate text with a ternary (BitNet b1.58) model in .tpk format. "
                    "The prompt is echoed, then the continuation is streamed to stdout; a one-line "
                    "summary (load time, prompt and generation speed) goes to stderr.",
        epilog="One positional argument is the prompt (for the embedded default model); two are "
               "MODEL PROMPT. With --chat a single argument ending in .tpk is the model.")
    p.add_argument("args", nargs="*", metavar="[MODEL.tpk] PROMPT",
                   help="model file (default: the embedded model) and prompt text")
    p.add_argument("-n", "--n-predict", type=int, default=128, metavar="N",
                   help="maximum number of new tokens (default 128); generation also ends at "
                        "end-of-sequence / end-of-turn tokens and --stop strings")
    from engine.runtime.kvcache import DEFAULT_KV_DTYPE
    from engine.runtime.sampling import DEFAULTS

    for flag, field, kind, metavar, text in SAMPLING_FLAGS:
        default = getattr(DEFAULTS, field)
        p.add_argument(flag, dest=field, type=kind, default=default, metavar=metavar,
                       help=f"{text} (default {default})")
    p.add_argument("--seed", type=int, default=-1, metavar="S",
                   help="random seed; the same seed, prompt and settings give the same text "
                        "(default -1: a different seed every run)")
    p.add_argument("--stop", action="append", default=[], metavar="TEXT",
                   help="stop when TEXT is generated (not printed); may be repeated")
    p.add_argument("--threads", type=int, default=None, metavar="N",
                   help="CPU threads for the kernels (default: the number of physical cores)")
    p.add_argument("--ctx", type=int, default=None, metavar="N",
                   help="context size in tokens: prompt plus new tokens must fit; sets the KV cache "
                        "memory (default: the model's max_position, at most 4096)")
    p.add_argument("-v", "--verbose", action="store_true",
                   help="print the kernel choice (layout per linear group and token-count bucket; "
                        "TERNARY_KERNEL / TERNARY_PROBE / TERNARY_REPACK set it) to stderr")
    p.add_argument("--kv-dtype", default=DEFAULT_KV_DTYPE, metavar="T",
                   help="KV cache dtype: f32, f16 (default; half the memory) or int8 (a scale per "
                        "token and head, about 0.27x f32's memory at head_dim 64)")
    p.add_argument("--chat", action="store_true",
                   help="interactive chat using the model's chat template: type a message, get a "
                        "reply; an empty line or Ctrl-D quits")
    return p


def _summary(eng) -> str:
    s = eng.stats
    return (f"load {eng.load_ms:.0f} ms | prompt {s.prompt_tokens} tok, {s.prompt_tps:.1f} tok/s | "
            f"generation {s.generated_tokens} tok, {s.generate_tps:.1f} tok/s")


_FLUSH_S = 0.03  # flush the stream at most this often: a write syscall per token costs more
                # than the rest of the CLI's per-token work, and 30 ms is below what a reader sees


def _print_stream(pieces) -> str:
    """Write text pieces as they come (flushed every _FLUSH_S); returns the whole text."""
    out = []
    write, flush, clock = sys.stdout.write, sys.stdout.flush, time.perf_counter
    last = clock()
    for piece in pieces:
        out.append(piece)
        write(piece)
        now = clock()
        if now - last >= _FLUSH_S:
            flush()
            last = now
    write("\n")
    flush()
    return "".join(out)


def _chat_loop(eng, first, gen_kw) -> None:
    from engine.runtime.kvcache import ContextError

    messages = []
    while True:
        if first is not None:
            text, first = first, None
            print(f"> {text}")
        else:
            try:
                text = input("> ")
            except EOFError:
                print()
                return
        if not text.strip():
            return
        messages.append({"role": "user", "content": text})
        try:
            reply = _print_stream(eng.chat_stream(messages, **gen_kw))
        except ContextError as e:
            print(f"error: {e}; the conversation starts over", file=sys.stderr)
            messages = []
            continue
        messages.append({"role": "assistant", "content": reply.strip()})
        print(_summary(eng), file=sys.stderr)


def run(argv=None) -> int:
    args = _parser().parse_args(argv)
    pos = args.args
    if args.chat and len(pos) == 1 and pos[0].endswith(".tpk"):
        model_path, prompt = pos[0], None
    elif len(pos) == 2:
        model_path, prompt = pos
    elif len(pos) == 1 and pos[0].endswith(".tpk") and os.path.isfile(pos[0]):
        raise _UserError(f"no prompt: ternary-run {pos[0]} \"PROMPT\" (or --chat)")
    elif len(pos) == 1:
        model_path, prompt = None, pos[0]
    elif not pos and args.chat:
        model_path, prompt = None, None
    else:
        raise _UserError("expected [MODEL.tpk] PROMPT" if not pos else
                         f"too many arguments ({len(pos)}): expected [MODEL.tpk] PROMPT (quote the prompt)")
    if args.n_predict < 0:
        raise _UserError(f"-n must be >= 0, got {args.n_predict}")
    if args.threads is not None and args.threads < 1:
        raise _UserError(f"--threads must be >= 1, got {args.threads}")
    if args.ctx is not None and args.ctx < 1:
        raise _UserError(f"--ctx must be >= 1, got {args.ctx}")

    from engine import Engine, SamplingParams
    from engine.runtime.kernel_choice import KernelChoiceError
    from engine.runtime.kvcache import check_kv_dtype

    sampling = {field: getattr(args, field) for _, field, *_ in SAMPLING_FLAGS}
    try:
        SamplingParams(**sampling)
        check_kv_dtype(args.kv_dtype)
    except ValueError as e:
        raise _UserError(str(e)) from None
    gen_kw = dict(max_new_tokens=args.n_predict, seed=None if args.seed < 0 else args.seed,
                  stop=args.stop, **sampling)
    try:
        eng = Engine(model_path, threads=args.threads, ctx=args.ctx, kv_dtype=args.kv_dtype)
    except KernelChoiceError as e:
        raise _UserError(str(e)) from None
    if args.verbose and eng.model.kernel_plan is not None:
        print("\n".join(eng.model.kernel_plan.details()), file=sys.stderr)
    if args.chat:
        _chat_loop(eng, prompt, gen_kw)
        return 0
    ids = eng.tokenizer.encode(prompt)
    if not ids:
        raise _UserError("the prompt is empty")
    eng.model.cache.check_room(len(ids), args.n_predict)  # fail before echoing anything
    sys.stdout.write(prompt)
    _print_stream(eng.stream(ids, **gen_kw))
    print(_summary(eng), file=sys.stderr)
    return 0


def run_main(argv=None) -> int:
    """Entry point of ternary-run: exit status 0, 2 on a user error, 130 on Ctrl-C."""
    from engine.runtime.kvcache import ContextError

    try:
        from engine.formats.tpk import TpkError
    except ImportError:  # pragma: no cover - tpk.py always ships with the engine
        TpkError = _UserError
    try:
        return run(argv)
    except (_UserError, TpkError, FileNotFoundError, IsADirectoryError, PermissionError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except ContextError as e:
        print(f"error: {e} (raise --ctx or lower -n)", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(file=sys.stderr)
        return 130
    except BrokenPipeError:  # e.g. piped into `head`: stop quietly
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0


if __name__ == "__main__":
    sys.exit(run_main())
